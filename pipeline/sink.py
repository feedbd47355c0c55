"""Everything the pipeline writes under OUT besides the state: Parquet parts, failures, manifests.

Layout::

    OUT/<table>/dt=YYYY-MM-DD/part-<8 hex>-<seq>.parquet   each table of schema.TABLES
    OUT/failures/dt=YYYY-MM-DD/failures.csv
    OUT/_manifests/dt=YYYY-MM-DD.json                      the files that make the snapshot
    OUT/<table or failures>/dt=YYYY-MM-DD/_SUCCESS         written after the manifest
    OUT/_runs/<UTC start>-<run id>.json                    one summary per run
    OUT/_tmp/                                              temporary files, and only there

A shard (``--shard-index K --shard-count N``) names its parts ``part-shard-K-of-N-...``, keeps
its temporary files in ``OUT/_tmp/shard-K-of-N/`` and, when its ids are done, writes
``OUT/_shards/dt=YYYY-MM-DD/failures.shard-K-of-N.csv`` and ``manifest.shard-K-of-N.json``;
the snapshot's manifest, failures.csv and ``_SUCCESS`` come once every shard is done
(``assemble``).  A shard removes only its own orphans and temporary files.

Rules it follows:

- Every file is written in ``OUT/_tmp`` (never in a partition folder, which readers scan),
  fsynced, moved into place with ``os.replace`` and its folder fsynced: a reader or a crash sees
  the old file or the new one, never half of one.  A file the state does not record is an orphan
  of a crash and ``remove_orphans`` deletes it.
- Parquet is written by pyarrow from frames built with ``schema.TABLES``' schemas (checked here):
  zstd, statistics on, timestamps µs UTC, strings as UTF-8 byte arrays, never a Null-typed
  column, so polars, DuckDB, pyarrow, Spark and BigQuery read every file the same way.
- Compaction streams one source part at a time into one new file (one row group per source).
- OS errors leave as ``StorageError`` naming the file and what to do; the temp file is removed.
"""

from __future__ import annotations

import datetime as dt
import errno
import itertools
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import IO, Any, Final

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import TOOL_VERSION
from pipeline.crashpoints import crash_point
from pipeline.errors import StorageError, XhsProfilesError
from pipeline.records import Failure, Part
from pipeline.schema import FAILURE_COLUMNS, TABLES, TABLES_BY_NAME, Table
from pipeline.shards import Shard
from pipeline.timestamps import iso_utc, utcnow

# mimalloc, pyarrow's default pool, keeps what compaction reads (one part at a time) instead of
# giving it back: RSS grew with the number of parts merged (367 MB after 20 parts of 5,000
# profiles, 186 MB with the system allocator), and peak memory must not grow with the ids.
pa.set_memory_pool(pa.system_memory_pool())

TMP_DIR: Final = "_tmp"
# Rows per row group of a compacted file: small enough to keep compaction's memory flat.
COMPACT_BATCH_ROWS: Final = 1000
FAILURES_DIR: Final = "failures"
FAILURES_FILE: Final = "failures.csv"
MANIFESTS_DIR: Final = "_manifests"
RUNS_DIR: Final = "_runs"
SHARDS_DIR: Final = "_shards"
SUCCESS_FILE: Final = "_SUCCESS"
MANIFEST_VERSION: Final = 1
_FORMULA_PREFIXES: Final = ("=", "+", "-", "@", "\t", "\r")
_RUN_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_WRITE_BUFFER: Final = 1 << 20
# Part names: a token per process plus a counter, so two processes (a crashed run and its
# resume) never pick the same name, and names sort in the order they were written.
_PART_TOKEN: Final = secrets.token_hex(4)
_part_seq = itertools.count(1)


def partition_dir(out_dir: Path, table: str, snapshot_date: dt.date) -> Path:
    return out_dir / table / f"dt={snapshot_date.isoformat()}"


def failures_path(out_dir: Path, snapshot_date: dt.date) -> Path:
    return partition_dir(out_dir, FAILURES_DIR, snapshot_date) / FAILURES_FILE


