"""Reading an output folder for ``status``, read-only: its SQLite states, manifests and ``_runs``.

``read_out_status`` gathers every snapshot date of OUT from ``OUT/_state`` (or the state folder
given), ``OUT/_manifests`` and ``OUT/_runs``, without taking the run lock and without changing a
byte: the counts from the date's state (or its shards' states, added up), else from its
manifest's summary; the completion, the calls and the last run from the manifest and the
summaries.

Reading the SQLite state beside a running writer (SQLite >= 3.22 reads WAL files read-only):

- While a ``State`` is open its ``-wal`` and ``-shm`` exist.  A ``mode=ro`` connection reads the
  committed transactions through them and takes only a WAL read mark: the writer never waits
  for it (its checkpoints merely stop short of the reader's snapshot; only rebuilding the WAL
  index after a crash is exclusive, for moments the run's busy timeout covers), and the
  reader cannot write by mistake (SQLITE_READONLY).  Every query runs in one short read
  transaction, so the counts are one consistent moment.
- With no ``-wal`` (the last connection checkpointed and removed it), every commit is in the
  main file, but a ``mode=ro`` connection would create an empty ``-wal`` and a 32 KiB ``-shm``
  and, being read-only, leave them behind.  So the file is read with ``immutable=1`` (no
  locks, no side files), and that read is kept only if still no ``-wal`` exists and the file's
  inode, size and mtime did not change meanwhile; otherwise a run started under us and the file
  is read again through its WAL.
- A run's last connection checkpoints and removes the ``-wal`` and ``-shm`` on close only if no
  other connection has the file open; a reader that is inside its few milliseconds of reading
  at that instant makes the run leave them in place.  Nothing is lost (the next connection
  reads the WAL, the next run folds it in); the reader then reads through them as above.
- Read access to OUT is enough (a probe may mount it read-only): the ``immutable=1`` read
  writes nothing, and beside a live run SQLite uses its ``-shm`` read-only.  Only a ``-wal``
  whose ``-shm`` is gone needs write access (SQLite must rebuild the index); the error says so.

sqlite3 and OS errors leave this module as ``StateError`` (``raise ... from``): a state that
cannot be read is a problem of the folder given (exit 2), never of the tool.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import re
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any, Final

from pipeline import sink
from pipeline.errors import (
    CODE_INVALID_INPUT,
    CODE_NO_RESPONSE,
    MissingFileError,
    StateError,
    StateVersionError,
    UsageError,
)
from pipeline.run_report import FailureCheck
from pipeline.shards import Shard
from pipeline.state import SCHEMA_VERSION
from pipeline.status_data import OutStatus, RecordedCheck, RunInfo, ShardStatus, SnapshotStatus
from pipeline.storage import LocalStore, Store

# A run's writes wait up to 10 s (state.BUSY_TIMEOUT_MS); the reader waits less, as it only
# meets a lock while a connection recovers a WAL index or in the instant a state is created.
_READ_TIMEOUT_S: Final = 5.0
_COUNT_NAMES: Final = (
    "pending", "fetched", "written", "failed", "rejected", "failed_permanent", "failed_transient"
)  # fmt: skip
_RECORDED_LIMITS: Final = ("max_failure_rate", "max_failures", "previous_rate")


def read_out_status(store: Store, state_dir: Path | None) -> OutStatus:
    """Every snapshot date of ``store``, its checkpoints from ``state_dir`` (none when None)."""
    states = _state_files(state_dir) if state_dir is not None else {}
    completed = set(sink.manifest_dates(store))
    runs = _read_runs(store)
    snapshots = []
    for date in sorted(states.keys() | completed):
        key = sink.manifest_key(date)
        manifest = _read_json(store, key) if date in completed else None
        paths = states.get(date, {})
        state = paths.get(None)
        if state is not None:
            counts = _read_state(state, date)
        elif paths:
            counts = _of_shards(store, date, paths)
        else:
            counts = _of_manifest(date, manifest)
        of_date = runs.get(date, [])
        snapshots.append(
            dataclasses.replace(
                counts,
                complete=manifest is not None,
                completed_at=_completed_at(store, key, manifest),
                calls=sum(r.calls for r in of_date),
                runs=len(of_date),
                # File names start with the UTC start time: the last one is the latest run.
                last_run=max(of_date, key=lambda r: r.file, default=None),
                recorded_check=_recorded_check(date, manifest),
                state_file=None if state is None else _state_name(store, state),
            )
        )
    out = store.root if isinstance(store, LocalStore) else store.display
    return OutStatus(out, tuple(snapshots))


def _state_name(store: Store, path: Path) -> str:
    """A state file as status names it: relative to OUT when it is in OUT, else its path."""
    if isinstance(store, LocalStore) and path.is_relative_to(store.root):
        return path.relative_to(store.root).as_posix()
    return str(path)


def _state_files(state_dir: Path) -> dict[dt.date, dict[Shard | None, Path]]:
    """Each date's state files: the unsharded one under None, else one per shard."""
    found: dict[dt.date, dict[Shard | None, Path]] = {}
    try:
        for path in state_dir.glob("dt=*.sqlite"):  # not the -wal / -shm files
            match = _STATE_FILE.fullmatch(path.name)
            if match is None:
                continue  # not one of ours
            try:
                date = dt.date.fromisoformat(match["date"])
                shard = Shard(int(match["index"]), int(match["count"])) if match["count"] else None
            except (ValueError, UsageError):
                continue
            found.setdefault(date, {})[shard] = path
    except OSError as exc:
        raise unreadable(exc, state_dir) from exc
    return found


