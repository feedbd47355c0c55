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

The records and their text and JSON are in ``pipeline.status_data``; the reading, and why the
SQLite states are opened as they are beside a running writer, in ``pipeline.status_read``.
Their public names are importable from here.

sqlite3 and OS errors leave this module as ``StateError`` (``raise ... from``): a state that
cannot be read is a problem of the folder given (exit 2), never of the tool.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Final

from pipeline import sink
from pipeline.errors import (
    FailureThresholdExceeded,
    IncompleteSnapshot,
    StaleSnapshot,
    StateError,
    UsageError,
)
from pipeline.run_report import FailureCheck
from pipeline.state import STATE_DIR
from pipeline.status_data import OutStatus as OutStatus
from pipeline.status_data import RecordedCheck as RecordedCheck
from pipeline.status_data import RunInfo as RunInfo
from pipeline.status_data import ShardStatus as ShardStatus
from pipeline.status_data import SnapshotStatus as SnapshotStatus
from pipeline.status_read import read_out_status, unreadable
from pipeline.storage import LocalStore, RemoteStorageError, Store

DEFAULT_MAX_AGE: Final = dt.timedelta(hours=26)  # a daily run, plus two hours of slack
# What makes a folder an xhs-profiles --out; an empty folder counts too (nothing has run yet).
_MARKERS: Final = (STATE_DIR, sink.MANIFESTS_DIR, sink.RUNS_DIR)
# A first run probes that OUT is writable with a tempfile (``tmpXXXXXXXX``) before it makes
# _state: seen alone, the folder is a run's that has just started, not a foreign one.
_PROBE: Final = re.compile(r"tmp[a-z0-9_]{8}")
_DURATION: Final = re.compile(r"(\d+)([smhd])")
_UNITS: Final = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}


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
        return read_out_status(store, state_dir)
    except RemoteStorageError as exc:
        raise StateError(f"cannot read {store.display}: {exc.problem}: {exc.advice}") from exc


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
        raise unreadable(exc, out_dir) from exc
