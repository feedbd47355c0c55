"""``xhs-profiles status``: what an ``--out`` folder holds, and ``status --check``'s verdict.

``read_status`` reads the folder without taking the run lock and without changing a byte of it,
so it can run (from cron, a probe, a person) while a run is going on.  Per snapshot date (a state
file or a manifest): ids written, fetched, pending and failed (by code; permanent or transient),
rejected input cells, whether it is complete (it has a manifest) and since when, the calls its
runs spent and its last run, all from ``OUT/_state``, ``OUT/_manifests`` and ``OUT/_runs``.
A remote OUT (``s3://...``) is read through its store, its checkpoints from the local state
folder its runs used (``--state-dir``, else the cache folder named by the URL); a machine that
never ran it has none, and the manifests and run summaries say what they can.
``check`` is a pure function of that record and the clock: an ok line, or a ``CheckFailed``.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from pipeline import sink
from pipeline.errors import (
    CODE_INVALID_INPUT,
    CODE_NO_RESPONSE,
    FailureThresholdExceeded,
    IncompleteSnapshot,
    MissingFileError,
    StaleSnapshot,
    StateError,
    StateVersionError,
    UsageError,
)
from pipeline.run_report import FailureCheck, SnapshotCounts
from pipeline.shards import Shard
from pipeline.state import SCHEMA_VERSION, STATE_DIR
from pipeline.storage import LocalStore, RemoteStorageError, Store
from pipeline.timestamps import iso_utc

DEFAULT_MAX_AGE: Final = dt.timedelta(hours=26)  # a daily run, plus two hours of slack
# What makes a folder an xhs-profiles --out; an empty folder counts too (nothing has run yet).
_MARKERS: Final = (STATE_DIR, sink.MANIFESTS_DIR, sink.RUNS_DIR)
# A first run probes that OUT is writable with a tempfile (``tmpXXXXXXXX``) before it makes
# _state: seen alone, the folder is a run's that has just started, not a foreign one.
_PROBE: Final = re.compile(r"tmp[a-z0-9_]{8}")
_DURATION: Final = re.compile(r"(\d+)([smhd])")
_UNITS: Final = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
# A run's writes wait up to 10 s (state.BUSY_TIMEOUT_MS); the reader waits less, as it only
# meets a lock while a connection recovers a WAL index or in the instant a state is created.
_READ_TIMEOUT_S: Final = 5.0
_COUNT_NAMES: Final = (
    "pending", "fetched", "written", "failed", "rejected", "failed_permanent", "failed_transient"
)  # fmt: skip
_RECORDED_LIMITS: Final = ("max_failure_rate", "max_failures", "previous_rate")


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One ``_runs/*.json`` summary (a run that has finished, however it ended)."""

    run_id: str
    file: str  # relative to OUT
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    outcome: str
    exit_code: int | None  # None in summaries written before exit codes were recorded
    calls: int

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": _iso(self.started_at, "seconds"),  # as the summary records them
            "finished_at": _iso(self.finished_at, "seconds"),
            "outcome": self.outcome,
            "exit_code": self.exit_code,
            "calls": self.calls,
            "file": self.file,
        }


@dataclass(frozen=True, slots=True)
class RecordedCheck:
    """The failure verdict the completing run wrote into the manifest (its limits, not ours)."""

    exceeded: bool
    max_failure_rate: float | None
    max_failures: int | None
    message: str  # the run's own exit-6 wording


@dataclass(frozen=True, slots=True)
class ShardStatus:
    """One shard of a sharded snapshot: its ids, and whether its manifest is written."""

    label: str
    done: bool
    written: int
    pending: int
    failed: int
    state_file: str | None  # relative to OUT

    def to_json(self) -> dict[str, Any]:
        return {
            "shard": self.label,
            "done": self.done,
            "written": self.written,
            "pending": self.pending,
            "failed": self.failed,
            "state_file": self.state_file,
        }

    def to_text(self) -> str:
        how = "done" if self.done else f"{self.pending:,} pending"
        return f"{self.label} {how} ({self.written:,} written, {self.failed:,} failed)"