_STATE_FILE: Final = re.compile(
    r"dt=(?P<date>\d{4}-\d{2}-\d{2})(?:\.shard-(?P<index>\d+)-of-(?P<count>\d+))?\.sqlite"
)


def _of_shards(store: Store, date: dt.date, paths: Mapping[Shard | None, Path]) -> SnapshotStatus:
    """A sharded snapshot: each shard's state, added up."""
    done = sink.read_shard_manifests(store, date)
    parts: list[tuple[Shard, SnapshotStatus]] = [
        (shard, _read_state(path, date))
        for shard, path in sorted(paths.items(), key=lambda kv: kv[0].index if kv[0] else -1)
        if shard is not None
    ]
    by_code: dict[int, int] = {}
    for _shard, counts in parts:
        for code, n in counts.failed_by_code:
            by_code[code] = by_code.get(code, 0) + n
    return SnapshotStatus(
        date,
        **{name: sum(getattr(counts, name) for _shard, counts in parts) for name in _SUMMED},
        failed_by_code=tuple(sorted(by_code.items())),
        shards=tuple(
            ShardStatus(
                shard.label,
                done=shard in done,
                written=counts.written,
                pending=counts.pending + counts.fetched,
                failed=counts.failed,
                state_file=_state_name(store, paths[shard]),
            )
            for shard, counts in parts
        ),
    )


_SUMMED: Final = (
    "written",
    "fetched",
    "pending",
    "failed",
    "failed_permanent",
    "failed_transient",
    "rejected",
)


def _read_state(path: Path, date: dt.date) -> SnapshotStatus:
    """The state's counts; the module docstring says why it is opened as it is."""
    try:
        wal = path.with_name(path.name + "-wal")
        if not wal.exists():
            before = _identity(path)
            try:
                counts = _query(path, date, immutable=True)
            except sqlite3.DatabaseError:
                if _identity(path) == before and not wal.exists():
                    raise  # the file itself is bad, not a run starting under us
            else:
                if _identity(path) == before and not wal.exists():
                    return counts
        return _query(path, date, immutable=False)
    except sqlite3.Error as exc:
        raise _state_error(exc, path) from exc
    except OSError as exc:
        raise unreadable(exc, path) from exc