def manifest_path(out_dir: Path, snapshot_date: dt.date) -> Path:
    return out_dir / MANIFESTS_DIR / f"dt={snapshot_date.isoformat()}.json"


def shards_dir(out_dir: Path, snapshot_date: dt.date) -> Path:
    return out_dir / SHARDS_DIR / f"dt={snapshot_date.isoformat()}"


def shard_manifest_path(out_dir: Path, snapshot_date: dt.date, shard: Shard) -> Path:
    return shards_dir(out_dir, snapshot_date) / f"manifest.{shard.label}.json"


def shard_failures_path(out_dir: Path, snapshot_date: dt.date, shard: Shard) -> Path:
    return shards_dir(out_dir, snapshot_date) / f"failures.{shard.label}.csv"


def tmp_dir(out_dir: Path, shard: Shard | None = None) -> Path:
    """Where temporary files go: ``OUT/_tmp``, a shard's own folder in it for a shard."""
    return out_dir / TMP_DIR / shard.label if shard is not None else out_dir / TMP_DIR


# ------------------------------------------------------------------------ Parquet parts


def arrow_schema(table: Table) -> pa.Schema:
    """The Arrow schema every part of ``table`` is written with (polars' own mapping)."""
    return pl.DataFrame(schema=table.schema).to_arrow(compat_level=pl.CompatLevel.oldest()).schema


def write_part(
    out_dir: Path,
    table: Table,
    snapshot_date: dt.date,
    frame: pl.DataFrame,
    *,
    shard: Shard | None = None,
    name: str | None = None,
) -> Part:
    """Write ``frame`` as a new part of ``table``; the caller records it in the state.

    ``name`` gives the file a fixed name instead of a new one (the assembled snapshot's
    changes: two shards assembling at once write the same file, not two)."""
    if frame.schema != table.schema:
        raise ValueError(f"frame does not match the {table.name} schema: {_diff(frame, table)}")
    data = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
    if name is not None:
        final = partition_dir(out_dir, table.name, snapshot_date) / name
    else:
        final = _new_part_path(out_dir, table, snapshot_date, shard)

    def write(handle: IO[bytes]) -> None:
        pq.write_table(
            data, handle, row_group_size=max(data.num_rows, 1), **_parquet_options(table)
        )
        crash_point("mid_part_write", half_written=handle)

    _atomic_write(final, tmp_dir(out_dir, shard), write)
    return Part(table.name, _relative(out_dir, final), frame.height)


def _parquet_options(table: Table) -> dict[str, Any]:
    """zstd and statistics everywhere; dictionary pages where the schema asks for them."""
    return {
        "compression": "zstd",
        "write_statistics": True,
        # Parquet names a list's values "<column>.list.element"; pyarrow matches leaf paths.
        "use_dictionary": [
            f"{c.name}.list.element" if isinstance(c.dtype, pl.List) else c.name
            for c in table.columns
            if c.dictionary
        ],
    }


def _diff(frame: pl.DataFrame, table: Table) -> str:
    got, want = frame.schema, table.schema
    problems = [f"missing {name}" for name in want if name not in got]
    problems += [f"unexpected {name}" for name in got if name not in want]
    problems += [
        f"{name} is {got[name]}, not {want[name]}"
        for name in want
        if name in got and got[name] != want[name]
    ]
    return "; ".join(problems) or "columns out of order"


def _new_part_path(
    out_dir: Path, table: Table, snapshot_date: dt.date, shard: Shard | None = None
) -> Path:
    folder = partition_dir(out_dir, table.name, snapshot_date)
    while True:
        candidate = folder / f"{_part_prefix(shard)}{_PART_TOKEN}-{next(_part_seq):05d}.parquet"
        if not candidate.exists():
            return candidate


def _part_prefix(shard: Shard | None) -> str:
    return f"part-{shard.label}-" if shard is not None else "part-"


