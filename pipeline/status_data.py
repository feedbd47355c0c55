"""What ``status`` reports, as frozen records, and how each one renders as text and as JSON.

``OutStatus`` is an output folder: its ``SnapshotStatus`` per snapshot date (the counts, the
completion, the calls), each with its ``ShardStatus``es, its last ``RunInfo`` and the
``RecordedCheck`` its completing run wrote.  ``pipeline.status_read`` fills them in;
``pipeline.status`` judges them (``check``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.run_report import SnapshotCounts
from pipeline.timestamps import iso_utc


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


def _iso(
    moment: dt.datetime | None, timespec: Literal["seconds", "milliseconds"] = "milliseconds"
) -> str | None:
    return None if moment is None else iso_utc(moment, timespec)
