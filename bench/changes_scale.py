"""``changes`` at scale: 30 daily snapshots of 10,000 creators, time and peak memory.

The dataset is built in process, as 30 runs would leave it (flatten → parts → failures.csv →
changes → manifest, through the pipeline's own functions, without HTTP: the fetch is measured
elsewhere), with counters that drift from day to day.  Then ``xhs-profiles changes`` runs as a
measured child twice: for the 30th snapshot (29 earlier ``profile_changes`` partitions of
history) and for the 5th (4 of them), so the ratio of their peak memory shows whether memory
grows with the number of snapshots.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import orjson

from bench.harness import XHS, run_child
from bench.scenarios import Measure
from pipeline import changes, sink
from pipeline.flatten import flatten
from pipeline.records import FetchedProfile
from pipeline.sandbox import build_profile
from pipeline.state import State

START = dt.date(2026, 1, 1)


def _bodies(ids: list[str]) -> dict[str, dict[str, Any]]:
    return {uid: build_profile(uid) for uid in ids}


def _drifted(data: dict[str, Any], day: int, rank: int) -> bytes:
    """Followers grow 0.1–1% a day by creator; one creator in 500 jumps on day 20."""
    grown = dict(data)
    factor = 1 + day * (0.001 + (rank % 10) * 0.001)
    grown["fans"] = int(data.get("fans") or 0) * factor + (
        50_000 if rank % 500 == 0 and day >= 20 else 0
    )
    grown["fans"] = int(grown["fans"])
    grown["liked"] = int((data.get("liked") or 0) * factor)
    return orjson.dumps(grown)


def build_dataset(out: Path, creators: int, snapshots: int) -> float:
    """Write ``snapshots`` complete daily snapshots of ``creators``; returns seconds taken."""
    started = time.perf_counter()
    ids = [f"{n:024x}" for n in range(1, creators + 1)]
    bodies = _bodies(ids)
    for day in range(snapshots):
        date = START + dt.timedelta(days=day)
        fetched_at = dt.datetime.combine(date, dt.time(2), tzinfo=dt.UTC)
        batch = [
            FetchedProfile(uid, _drifted(bodies[uid], day, rank), None, fetched_at)
            for rank, uid in enumerate(ids)
        ]
        with State.open(out, date) as state:
            parts = [
                sink.write_part(out, table, date, frame)
                for table, frame in flatten(batch).by_table()
            ]
            state.mark_written([], parts)
            sink.write_failures(out, date, [])
            changes.write(state, out, date)
            sink.write_manifest(out, date, state.parts(), 0, {"outcome": "completed"})
    return time.perf_counter() - started


def measure(work: Path, creators: int = 10_000, snapshots: int = 30) -> list[Measure]:
    """``xhs-profiles changes`` on the last snapshot and on the fifth, as two Measures."""
    out = work / "changes-scale"
    built_s = build_dataset(out, creators, snapshots)
    measures = []
    for day in (snapshots - 1, 4):
        date = START + dt.timedelta(days=day)
        argv = [str(XHS), "changes", str(out), "--to", date.isoformat()]
        run = run_child(argv, log_dir=work / f"changes-{day}", cap_s=600)
        if run.returncode != 0:
            raise RuntimeError(f"changes failed: {run.stderr.strip()}")
        extra = {"history": day, "snapshots": snapshots, "build_s": built_s}
        measures.append(Measure("changes", f"snapshot {day + 1}", creators, run, extra=extra))
    return measures
