"""What one run did, as a frozen typed record: the CLI's closing lines and ``_runs/*.json`` (and
the manifest's ``summary``) are both rendered from it, so they can never disagree.

``RunReport.to_json`` gives the summary file's object, key for key in a fixed order (the field
order of the records below); readers of ``_runs/*.json`` rely on those names, so they are a
public contract like the columns.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pipeline.config import RunConfig
from pipeline.errors import FailureThresholdExceeded, Interrupted, StopRun
from pipeline.records import Tally
from pipeline.timestamps import iso_utc


class Outcome(StrEnum):
    COMPLETED = "completed"  # every valid id is in the profiles table or in failures.csv
    INCOMPLETE = "incomplete"  # ids still pending (e.g. a disk error ended the run)
    STOPPED = "stopped"  # the API refused the account, or the endpoint is gone
    BUDGET = "budget"  # --max-calls reached
    INTERRUPTED = "interrupted"  # SIGINT/SIGTERM
    DRY_RUN = "dry_run"  # nothing was called


@dataclass(frozen=True, slots=True)
class InputSummary:
    """The input file, and what its ingest added (``counts`` is None when it was already in)."""

    path: str
    encoding: str
    column: str | None
    sha256: str
    counts: IngestCounts | None = None

    def to_json(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "path": self.path,
            "encoding": self.encoding,
            "column": self.column,
            "sha256": self.sha256,
            "ingested": self.counts is not None,
        }
        if self.counts is not None:
            info.update(dataclasses.asdict(self.counts))
        return info


@dataclass(frozen=True, slots=True)
class IngestCounts:
    rows: int  # cells read
    valid: int  # cells holding a valid id, duplicates included
    invalid: int  # cells recorded as rejects (code 400)
    duplicates: int  # valid cells repeating an id seen earlier in the same input
    new: int  # ids the state did not know
    blank_cells: int


@dataclass(frozen=True, slots=True)
class RequestCounts:
    """This run's calls (each one billed) and their outcomes."""

    calls: int = 0
    fetched: int = 0
    failed: int = 0
    retried: int = 0
    rate_limited: int = 0
    wrong_user: int = 0  # answers with another user's profile (in ``failed`` too)

    @classmethod
    def of(cls, tally: Tally) -> RequestCounts:
        return cls(
            tally.calls,
            tally.fetched,
            tally.failed,
            tally.retried,
            tally.rate_limited,
            tally.wrong_user,
        )


@dataclass(frozen=True, slots=True)
class SnapshotCounts:
    """The snapshot's ids by status after the run (all runs of the date, not just this one)."""

    pending: int = 0
    fetched: int = 0
    written: int = 0
    failed: int = 0
    rejected: int = 0  # input cells that are not ids
    failures_by_code: Mapping[int, int] = field(default_factory=dict)
    failed_permanent: int = 0  # 400, 404, no profile, ...: a rerun does not try them again
    failed_transient: int = 0  # 301, 500, transport faults after every attempt: a rerun does
    wrong_user: int = 0  # failed because the answer was another user's profile (kept)

    @property
    def failures(self) -> int:
        """Rows of failures.csv: failed ids and rejected cells."""
        return self.failed + self.rejected

    @property
    def valid_ids(self) -> int:
        return self.pending + self.fetched + self.written + self.failed

    @property
    def failure_rate(self) -> float:
        """Failed ids over valid ids (rejected input cells are neither)."""
        return self.failed / self.valid_ids if self.valid_ids else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "fetched": self.fetched,
            "written": self.written,
            "failed": self.failed,
            "rejected": self.rejected,
            "failures_by_code": {str(c): n for c, n in sorted(self.failures_by_code.items())},
            "failed_permanent": self.failed_permanent,
            "failed_transient": self.failed_transient,
            "wrong_user": self.wrong_user,
        }


@dataclass(frozen=True, slots=True)
class FailureCheck:
    """A completed snapshot's failures against --max-failure-rate and --max-failures."""

    snapshot: SnapshotCounts
    max_failure_rate: float | None = None
    max_failures: int | None = None
    previous_rate: float | None = None  # the latest earlier complete snapshot's rate

    @property
    def exceeded(self) -> bool:
        failed = self.snapshot.failed
        over_rate = self.max_failure_rate is not None and (
            self.snapshot.failure_rate > self.max_failure_rate
        )
        return over_rate or (self.max_failures is not None and failed > self.max_failures)

    def message(self) -> str:
        snap = self.snapshot
        limits = []
        if self.max_failure_rate is not None:
            limits.append(f"--max-failure-rate {self.max_failure_rate:g}")
        if self.max_failures is not None:
            limits.append(f"--max-failures {self.max_failures:,}")
        previous = (
            "no previous snapshot"
            if self.previous_rate is None
            else f"previous snapshot {self.previous_rate:.1%}"
        )
        return (
            f"failed {snap.failure_rate:.1%} of ids ({snap.failed:,} of {snap.valid_ids:,}: "
            f"{snap.failed_permanent:,} permanent, {snap.failed_transient:,} transient), over "
            f"{' and '.join(limits)}; {previous}; everything is written"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": round(self.snapshot.failure_rate, 6),
            "max_failure_rate": self.max_failure_rate,
            "max_failures": self.max_failures,
            "previous_rate": None if self.previous_rate is None else round(self.previous_rate, 6),
            "exceeded": self.exceeded,
        }