def remove_orphans(
    out_dir: Path, snapshot_date: dt.date, known: Collection[str], *, shard: Shard | None = None
) -> list[str]:
    """Delete the snapshot's parts the state does not record, and everything in OUT/_tmp.

    A shard looks only at its own: parts named for it and its folder in OUT/_tmp.  Returns the
    removed paths, relative to OUT.
    """
    removed: list[str] = []
    pattern = f"{_part_prefix(shard)}*.parquet" if shard is not None else "*.parquet"
    try:
        for table in TABLES:
            folder = partition_dir(out_dir, table.name, snapshot_date)
            if not folder.is_dir():
                continue
            orphans = [
                p for p in sorted(folder.glob(pattern)) if _relative(out_dir, p) not in known
            ]
            for orphan in orphans:
                orphan.unlink()
                removed.append(_relative(out_dir, orphan))
            if orphans:
                _fsync_dir(folder)
        tmp = tmp_dir(out_dir, shard)
        if tmp.is_dir():
            for leftover in sorted(tmp.iterdir()):
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
                removed.append(_relative(out_dir, leftover))
    except OSError as exc:
        raise _storage_error(exc, Path(exc.filename or out_dir), "removing") from exc
    return removed


def plan_compaction(parts: Sequence[Part], target_rows: int) -> list[list[Part]]:
    """Groups of two or more small parts (under half the target) of one table, each at most
    ``target_rows`` in total, in the order given; parts of at least half the target stay as
    they are.  Packing in order keeps every closed group above half the target, so a snapshot
    ends with at most about twice as many files as its rows strictly need."""
    if target_rows < 1:
        raise ValueError(f"target_rows must be at least 1, got {target_rows}")
    groups: list[list[Part]] = []
    for table in dict.fromkeys(p.table for p in parts):
        current: list[Part] = []
        total = 0
        for part in (p for p in parts if p.table == table and 2 * p.rows < target_rows):
            if current and total + part.rows > target_rows:
                groups.append(current)
                current, total = [], 0
            current.append(part)
            total += part.rows
        groups.append(current)
    return [group for group in groups if len(group) >= 2]


def compact(
    out_dir: Path,
    table: Table,
    snapshot_date: dt.date,
    group: Sequence[Part],
    *,
    shard: Shard | None = None,
) -> Part:
    """Copy ``group``'s rows into one new part; the caller swaps them in the state
    (``State.replace_parts``), then calls ``delete_parts`` on the old ones."""
    if not group or any(p.table != table.name for p in group):
        raise ValueError(f"compact needs parts of {table.name}, got {[p.path for p in group]}")
    schema = arrow_schema(table)
    final = _new_part_path(out_dir, table, snapshot_date, shard)
    rows = 0

    def write(handle: IO[bytes]) -> None:
        nonlocal rows
        with pq.ParquetWriter(handle, schema, **_parquet_options(table)) as writer:
            for part in group:
                # Batch by batch: reading whole parts made peak memory grow by ~100 MB.
                for batch in _read_part(out_dir, part, schema):
                    writer.write_batch(batch)
                    rows += batch.num_rows

    _atomic_write(final, tmp_dir(out_dir, shard), write)
    return Part(table.name, _relative(out_dir, final), rows)


