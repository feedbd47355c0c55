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

OUT is a ``storage.Store``: a local folder, or an object store (``s3://bucket/prefix``).
Every function takes the store (or, as before stores existed, a folder's ``Path``) and
addresses files by key, their path relative to OUT, as the state records parts.  Given a Path a
function returns Paths, given a store it returns keys.

Rules it follows:

- Every file is written whole to a temp file, never in a partition folder (which readers scan),
  then put in place at once: in a folder, the temp file is in ``OUT/_tmp``, fsynced, moved into
  place with ``os.replace`` and its folder fsynced; in an object store it is a local file,
  uploaded with one put at its final key.  A reader or a crash sees the old file or the new
  one, never half of one.  A file the state does not record is an orphan of a crash and
  ``remove_orphans`` deletes it; readers follow the manifest, which never lists one.
- Parquet is written by pyarrow from frames built with ``schema.TABLES``' schemas (checked here):
  zstd, statistics on, timestamps µs UTC, strings as UTF-8 byte arrays, never a Null-typed
  column, so polars, DuckDB, pyarrow, Spark and BigQuery read every file the same way.
- Compaction streams one source part at a time into one new file (one row group per source).
- OS errors leave as ``StorageError`` naming the file and what to do; the temp file is removed.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import itertools
import json
import os  # noqa: F401  (the rename is storage's now; tests still patch os.replace as sink.os)
import posixpath
import re
import secrets
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import IO, Any, Final, overload

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import TOOL_VERSION
from pipeline.crashpoints import crash_point
from pipeline.errors import MissingFileError, StorageError, XhsProfilesError
from pipeline.records import Failure, Part
from pipeline.schema import FAILURE_COLUMNS, TABLES, TABLES_BY_NAME, Table
from pipeline.shards import Shard
from pipeline.storage import TMP_DIR, LocalStore, Store, atomic_write
from pipeline.timestamps import iso_utc, utcnow

# mimalloc, pyarrow's default pool, keeps what compaction reads (one part at a time) instead of
# giving it back: RSS grew with the number of parts merged (367 MB after 20 parts of 5,000
# profiles, 186 MB with the system allocator), and peak memory must not grow with the ids.
pa.set_memory_pool(pa.system_memory_pool())

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
# Part names: a token per process plus a counter, so two processes (a crashed run and its
# resume) never pick the same name, and names sort in the order they were written.
_PART_TOKEN: Final = secrets.token_hex(4)
_part_seq = itertools.count(1)


def partition_key(table: str, snapshot_date: dt.date) -> str:
    return f"{table}/dt={snapshot_date.isoformat()}"


def failures_key(snapshot_date: dt.date) -> str:
    return f"{partition_key(FAILURES_DIR, snapshot_date)}/{FAILURES_FILE}"


def manifest_key(snapshot_date: dt.date) -> str:
    return f"{MANIFESTS_DIR}/dt={snapshot_date.isoformat()}.json"


def shards_key(snapshot_date: dt.date) -> str:
    return f"{SHARDS_DIR}/dt={snapshot_date.isoformat()}"


def shard_manifest_key(snapshot_date: dt.date, shard: Shard) -> str:
    return f"{shards_key(snapshot_date)}/manifest.{shard.label}.json"


def shard_failures_key(snapshot_date: dt.date, shard: Shard) -> str:
    return f"{shards_key(snapshot_date)}/failures.{shard.label}.csv"


def partition_dir(out_dir: Path, table: str, snapshot_date: dt.date) -> Path:
    return out_dir / partition_key(table, snapshot_date)


def failures_path(out_dir: Path, snapshot_date: dt.date) -> Path:
    return out_dir / failures_key(snapshot_date)


def manifest_path(out_dir: Path, snapshot_date: dt.date) -> Path:
    return out_dir / manifest_key(snapshot_date)


def shards_dir(out_dir: Path, snapshot_date: dt.date) -> Path:
    return out_dir / shards_key(snapshot_date)


def shard_manifest_path(out_dir: Path, snapshot_date: dt.date, shard: Shard) -> Path:
    return out_dir / shard_manifest_key(snapshot_date, shard)


def shard_failures_path(out_dir: Path, snapshot_date: dt.date, shard: Shard) -> Path:
    return out_dir / shard_failures_key(snapshot_date, shard)


def tmp_dir(out_dir: Path, shard: Shard | None = None) -> Path:
    """Where temporary files go: ``OUT/_tmp``, a shard's own folder in it for a shard."""
    return out_dir / TMP_DIR / shard.label if shard is not None else out_dir / TMP_DIR


def store_of(out: Store | Path, shard: Shard | None = None) -> Store:
    """The store for ``out``, its temp files in the shard's own folder for a shard."""
    store = LocalStore(out) if isinstance(out, Path) else out
    return store.staging(shard.label) if shard is not None else store


def _located(out: Store | Path, key: str) -> Path | str:
    """What a writer returns: a Path when it was given a Path, else the key."""
    return out / key if isinstance(out, Path) else key


# ------------------------------------------------------------------------ Parquet parts


def arrow_schema(table: Table) -> pa.Schema:
    """The Arrow schema every part of ``table`` is written with (polars' own mapping)."""
    return pl.DataFrame(schema=table.schema).to_arrow(compat_level=pl.CompatLevel.oldest()).schema


def write_part(
    out: Store | Path,
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
    store = store_of(out, shard)
    if name is not None:
        key = f"{partition_key(table.name, snapshot_date)}/{name}"
    else:
        key = _new_part_key(store, table, snapshot_date, shard)

    def write(handle: IO[bytes]) -> None:
        pq.write_table(
            data, handle, row_group_size=max(data.num_rows, 1), **_parquet_options(table)
        )
        crash_point("mid_part_write", half_written=handle)

    store.write(key, write)
    return Part(table.name, key, frame.height)


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


def _new_part_key(
    store: Store, table: Table, snapshot_date: dt.date, shard: Shard | None = None
) -> str:
    folder = partition_key(table.name, snapshot_date)
    while True:
        candidate = f"{folder}/{_part_prefix(shard)}{_PART_TOKEN}-{next(_part_seq):05d}.parquet"
        if not store.exists(candidate):
            return candidate


def _part_prefix(shard: Shard | None) -> str:
    return f"part-{shard.label}-" if shard is not None else "part-"


def remove_orphans(
    out: Store | Path, snapshot_date: dt.date, known: Collection[str], *, shard: Shard | None = None
) -> list[str]:
    """Delete the snapshot's parts the state does not record, and every leftover temp file
    (``OUT/_tmp`` for a folder; the local staging folder of an object store).

    A shard looks only at its own: parts named for it and its own temp folder.  Returns the
    removed keys (a folder's temp files as keys too; an object store's as local paths).
    """
    store = store_of(out, shard)
    pattern = f"{_part_prefix(shard)}*.parquet" if shard is not None else "*.parquet"
    removed: list[str] = []
    for table in TABLES:
        orphans = [
            key
            for key in store.listdir(partition_key(table.name, snapshot_date), ".parquet")
            if fnmatch.fnmatchcase(posixpath.basename(key), pattern) and key not in known
        ]
        store.delete(orphans)
        removed += orphans
    return removed + store.clear_tmp()


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
    out: Store | Path,
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
    store = store_of(out, shard)
    schema = arrow_schema(table)
    key = _new_part_key(store, table, snapshot_date, shard)
    rows = 0

    def write(handle: IO[bytes]) -> None:
        nonlocal rows
        with pq.ParquetWriter(handle, schema, **_parquet_options(table)) as writer:
            for part in group:
                # Batch by batch: reading whole parts made peak memory grow by ~100 MB.
                for batch in _read_part(store, part, schema):
                    writer.write_batch(batch)
                    rows += batch.num_rows

    store.write(key, write)
    return Part(table.name, key, rows)


def _read_part(store: Store, part: Part, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    where = store.uri(part.path)
    try:
        source = pq.ParquetFile(store.arrow_path(part.path), filesystem=store.arrow_filesystem())
        if source.schema_arrow.names != schema.names:
            raise ValueError(
                f"{where} has columns {source.schema_arrow.names}, expected {schema.names}"
            )
        for batch in source.iter_batches(batch_size=COMPACT_BATCH_ROWS, use_threads=False):
            yield batch.cast(schema)
    except store.errors as exc:
        raise store.error(exc, part.path, "reading") from exc
    except pa.ArrowException as exc:
        raise StorageError(
            f"cannot read {where} while compacting ({exc}); it is recorded in the state but "
            "damaged: move the snapshot's folders and state away and rerun"
        ) from exc


def delete_parts(out: Store | Path, parts: Sequence[Part]) -> None:
    """Remove the parts' files (gone already is fine); in a folder, each folder that lost one
    is fsynced."""
    store_of(out).delete([part.path for part in parts])


# ------------------------------------------------------------------------ failures and JSON


@overload
def write_failures(
    out: Path, snapshot_date: dt.date, failures: Iterable[Failure], *, shard: Shard | None = None
) -> tuple[Path, int]: ...
@overload
def write_failures(
    out: Store, snapshot_date: dt.date, failures: Iterable[Failure], *, shard: Shard | None = None
) -> tuple[str, int]: ...
def write_failures(
    out: Store | Path,
    snapshot_date: dt.date,
    failures: Iterable[Failure],
    *,
    shard: Shard | None = None,
) -> tuple[Path | str, int]:
    """Rewrite the snapshot's failures.csv from ``failures`` (header only when there are none);
    a shard's own failures file for a shard."""
    key = (
        shard_failures_key(snapshot_date, shard)
        if shard is not None
        else failures_key(snapshot_date)
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

    store_of(out, shard).write(key, write)
    return _located(out, key), rows


def _csv_cell(text: str) -> str:
    """RFC 4180 quoting.  Written by hand because ``csv`` leaves a bare CR unquoted when the
    line terminator is LF, which splits the row for most readers."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _as_text(cell: str) -> str:
    """A cell a spreadsheet would run as a formula gets a leading quote, so it shows as text."""
    return f"'{cell}" if cell.startswith(_FORMULA_PREFIXES) else cell


@overload
def write_manifest(
    out: Path,
    snapshot_date: dt.date,
    parts: Sequence[Part],
    failures_rows: int,
    summary: Mapping[str, object],
    *,
    shard: Shard | None = None,
) -> Path: ...
@overload
def write_manifest(
    out: Store,
    snapshot_date: dt.date,
    parts: Sequence[Part],
    failures_rows: int,
    summary: Mapping[str, object],
    *,
    shard: Shard | None = None,
) -> str: ...
def write_manifest(
    out: Store | Path,
    snapshot_date: dt.date,
    parts: Sequence[Part],
    failures_rows: int,
    summary: Mapping[str, object],
    *,
    shard: Shard | None = None,
) -> Path | str:
    """Write the manifest (the files that make the snapshot), then the ``_SUCCESS`` markers.

    From the last shard to finish (``shard``) it is the snapshot's manifest all the same; its
    temporary files go to the shard's own folder."""
    store = store_of(out, shard)
    payload = _manifest(snapshot_date, parts, failures_rows, summary)
    payload["failures"] = {"path": failures_key(snapshot_date), "rows": failures_rows}
    key = manifest_key(snapshot_date)
    _write_json(store, key, payload)
    for folder in _success_folders(snapshot_date):
        store.write(f"{folder}/{SUCCESS_FILE}", lambda handle: None)
    return _located(out, key)


@overload
def write_shard_manifest(
    out: Path,
    snapshot_date: dt.date,
    shard: Shard,
    parts: Sequence[Part],
    failures_rows: int,
    summary: Mapping[str, object],
) -> Path: ...
@overload
def write_shard_manifest(
    out: Store,
    snapshot_date: dt.date,
    shard: Shard,
    parts: Sequence[Part],
    failures_rows: int,
    summary: Mapping[str, object],
) -> str: ...
def write_shard_manifest(
    out: Store | Path,
    snapshot_date: dt.date,
    shard: Shard,
    parts: Sequence[Part],
    failures_rows: int,
    summary: Mapping[str, object],
) -> Path | str:
    """A shard's manifest: its files and failures, written when all its ids are done."""
    payload = _manifest(snapshot_date, parts, failures_rows, summary)
    payload["shard"] = {"index": shard.index, "count": shard.count}
    payload["failures"] = {"path": shard_failures_key(snapshot_date, shard), "rows": failures_rows}
    key = shard_manifest_key(snapshot_date, shard)
    _write_json(store_of(out, shard), key, payload)
    return _located(out, key)


def read_shard_manifests(out: Store | Path, snapshot_date: dt.date) -> dict[Shard, dict[str, Any]]:
    """The readable shard manifests of a snapshot, by shard (any shard count)."""
    store = store_of(out)
    found: dict[Shard, dict[str, Any]] = {}
    for key in store.listdir(shards_key(snapshot_date), ".json"):
        if not fnmatch.fnmatchcase(posixpath.basename(key), "manifest.shard-*.json"):
            continue
        payload = _read_json(store, key)
        shard = payload.get("shard") if payload is not None else None
        if payload is None or not isinstance(shard, dict):
            continue
        try:
            found[Shard(int(shard["index"]), int(shard["count"]))] = payload
        except (KeyError, TypeError, ValueError, XhsProfilesError):
            continue  # not one of ours
    return found


def write_combined_failures(
    out: Store | Path, snapshot_date: dt.date, sources: Sequence[str], shard: Shard | None = None
) -> int:
    """The snapshot's failures.csv: the header once, then each source's rows in order."""
    store = store_of(out, shard)
    header = (",".join(FAILURE_COLUMNS) + "\n").encode()
    rows = 0

    def write(handle: IO[bytes]) -> None:
        nonlocal rows
        handle.write(header)
        for source in sources:
            with store.open_input(source) as lines:
                if lines.readline() != header:
                    raise StorageError(f"{store.uri(source)} is not a failures file of this tool")
                for line in lines:
                    handle.write(line)
                    rows += 1

    for source in sources:
        if not store.exists(source):
            raise StorageError(
                f"{store.uri(source)} is missing: rerun the shard that wrote it; nothing fetched "
                "is lost"
            )
    store.write(failures_key(snapshot_date), write)
    return rows


def _manifest(
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


@overload
def rewrite_manifest(out: Path, snapshot_date: dt.date, parts: Sequence[Part]) -> Path: ...
@overload
def rewrite_manifest(out: Store, snapshot_date: dt.date, parts: Sequence[Part]) -> str: ...
def rewrite_manifest(
    out: Store | Path, snapshot_date: dt.date, parts: Sequence[Part]
) -> Path | str:
    """Replace a complete snapshot's file lists with ``parts`` (its failures and summary stay),
    atomically: readers see the old manifest or the new one."""
    store = store_of(out)
    manifest = read_manifest(store, snapshot_date)
    if manifest is None:
        raise StorageError(f"{store.uri(manifest_key(snapshot_date))} is missing or unreadable")
    failures = manifest.get("failures", {})
    rows = failures.get("rows", 0) if isinstance(failures, dict) else 0
    write_manifest(store, snapshot_date, parts, rows, manifest.get("summary", {}))
    return _located(out, manifest_key(snapshot_date))


def read_manifest(out: Store | Path, snapshot_date: dt.date) -> dict[str, Any] | None:
    """The snapshot's manifest, or None when it has none (not complete) or it cannot be read."""
    return _read_json(store_of(out), manifest_key(snapshot_date))


def _read_json(store: Store, key: str) -> dict[str, Any] | None:
    """A JSON object, or None when the file is missing or not one.  A folder's unreadable file
    reads as missing, as it always did; an object store's failure is an error (a network
    blip must not make a complete snapshot look incomplete)."""
    try:
        payload = json.loads(store.read_bytes(key).decode("utf-8"))
    except MissingFileError:
        return None
    except StorageError:
        if store.is_local:
            return None
        raise
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def manifest_dates(out: Store | Path) -> list[dt.date]:
    """The dates that have a manifest (complete snapshots), oldest first."""
    dates = []
    for key in store_of(out).listdir(MANIFESTS_DIR, ".json"):
        name = posixpath.basename(key)
        if not name.startswith("dt="):
            continue
        try:
            dates.append(dt.date.fromisoformat(name[3:-5]))
        except ValueError:
            continue  # not one of ours
    return sorted(dates)


def clear_success(out: Store | Path, snapshot_date: dt.date, *, shard: Shard | None = None) -> None:
    """Withdraw the snapshot's ``_SUCCESS`` markers and manifest before a run changes it (and
    a shard's own manifest: the shard is no longer done).  One at a time, in this order: a
    reader never sees a manifest whose markers are gone and it is not."""
    store = store_of(out, shard)
    targets = [f"{folder}/{SUCCESS_FILE}" for folder in _success_folders(snapshot_date)]
    targets.append(manifest_key(snapshot_date))
    if shard is not None:
        targets.insert(0, shard_manifest_key(snapshot_date, shard))
    for target in targets:
        store.delete([target])


def _success_folders(snapshot_date: dt.date) -> list[str]:
    names = [t.name for t in TABLES] + [FAILURES_DIR]
    return [partition_key(name, snapshot_date) for name in names]


@overload
def write_run_summary(
    out: Path, run_id: str, summary: Mapping[str, object], *, shard: Shard | None = None
) -> Path: ...
@overload
def write_run_summary(
    out: Store, run_id: str, summary: Mapping[str, object], *, shard: Shard | None = None
) -> str: ...
def write_run_summary(
    out: Store | Path, run_id: str, summary: Mapping[str, object], *, shard: Shard | None = None
) -> Path | str:
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
    key = f"{RUNS_DIR}/{stamp}-{run_id}.json"
    _write_json(store_of(out, shard), key, summary)
    return _located(out, key)


def write_json_atomic(path: Path, payload: Mapping[str, object], tmp_dir: Path) -> None:
    """``payload`` as ``path`` in a folder, via a temp file in ``tmp_dir``."""
    body = _json_bytes(payload)
    atomic_write(path, tmp_dir, lambda handle: handle.write(body))


def _write_json(store: Store, key: str, payload: Mapping[str, object]) -> None:
    store.write_bytes(key, _json_bytes(payload))


def _json_bytes(payload: Mapping[str, object]) -> bytes:
    return (json.dumps(payload, ensure_ascii=False, indent=2, default=_json_value) + "\n").encode()


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