@dataclass(frozen=True, slots=True)
class SnapshotStatus:
    """One snapshot date.  The counts come from its state, else from its manifest's summary."""

    date: dt.date
    written: int = 0
    fetched: int = 0  # answered and stored, not yet in Parquet
    pending: int = 0
    failed: int = 0
    failed_permanent: int = 0  # a rerun does not try them again
    failed_transient: int = 0  # failed after every attempt: a rerun tries them again
    failed_by_code: tuple[tuple[int, int], ...] = ()  # failed ids (not rejects) by code
    rejected: int = 0  # input cells that are not ids
    complete: bool = False
    completed_at: dt.datetime | None = None  # the manifest's created_at
    calls: int = 0  # billed calls of every run of this date
    runs: int = 0
    last_run: RunInfo | None = None
    recorded_check: RecordedCheck | None = None
    state_file: str | None = None  # relative to OUT
    shards: tuple[ShardStatus, ...] = ()  # a sharded snapshot's shards, those with a state

    @property
    def counts(self) -> SnapshotCounts:
        """As the run judges failures (``FailureCheck``): failed ids over valid ids."""
        return SnapshotCounts(
            pending=self.pending,
            fetched=self.fetched,
            written=self.written,
            failed=self.failed,
            rejected=self.rejected,
            failed_permanent=self.failed_permanent,
            failed_transient=self.failed_transient,
        )

    def to_json(self) -> dict[str, Any]:
        check = self.recorded_check
        return {
            "snapshot_date": self.date.isoformat(),
            "complete": self.complete,
            "completed_at": _iso(self.completed_at),
            "written": self.written,
            "fetched": self.fetched,
            "pending": self.pending,
            "failed": self.failed,
            "failed_permanent": self.failed_permanent,
            "failed_transient": self.failed_transient,
            "failed_by_code": {str(code): n for code, n in self.failed_by_code},
            "rejected": self.rejected,
            "calls": self.calls,
            "runs": self.runs,
            "last_run": None if self.last_run is None else self.last_run.to_json(),
            "failure_check": None
            if check is None
            else {
                "exceeded": check.exceeded,
                "max_failure_rate": check.max_failure_rate,
                "max_failures": check.max_failures,
            },
            "state_file": self.state_file,
        } | ({"shards": [s.to_json() for s in self.shards]} if self.shards else {})

    @property
    def shards_text(self) -> str:
        """``2 of 3 done: shard-0-of-3 done (...); ...; shard-2-of-3 not started``."""
        count = int(self.shards[0].label.rsplit("-", 1)[1])
        done = sum(s.done for s in self.shards)
        by_label = {s.label: s.to_text() for s in self.shards}
        listed = [
            by_label.get(f"shard-{k}-of-{count}", f"shard-{k}-of-{count} not started")
            for k in range(count)
        ]
        return f"{done} of {count} done: {'; '.join(listed)}"

    def to_text(self) -> str:
        head = f"snapshot {self.date.isoformat()}: "
        if self.complete and self.completed_at is not None:
            head += f"complete at {_iso(self.completed_at, 'seconds')}"
            if self.recorded_check is not None and self.recorded_check.exceeded:
                head += ", over the run's failure limits"
        else:
            head += "not complete"
        failed = f"{self.failed:,} failed"
        if self.failed:
            codes = ", ".join(f"{code}: {n:,}" for code, n in self.failed_by_code)
            failed += (
                f" ({self.failed_permanent:,} permanent, {self.failed_transient:,} transient;"
                f" by code {codes})"
            )
        ids_rest = f"{self.pending:,} pending, {failed}"
        rows = [
            ("ids", f"{self.written:,} written, {self.fetched:,} fetched, {ids_rest}"),
            ("rejected", f"{self.rejected:,} input cell{'s' * (self.rejected != 1)}"),
            ("calls", f"{self.calls:,} in {self.runs:,} run{'s' * (self.runs != 1)}"),
        ]
        if self.shards:
            rows.append(("shards", self.shards_text))
        run = self.last_run
        if run is not None:
            exit_code = "" if run.exit_code is None else f", exit {run.exit_code}"
            rows.append(
                (
                    "last run",
                    f"{run.run_id} {_iso(run.started_at, 'seconds') or '?'} to "
                    f"{_iso(run.finished_at, 'seconds') or '?'}, {run.outcome}{exit_code}",
                )
            )
        return "\n".join([head, *(f"  {name:<9} {value}" for name, value in rows)])