def _identity(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_ino, info.st_size, info.st_mtime_ns


def _query(path: Path, date: dt.date, *, immutable: bool) -> SnapshotStatus:
    uri = path.resolve().as_uri() + ("?mode=ro&immutable=1" if immutable else "?mode=ro")
    with closing(sqlite3.connect(uri, uri=True, timeout=_READ_TIMEOUT_S)) as conn:
        conn.isolation_level = None  # explicit BEGIN: every count from one read transaction
        conn.execute("BEGIN")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if version == 0 and not tables:
                return SnapshotStatus(date)  # a run is creating it this instant: still empty
            if version > SCHEMA_VERSION or not {"ids", "rejects"} <= tables:
                raise StateVersionError(
                    f"{path}: not a state this version reads (v{version}, tables "
                    f"{', '.join(sorted(tables)) or 'none'}); upgrade xhs-profiles, or move it"
                )
            # The status index makes this a scan of (status, user_id) pairs, no row lookups.
            by_status = dict(conn.execute("SELECT status, count(*) FROM ids GROUP BY status"))
            failed = conn.execute(
                f"SELECT coalesce(code, {CODE_NO_RESPONSE}), retryable, count(*) FROM ids "
                "WHERE status = 'failed' GROUP BY 1, 2"
            ).fetchall()
            rejected = int(conn.execute("SELECT count(*) FROM rejects").fetchone()[0])
        finally:
            conn.execute("COMMIT")
    by_code: dict[int, int] = {}
    for code, _retryable, n in failed:
        by_code[int(code)] = by_code.get(int(code), 0) + int(n)
    return SnapshotStatus(
        date,
        written=int(by_status.get("written", 0)),
        fetched=int(by_status.get("fetched", 0)),
        pending=int(by_status.get("pending", 0)),
        failed=int(by_status.get("failed", 0)),
        failed_permanent=sum(int(n) for _code, retry, n in failed if not retry),
        failed_transient=sum(int(n) for _code, retry, n in failed if retry),
        failed_by_code=tuple(sorted(by_code.items())),
        rejected=rejected,
    )


def _of_manifest(date: dt.date, manifest: Mapping[str, Any] | None) -> SnapshotStatus:
    """The counts the completing run recorded: for a snapshot whose state was removed, and for
    the verdict the run reached on them."""
    recorded = _mapping(_mapping(manifest, "summary"), "snapshot")
    counts = {name: _int(recorded.get(name)) for name in _COUNT_NAMES}
    # The run's failures_by_code counts rejected cells under 400 too; these are ids only.
    by_code: dict[int, int] = {}
    for code, n in _mapping(recorded, "failures_by_code").items():
        with contextlib.suppress(ValueError):
            by_code[int(code)] = _int(n)
    by_code[CODE_INVALID_INPUT] = by_code.get(CODE_INVALID_INPUT, 0) - counts["rejected"]
    return SnapshotStatus(
        date,
        written=counts["written"],
        fetched=counts["fetched"],
        pending=counts["pending"],
        failed=counts["failed"],
        failed_permanent=counts["failed_permanent"],
        failed_transient=counts["failed_transient"],
        failed_by_code=tuple(sorted((c, n) for c, n in by_code.items() if n > 0)),
        rejected=counts["rejected"],
    )


def _completed_at(store: Store, key: str, manifest: Mapping[str, Any] | None) -> dt.datetime | None:
    if manifest is None:
        return None
    moment = _moment(manifest.get("created_at"))
    if moment is not None or not isinstance(store, LocalStore):
        return moment
    try:  # a manifest without a readable created_at: when it was written
        mtime = store.path(key).stat().st_mtime
    except OSError:
        return None
    return dt.datetime.fromtimestamp(mtime, dt.UTC)


def _recorded_check(date: dt.date, manifest: Mapping[str, Any] | None) -> RecordedCheck | None:
    recorded = _mapping(_mapping(manifest, "summary"), "failure_check")
    exceeded = recorded.get("exceeded")
    if not isinstance(exceeded, bool):
        return None  # written before failure limits were recorded
    rate, limit, previous = (recorded.get(k) for k in _RECORDED_LIMITS)
    judged = FailureCheck(
        _of_manifest(date, manifest).counts,
        max_failure_rate=float(rate) if isinstance(rate, int | float) else None,
        max_failures=limit if isinstance(limit, int) else None,
        previous_rate=float(previous) if isinstance(previous, int | float) else None,
    )
    # The run's own exit-6 wording, rebuilt from what it recorded.
    return RecordedCheck(exceeded, judged.max_failure_rate, judged.max_failures, judged.message())


def _read_runs(store: Store) -> dict[dt.date, list[RunInfo]]:
    """The finished runs by snapshot date (a dry run writes no summary)."""
    by_date: dict[dt.date, list[RunInfo]] = {}
    if isinstance(store, LocalStore):
        folder = store.root / sink.RUNS_DIR
        try:
            keys = [store.key_of(path) for path in sorted(folder.glob("*.json"))]
        except OSError as exc:
            raise unreadable(exc, folder) from exc
    else:
        keys = store.listdir(sink.RUNS_DIR, ".json")
    for key in keys:
        summary = _read_json(store, key)
        if summary is None:
            continue  # not a summary of ours: it must not make monitoring fail
        try:
            date = dt.date.fromisoformat(str(summary.get("snapshot_date")))
        except ValueError:
            continue
        by_date.setdefault(date, []).append(
            RunInfo(
                run_id=str(summary.get("run_id", "?")),
                file=key,
                started_at=_moment(summary.get("started_at")),
                finished_at=_moment(summary.get("finished_at")),
                outcome=str(summary.get("outcome", "?")),
                exit_code=_int(summary["exit_code"]) if "exit_code" in summary else None,
                calls=_int(_mapping(summary, "requests").get("calls")),
            )
        )
    return by_date


def _read_json(store: Store, key: str) -> dict[str, Any] | None:
    """A JSON object, or None when the file is gone (a run just withdrew a manifest) or is not
    a JSON object; an unreadable file is an error, not a missing one (it would read as stale)."""
    try:
        if isinstance(store, LocalStore):
            path = store.path(key)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise unreadable(exc, path) from exc
        else:
            data = store.read_bytes(key)
        payload = json.loads(data)
    except MissingFileError:
        return None
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _mapping(parent: Mapping[str, Any] | None, key: str) -> Mapping[str, Any]:
    value = (parent or {}).get(key)
    return value if isinstance(value, Mapping) else {}


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _moment(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def unreadable(exc: OSError, path: Path) -> StateError:
    return StateError(
        f"cannot read {path} ({exc.strerror or exc}): run status as a user who can read --out"
    )


def _state_error(exc: sqlite3.Error, path: Path) -> StateError:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_NOTADB:
        return StateVersionError(f"{path}: not an xhs-profiles state (not a SQLite database)")
    if code == sqlite3.SQLITE_CORRUPT:
        return StateError(f"{path} is damaged ({exc}); move it away and rerun the snapshot")
    if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY):
        # Reading beside a WAL needs write access to its -shm (it may be created).
        return StateError(
            f"cannot read the state {path} ({exc}): run status as a user who can write "
            f"{path.parent} (a WAL index is shared there)"
        )
    return StateError(f"cannot read the state {path} ({exc}); retry, or check the disk")