def _read_part(out_dir: Path, part: Part, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    path = out_dir / part.path
    try:
        source = pq.ParquetFile(path)
        if source.schema_arrow.names != schema.names:
            raise ValueError(
                f"{path} has columns {source.schema_arrow.names}, expected {schema.names}"
            )
        for batch in source.iter_batches(batch_size=COMPACT_BATCH_ROWS, use_threads=False):
            yield batch.cast(schema)
    except OSError as exc:
        raise _storage_error(exc, path, "reading") from exc
    except pa.ArrowException as exc:
        raise StorageError(
            f"cannot read {path} while compacting ({exc}); it is recorded in the state but "
            "damaged: move the snapshot's folders and state away and rerun"
        ) from exc


def delete_parts(out_dir: Path, parts: Sequence[Part]) -> None:
    folders: set[Path] = set()
    for part in parts:
        path = out_dir / part.path
        try:
            path.unlink(missing_ok=True)
            if path.parent not in folders and path.parent.is_dir():
                folders.add(path.parent)
        except OSError as exc:
            raise _storage_error(exc, path, "removing") from exc
    for folder in sorted(folders):
        try:
            _fsync_dir(folder)
        except OSError as exc:
            raise _storage_error(exc, folder, "syncing") from exc


# ------------------------------------------------------------------------ failures and JSON


def write_failures(
    out_dir: Path,
    snapshot_date: dt.date,
    failures: Iterable[Failure],
    *,
    shard: Shard | None = None,
) -> tuple[Path, int]:
    """Rewrite the snapshot's failures.csv from ``failures`` (header only when there are none);
    a shard's own failures file for a shard."""
    final = (
        shard_failures_path(out_dir, snapshot_date, shard)
        if shard is not None
        else failures_path(out_dir, snapshot_date)
    )
    rows = 0

    def write(handle: IO[bytes]) -> None:
        nonlocal rows
        lines = [",".join(FAILURE_COLUMNS)]
        for failure in failures:
            cells = (
                _csv_cell(_as_text(failure.user_id)),
                "" if failure.code is None else str(failure.code),
                _csv_cell(_as_text(failure.message)),
                str(failure.attempts),
                "" if failure.last_attempt_at is None else iso_utc(failure.last_attempt_at),
            )
            lines.append(",".join(cells))
            rows += 1
            if len(lines) >= 10_000:
                handle.write(("\n".join(lines) + "\n").encode())
                lines.clear()
        if lines:
            handle.write(("\n".join(lines) + "\n").encode())
        crash_point("mid_failures_write", half_written=handle)

    _atomic_write(final, tmp_dir(out_dir, shard), write)
    return final, rows


def _csv_cell(text: str) -> str:
    """RFC 4180 quoting.  Written by hand because ``csv`` leaves a bare CR unquoted when the
    line terminator is LF, which splits the row for most readers."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _as_text(cell: str) -> str:
    """A cell a spreadsheet would run as a formula gets a leading quote, so it shows as text."""
    return f"'{cell}" if cell.startswith(_FORMULA_PREFIXES) else cell


def write_manifest(
    out_dir: Path,
    snapshot_date: dt.date,
    parts: Sequence[Part],
    failures_rows: int,
    summary: Mapping[str, object],
    *,
    shard: Shard | None = None,
) -> Path:
    """Write the manifest (the files that make the snapshot), then the ``_SUCCESS`` markers.

    From the last shard to finish (``shard``) it is the snapshot's manifest all the same; its
    temporary files go to the shard's own folder."""
    payload = _manifest(out_dir, snapshot_date, parts, failures_rows, summary)
    payload["failures"] = {
        "path": _relative(out_dir, failures_path(out_dir, snapshot_date)),
        "rows": failures_rows,
    }
    path = manifest_path(out_dir, snapshot_date)
    write_json_atomic(path, payload, tmp_dir(out_dir, shard))
    for folder in _success_folders(out_dir, snapshot_date):
        _atomic_write(folder / SUCCESS_FILE, tmp_dir(out_dir, shard), lambda handle: None)
    return path


def write_shard_manifest(
    out_dir: Path,
    snapshot_date: dt.date,
    shard: Shard,
    parts: Sequence[Part],
    failures_rows: int,
    summary: Mapping[str, object],
) -> Path:
    """A shard's manifest: its files and failures, written when all its ids are done."""
    payload = _manifest(out_dir, snapshot_date, parts, failures_rows, summary)
    payload["shard"] = {"index": shard.index, "count": shard.count}
    payload["failures"] = {
        "path": _relative(out_dir, shard_failures_path(out_dir, snapshot_date, shard)),
        "rows": failures_rows,
    }
    path = shard_manifest_path(out_dir, snapshot_date, shard)
    write_json_atomic(path, payload, tmp_dir(out_dir, shard))
    return path


def read_shard_manifests(out_dir: Path, snapshot_date: dt.date) -> dict[Shard, dict[str, Any]]:
    """The readable shard manifests of a snapshot, by shard (any shard count)."""
    found: dict[Shard, dict[str, Any]] = {}
    for path in sorted(shards_dir(out_dir, snapshot_date).glob("manifest.shard-*.json")):
        payload = _read_json(path)
        shard = payload.get("shard") if payload is not None else None
        if payload is None or not isinstance(shard, dict):
            continue
        try:
            found[Shard(int(shard["index"]), int(shard["count"]))] = payload
        except (KeyError, TypeError, ValueError, XhsProfilesError):
            continue  # not one of ours
    return found


def write_combined_failures(
    out_dir: Path, snapshot_date: dt.date, sources: Sequence[str], shard: Shard | None = None
) -> int:
    """The snapshot's failures.csv: the header once, then each source's rows in order."""
    header = (",".join(FAILURE_COLUMNS) + "\n").encode()
    rows = 0

    def write(handle: IO[bytes]) -> None:
        nonlocal rows
        handle.write(header)
        for source in sources:
            with (out_dir / source).open("rb") as lines:
                if lines.readline() != header:
                    raise StorageError(f"{out_dir / source} is not a failures file of this tool")
                for line in lines:
                    handle.write(line)
                    rows += 1

    for source in sources:
        if not (out_dir / source).is_file():
            raise StorageError(
                f"{out_dir / source} is missing: rerun the shard that wrote it; nothing fetched "
                "is lost"
            )
    _atomic_write(failures_path(out_dir, snapshot_date), tmp_dir(out_dir, shard), write)
    return rows


def _manifest(
    out_dir: Path,
    snapshot_date: dt.date,
    parts: Sequence[Part],
    failures_rows: int,
    summary: Mapping[str, object],
) -> dict[str, object]:
    unknown = sorted({p.table for p in parts} - TABLES_BY_NAME.keys())
    if unknown:
        raise ValueError(f"parts of unknown tables: {', '.join(unknown)}")
    tables = {
        t.name: [
            {"path": p.path, "rows": p.rows}
            for p in sorted(parts, key=lambda p: p.path)
            if p.table == t.name
        ]
        for t in TABLES
    }
    payload: dict[str, object] = {
        "manifest_version": MANIFEST_VERSION,
        "snapshot_date": snapshot_date.isoformat(),
        "created_at": iso_utc(utcnow()),
        "tool": "xhs-profiles",
        "tool_version": TOOL_VERSION,
        "tables": tables,
        "rows": {t.name: sum(p.rows for p in parts if p.table == t.name) for t in TABLES},
        "failures": {},
        "summary": dict(summary),
    }
    return payload


def rewrite_manifest(out_dir: Path, snapshot_date: dt.date, parts: Sequence[Part]) -> Path:
    """Replace a complete snapshot's file lists with ``parts`` (its failures and summary stay),
    atomically: readers see the old manifest or the new one."""
    manifest = read_manifest(out_dir, snapshot_date)
    if manifest is None:
        raise StorageError(f"{manifest_path(out_dir, snapshot_date)} is missing or unreadable")
    failures = manifest.get("failures", {})
    rows = failures.get("rows", 0) if isinstance(failures, dict) else 0
    return write_manifest(out_dir, snapshot_date, parts, rows, manifest.get("summary", {}))


def read_manifest(out_dir: Path, snapshot_date: dt.date) -> dict[str, Any] | None:
    """The snapshot's manifest, or None when it has none (not complete) or it cannot be read."""
    return _read_json(manifest_path(out_dir, snapshot_date))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        payload = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def manifest_dates(out_dir: Path) -> list[dt.date]:
    """The dates that have a manifest (complete snapshots), oldest first."""
    dates = []
    for path in (out_dir / MANIFESTS_DIR).glob("dt=*.json"):
        try:
            dates.append(dt.date.fromisoformat(path.name[3:-5]))
        except ValueError:
            continue  # not one of ours
    return sorted(dates)


def clear_success(out_dir: Path, snapshot_date: dt.date, *, shard: Shard | None = None) -> None:
    """Withdraw the snapshot's ``_SUCCESS`` markers and manifest before a run changes it (and
    a shard's own manifest: the shard is no longer done)."""
    targets = [folder / SUCCESS_FILE for folder in _success_folders(out_dir, snapshot_date)]
    targets.append(manifest_path(out_dir, snapshot_date))
    if shard is not None:
        targets.insert(0, shard_manifest_path(out_dir, snapshot_date, shard))
    for target in targets:
        try:
            if target.exists():
                target.unlink()
                _fsync_dir(target.parent)
        except OSError as exc:
            raise _storage_error(exc, target, "removing") from exc


def _success_folders(out_dir: Path, snapshot_date: dt.date) -> list[Path]:
    names = [t.name for t in TABLES] + [FAILURES_DIR]
    return [partition_dir(out_dir, name, snapshot_date) for name in names]


def write_run_summary(
    out_dir: Path, run_id: str, summary: Mapping[str, object], *, shard: Shard | None = None
) -> Path:
    """``OUT/_runs/<started_at>-<run_id>.json``; ``started_at`` comes from the summary (a
    datetime or an ISO-8601 string), else now."""
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run id must be letters, digits, '.', '_' or '-', got {run_id!r}")
    started = summary.get("started_at")
    if isinstance(started, str):
        try:
            started = dt.datetime.fromisoformat(started)
        except ValueError:
            started = None
    if not isinstance(started, dt.datetime):
        started = utcnow()
    if started.tzinfo is None:
        started = started.replace(tzinfo=dt.UTC)
    stamp = started.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / RUNS_DIR / f"{stamp}-{run_id}.json"
    write_json_atomic(path, summary, tmp_dir(out_dir, shard))
    return path


def write_json_atomic(path: Path, payload: Mapping[str, object], tmp_dir: Path) -> None:
    body = (json.dumps(payload, ensure_ascii=False, indent=2, default=_json_value) + "\n").encode()
    _atomic_write(path, tmp_dir, lambda handle: handle.write(body))


def _json_value(value: object) -> object:
    if isinstance(value, dt.datetime):
        return iso_utc(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


# ------------------------------------------------------------------------ atomic files


def _atomic_write(final: Path, tmp_dir: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write via a temp file in ``tmp_dir``, fsync it, rename it to ``final``, fsync the folder."""
    tmp = tmp_dir / f"{final.name}.{secrets.token_hex(4)}.tmp"
    try:
        _make_dirs(tmp_dir)
        _make_dirs(final.parent)
        with tmp.open("wb", buffering=_WRITE_BUFFER) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(final)
        _fsync_dir(final.parent)
    except OSError as exc:
        _discard(tmp)
        raise _storage_error(exc, final, "writing") from exc
    except BaseException:
        _discard(tmp)
        raise


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        return  # a leftover in OUT/_tmp is removed by the next run's remove_orphans


def _make_dirs(folder: Path) -> None:
    """Create ``folder`` and its missing parents, fsyncing each parent so the entries survive."""
    missing: list[Path] = []
    cursor = folder
    while not cursor.is_dir():
        missing.append(cursor)
        if cursor.parent == cursor:
            break
        cursor = cursor.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _relative(out_dir: Path, path: Path) -> str:
    return path.relative_to(out_dir).as_posix()


def _storage_error(exc: OSError, path: Path, doing: str) -> StorageError:
    cause = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(
            f"disk full while {doing} {path}: free space and rerun; nothing fetched is lost"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(
            f"permission denied while {doing} {path} ({cause}): make --out writable (or use "
            "another --out) and rerun; nothing fetched is lost"
        )
    return StorageError(
        f"error while {doing} {path} ({cause}): fix the cause and rerun; nothing fetched is lost"
    )