@dataclass(frozen=True, slots=True)
class OutStatus:
    out: Path | str  # the folder, or a remote OUT's URL
    snapshots: tuple[SnapshotStatus, ...]  # oldest first

    def where(self, name: str) -> str:
        """A folder of OUT as messages name it."""
        return str(self.out / name) if isinstance(self.out, Path) else f"{self.out}/{name}"

    def snapshot(self, date: dt.date) -> SnapshotStatus | None:
        return next((s for s in self.snapshots if s.date == date), None)

    def shown(self, date: dt.date | None) -> tuple[SnapshotStatus, ...]:
        if date is None:
            return self.snapshots
        return tuple(s for s in self.snapshots if s.date == date)

    def to_json(self, date: dt.date | None = None) -> dict[str, Any]:
        return {"out": str(self.out), "snapshots": [s.to_json() for s in self.shown(date)]}

    def to_text(self, date: dt.date | None = None) -> str:
        shown = self.shown(date)
        if not shown:
            which = "" if date is None else f" for {date.isoformat()}"
            return f"{self.out}: no snapshot{which} yet"
        return "\n".join(s.to_text() for s in shown)


# ------------------------------------------------------------------------ the check


def check(
    status: OutStatus,
    *,
    now: dt.datetime,
    max_age: dt.timedelta = DEFAULT_MAX_AGE,
    date: dt.date | None = None,
    max_failure_rate: float | None = None,
    max_failures: int | None = None,
) -> str:
    """The ok line for the expected snapshot (``date``, else the newest), or raise why not.

    The failure limits, when given, are judged here as ``run`` judges them; else the verdict
    the completing run recorded in the manifest stands.
    """
    if not status.snapshots:
        raise StaleSnapshot(
            f"no snapshot in {status.out} yet: check that the scheduled run starts "
            "and writes to this folder"
        )
    snap = status.snapshots[-1] if date is None else status.snapshot(date)
    if snap is None:
        raise IncompleteSnapshot(
            f"snapshot {date} has not started (the newest in {status.out} is "
            f"{status.snapshots[-1].date}): run it, or check the scheduler"
        )
    if not snap.complete or snap.completed_at is None:
        run = snap.last_run
        last = (
            "no run of it has finished yet"
            if run is None
            else f"last run {run.run_id}: {run.outcome}"
            + ("" if run.exit_code is None else f", exit {run.exit_code}")
        )
        fetched = f", {snap.fetched:,} fetched" if snap.fetched else ""
        if snap.shards:
            raise IncompleteSnapshot(
                f"snapshot {snap.date} is not complete: shards {snap.shards_text}; "
                "a shard may still be going, else rerun the shards not done"
            )
        raise IncompleteSnapshot(
            f"snapshot {snap.date} is not complete: {snap.pending:,} pending{fetched}, "
            f"{snap.failed:,} failed ({last}); a run may still be going, "
            "else rerun the same command to resume"
        )
    # An aware "now"; a naive one is read as UTC, as every moment the tool records is.
    age = (now if now.tzinfo is not None else now.replace(tzinfo=dt.UTC)) - snap.completed_at
    if age > max_age:
        raise StaleSnapshot(
            f"snapshot {snap.date} completed {_duration(age)} ago, more than --max-age "
            f"{_limit(max_age)}: check that the scheduled run starts and finishes "
            f"(its summaries are in {status.where(sink.RUNS_DIR)})"
        )
    over = _failure_verdict(status, snap, max_failure_rate, max_failures)
    if over is not None:
        failures = sink.failures_path(Path(), snap.date).as_posix()
        raise FailureThresholdExceeded(f"snapshot {snap.date}: {over}; see {failures}")
    # Failed ids, as the limits count them; rejected input cells apart (never sent).
    rejected = f", {snap.rejected:,} rejected" if snap.rejected else ""
    return (
        f"ok: snapshot {snap.date} complete {_duration(age)} ago "
        f"({snap.written:,} profiles, {snap.failed:,} failed{rejected})"
    )


