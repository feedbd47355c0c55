"""One snapshot from N shards, committed once, when every shard is done.

A shard that has done all its ids writes its own manifest (``OUT/_shards/dt=D/
manifest.shard-K-of-N.json``) and then calls ``assemble``.  Until all N manifests are there it
does nothing; the shard that finds them all writes, in this order: the whole snapshot's
``profile_changes`` (one file), ``failures/dt=D/failures.csv`` (the shards' failures, in shard
order), the snapshot's manifest (the commit point) and the ``_SUCCESS`` markers.

Why two shards that finish at the same moment still give one dataset: each writes its own
manifest before it looks for the others', so the later of any two sees both (a folder, and S3
since its 2020 strong consistency, lists every write that completed before the listing began).
If both see all N, both write the same files under the same names from the same inputs: the
changes file is named after a hash of the shard manifests, nothing else in a name is random,
so whichever rename or upload lands last, a reader finds one manifest, one changes file and
one ``_SUCCESS`` per folder.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import hashlib
import json
import posixpath
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from pipeline import changes, sink
from pipeline.crashpoints import crash_point
from pipeline.records import Part
from pipeline.schema import PROFILE_CHANGES, TABLES
from pipeline.shards import Shard
from pipeline.storage import Store

# The counts a combined summary adds up over the shards.
_SNAPSHOT_COUNTS: Final = (
    "pending",
    "fetched",
    "written",
    "failed",
    "rejected",
    "failed_permanent",
    "failed_transient",
    "wrong_user",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Assembly:
    """What ``assemble`` found: the shards done, and the manifest if it wrote one."""

    done: tuple[int, ...]
    count: int
    manifest: Path | str | None  # a Path for a folder given as one, else the manifest's key


def assemble(out: Store | Path, snapshot_date: dt.date, shard: Shard) -> Assembly:
    """Commit the snapshot if every shard of ``shard.count`` has its manifest; else wait."""
    store = sink.store_of(out)
    manifests = {
        s.index: m
        for s, m in sink.read_shard_manifests(store, snapshot_date).items()
        if s.count == shard.count
    }
    done = tuple(sorted(manifests))
    if len(manifests) < shard.count:
        return Assembly(done, shard.count, None)
    ordered = [manifests[k] for k in range(shard.count)]
    parts = [
        Part(table, entry["path"], int(entry["rows"]))
        for manifest in ordered
        for table, entries in manifest["tables"].items()
        if table != PROFILE_CHANGES.name
        for entry in entries
    ]
    by_table = {t.name: [p.path for p in parts if p.table == t.name] for t in TABLES}
    frame = changes.compute_for(store, snapshot_date, by_table)
    name = f"part-snapshot-{_fingerprint(ordered)}.parquet"
    part = sink.write_part(store, PROFILE_CHANGES, snapshot_date, frame, shard=shard, name=name)
    failures_rows = sink.write_combined_failures(
        store, snapshot_date, [m["failures"]["path"] for m in ordered], shard
    )
    crash_point("mid_assembly")
    key = sink.write_manifest(
        store,
        snapshot_date,
        [*parts, part],
        failures_rows,
        combined_summary(ordered),
        shard=shard,
    )
    stale = [
        Part(PROFILE_CHANGES.name, p, 0)
        for p in _changes_files(store, snapshot_date)
        if p != part.path
    ]
    sink.delete_parts(store, stale)
    return Assembly(done, shard.count, out / key if isinstance(out, Path) else key)


def combined_summary(manifests: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The snapshot manifest's summary: the shards' counts added up, and each shard's run."""
    runs = [m.get("summary", {}) for m in manifests]
    snapshot: dict[str, Any] = add_up(runs, "snapshot", _SNAPSHOT_COUNTS)
    codes: dict[str, int] = {}
    for run in runs:
        for code, n in (run.get("snapshot", {}).get("failures_by_code") or {}).items():
            codes[code] = codes.get(code, 0) + int(n)
    snapshot["failures_by_code"] = dict(sorted(codes.items(), key=lambda kv: int(kv[0])))
    request_keys = tuple(dict.fromkeys(k for r in runs for k in (r.get("requests") or {})))
    started = min((r["started_at"] for r in runs if isinstance(r.get("started_at"), str)),
                  default=None)  # fmt: skip
    finished = max((r["finished_at"] for r in runs if isinstance(r.get("finished_at"), str)),
                   default=None)  # fmt: skip
    return {
        "run_id": "+".join(str(r.get("run_id", "")) for r in runs),
        "snapshot_date": runs[0].get("snapshot_date") if runs else None,
        "started_at": started,
        "finished_at": finished,
        "outcome": "completed",
        "exit_code": max((_int(r, "exit_code") for r in runs), default=0),
        "complete": True,
        "requests": add_up(runs, "requests", request_keys),
        "snapshot": snapshot,
        "shards": [
            {
                "shard": i,
                "run_id": r.get("run_id"),
                "started_at": r.get("started_at"),
                "finished_at": r.get("finished_at"),
                "outcome": r.get("outcome"),
                "exit_code": r.get("exit_code"),
                "ids": sum(_int(r.get("snapshot", {}), k) for k in ("written", "failed")),
                "rate_control": r.get("rate_control"),
            }
            for i, r in enumerate(runs)
        ],
    }


def add_up(
    summaries: Sequence[Mapping[str, Any]], section: str, names: Sequence[str]
) -> dict[str, int]:
    """The ``names`` counts of each run summary's ``section``, added up (absent or not a
    whole number: 0)."""
    return {n: sum(_int(r.get(section), n) for r in summaries) for n in names}


def _fingerprint(manifests: Sequence[Mapping[str, Any]]) -> str:
    digest = hashlib.sha256()
    for manifest in manifests:
        digest.update(json.dumps(manifest, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _changes_files(store: Store, snapshot_date: dt.date) -> list[str]:
    folder = sink.partition_key(PROFILE_CHANGES.name, snapshot_date)
    return [
        key
        for key in store.listdir(folder, ".parquet")
        if fnmatch.fnmatchcase(posixpath.basename(key), "part-snapshot-*.parquet")
    ]


def _int(mapping: object, key: str) -> int:
    value = mapping.get(key) if isinstance(mapping, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