@dataclass(frozen=True, slots=True)
class RunReport:
    """One run.  ``stopped_by`` is the stop that ended it early (exit 3 or 4), if any."""

    run_id: str
    tool_version: str
    started_at: dt.datetime
    config: RunConfig
    input: InputSummary
    outcome: Outcome
    complete: bool = False
    calls_planned: int | None = None  # a dry run's answer
    requeued_failures: int = 0
    pending_at_start: int = 0
    stopped_by: StopRun | None = None
    interrupted: bool = False
    requests: RequestCounts = RequestCounts()
    rate_control: Mapping[str, Any] = field(default_factory=dict)
    snapshot: SnapshotCounts = SnapshotCounts()
    files: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    failures_file: str = ""  # relative to --out
    failures_rows: int = 0
    finished_at: dt.datetime | None = None
    duration_s: float = 0.0
    failure_check: FailureCheck | None = None  # judged once the snapshot is complete
    summary_file: str = ""  # the _runs/*.json this report was written to, relative to --out
    # A shard's run: the shards whose manifests it found when it finished, and whether it was
    # the one that put the snapshot together (wrote its manifest and _SUCCESS).
    shards_done: tuple[int, ...] = ()
    assembled: bool = False

    @property
    def exit_code(self) -> int:
        """What the command ends with: the stop's code, 130, 6 over a failure limit, else 0."""
        if self.stopped_by is not None:
            return self.stopped_by.exit_code
        if self.interrupted:
            return Interrupted.exit_code
        if self.failure_check is not None and self.failure_check.exceeded:
            return FailureThresholdExceeded.exit_code
        return 0

    @property
    def snapshot_date(self) -> dt.date:
        return self.config.snapshot_date

    @property
    def out(self) -> str:
        """Where the output went: the folder, or the remote OUT's URL."""
        return self.config.out

    def where(self, key: str) -> str:
        """A file of OUT (its key) as messages name it: its path, or its URL."""
        if self.config.out_url is None:
            return str(self.config.out_dir / key)
        return f"{self.config.out_url}/{key}" if key else self.config.out_url

    def to_json(self) -> dict[str, Any]:
        """The ``_runs/<start>-<run id>.json`` object (a dry run writes none)."""
        config = self.config
        head: dict[str, Any] = {
            "run_id": self.run_id,
            "tool_version": self.tool_version,
            "started_at": _seconds(self.started_at),
            "snapshot_date": config.snapshot_date.isoformat(),
            "out": config.out,
            "input": self.input.to_json(),
            "api": {"endpoint": config.endpoint_url, "sandbox": config.sandbox},
            "settings": {
                "concurrency": config.concurrency,
                "rate": config.rate,
                "max_attempts": config.max_attempts,
                "timeout": config.timeout,
                "max_calls": config.max_calls,
                "batch_rows": config.batch_rows,
            },
        }
        if config.shard is not None:
            head["shard"] = {"index": config.shard.index, "count": config.shard.count}
        if self.outcome is Outcome.DRY_RUN:
            return {
                **head,
                "outcome": str(self.outcome),
                "calls_planned": self.calls_planned,
                "complete": False,
            }
        return {
            **head,
            "requeued_failures": self.requeued_failures,
            "pending_at_start": self.pending_at_start,
            "outcome": str(self.outcome),
            "complete": self.complete,
            "stopped_by": _describe(self.stopped_by),
            "requests": dataclasses.asdict(self.requests),
            "rate_control": dict(self.rate_control),
            "snapshot": self.snapshot.to_json(),
            "files": {name: list(paths) for name, paths in self.files.items()},
            "failures_file": self.failures_file,
            "failures_rows": self.failures_rows,
            "finished_at": _seconds(self.finished_at),
            "duration_s": self.duration_s,
            "failure_check": None if self.failure_check is None else self.failure_check.to_json(),
            "exit_code": self.exit_code,
        } | self._shards_json()

    def _shards_json(self) -> dict[str, Any]:
        if self.config.shard is None or not self.complete:
            return {}
        return {"shards": {"done": list(self.shards_done), "assembled": self.assembled}}


def outcome_of(stopped_by: StopRun | None, *, interrupted: bool, complete: bool) -> Outcome:
    if stopped_by is not None:
        return Outcome(stopped_by.outcome)
    if interrupted:
        return Outcome.INTERRUPTED
    return Outcome.COMPLETED if complete else Outcome.INCOMPLETE


def _describe(error: StopRun | None) -> dict[str, Any] | None:
    if error is None:
        return None
    code = getattr(error, "code", None)
    return {"type": type(error).__name__, "code": code, "message": str(error)}


def _seconds(moment: dt.datetime | None) -> str | None:
    return None if moment is None else iso_utc(moment, "seconds")