def _failure_verdict(
    status: OutStatus,
    snap: SnapshotStatus,
    max_failure_rate: float | None,
    max_failures: int | None,
) -> str | None:
    """Why ``snap`` is over the failure limits, or None when it is not."""
    if max_failure_rate is None and max_failures is None:
        recorded = snap.recorded_check
        return recorded.message if recorded is not None and recorded.exceeded else None
    # The same comparison as the run's: against the latest earlier complete snapshot.
    earlier = [s for s in status.snapshots if s.date < snap.date and s.complete]
    judged = FailureCheck(
        snap.counts,
        max_failure_rate=max_failure_rate,
        max_failures=max_failures,
        previous_rate=earlier[-1].counts.failure_rate if earlier else None,
    )
    return judged.message() if judged.exceeded else None


def parse_duration(text: str, option: str = "--max-age") -> dt.timedelta:
    """``90m``, ``26h``, ``2d`` or ``3600s``: a whole number and one unit, more than zero."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or int(match[1]) == 0:
        raise UsageError(f"{option} must be a duration such as 90m, 26h, 2d or 3600s, got {text!r}")
    return dt.timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def _duration(span: dt.timedelta) -> str:
    """An age as its two largest units: ``3h12m``, ``1d4h``, ``45s``."""
    left = max(int(span.total_seconds()), 0)  # a clock behind the manifest's: "0s ago"
    parts = []
    for unit, size in _UNITS.items():
        parts.append((left // size, unit))
        left %= size
    first = next((i for i, (n, _unit) in enumerate(parts) if n), len(parts) - 1)
    return "".join(f"{n}{unit}" for n, unit in parts[first : first + 2] if n) or "0s"


def _limit(span: dt.timedelta) -> str:
    """A limit in the largest unit that divides it, as it was likely given: ``26h``, ``90m``."""
    seconds = int(span.total_seconds())
    unit, size = next((u, n) for u, n in _UNITS.items() if seconds % n == 0)
    return f"{seconds // size}{unit}"


# ------------------------------------------------------------------------ reading OUT


def read_status(out: Path | Store, state_dir: Path | None = None) -> OutStatus:
    """Every snapshot date of ``out``, read without the lock and without writing.

    The checkpoints are read from ``state_dir`` (default ``OUT/_state``; a remote OUT has its
    own on this machine, and none when this machine never ran it: then the manifests and run
    summaries say what they can).
    """
    if isinstance(out, Path):
        _require_output_folder(out)
        store: Store = LocalStore(out)
        state_dir = state_dir or out / STATE_DIR
    else:
        store = out
    try:
        return _read_status(store, state_dir)
    except RemoteStorageError as exc:
        raise StateError(f"cannot read {store.display}: {exc.problem}: {exc.advice}") from exc


def _read_status(store: Store, state_dir: Path | None) -> OutStatus:
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


def _require_output_folder(out_dir: Path) -> None:
    try:
        if not out_dir.exists():
            raise UsageError(f"{out_dir} does not exist: give the --out folder of a run")
        if not out_dir.is_dir():
            raise UsageError(f"{out_dir} is a file: give the --out folder of a run")
        foreign = [p for p in out_dir.iterdir() if not _PROBE.fullmatch(p.name)]
        if foreign and not any((out_dir / name).is_dir() for name in _MARKERS):
            raise UsageError(
                f"{out_dir} is not an xhs-profiles output folder (no _state, _manifests or "
                "_runs in it): give the --out folder of a run"
            )
    except OSError as exc:
        raise _unreadable(exc, out_dir) from exc


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
        raise _unreadable(exc, state_dir) from exc
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
        raise _unreadable(exc, path) from exc


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
            raise _unreadable(exc, folder) from exc
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
                raise _unreadable(exc, path) from exc
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


def _iso(
    moment: dt.datetime | None, timespec: Literal["seconds", "milliseconds"] = "milliseconds"
) -> str | None:
    return None if moment is None else iso_utc(moment, timespec)


def _unreadable(exc: OSError, path: Path) -> StateError:
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
