"""The records the HTML report is made of: plain, frozen, typed, free of polars.

``report_data`` fills them from an output folder, ``report_html`` renders them.  The limits of
the capped tables and the words for failure codes live here too, so the page can state them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Generic, TypeVar

from pipeline.schema import DEFAULT_TIERS

T = TypeVar("T")

# How many rows each capped table shows (the page says so when there are more).
TOP_GROWTH: Final = 50
TOP_FLAGGED: Final = 100
TOP_IDENTITY: Final = 100
TOP_DISAPPEARED: Final = 50
TOP_APPEARED: Final = 20
TOP_FAILURES: Final = 50
TOP_RUNS: Final = 30
TOP_SNAPSHOTS: Final = 30
# A description longer than this is cut in the identity table (its full text in a tooltip).
TEXT_CUT: Final = 80

# Tiers by followers, used only when the snapshot has no ``profile_changes`` rows to take
# ``tier`` from (a first snapshot): the same default bounds ``changes`` applies.
FALLBACK_TIERS: Final = DEFAULT_TIERS
TIER_ORDER: Final = tuple(tier for _, tier, _ in FALLBACK_TIERS)

# What a failures.csv code means, for the outcome table.
CODE_LABELS: Final = {
    -1: "no usable answer (timeouts, resets, bad bodies; retries used up)",
    0: "answered without a profile, or with another user's",
    301: "collection failed (retries used up)",
    400: "not an id, or invalid parameters",
    404: "no such user (deleted or banned)",
    500: "server error (retries used up)",
    503: "service unavailable (retries used up)",
}


class ChangesState(StrEnum):
    OK = "ok"  # profile_changes has rows for the latest snapshot
    SINGLE = "single"  # only one complete snapshot: nothing to compare with
    MISSING = "missing"  # the latest manifest lists no profile_changes table
    EMPTY = "empty"  # listed, but without rows although an earlier snapshot exists


@dataclass(frozen=True, slots=True)
class Capped(Generic[T]):
    """The first rows of a longer list, and how long it was."""

    rows: tuple[T, ...]
    total: int

    @property
    def cut(self) -> bool:
        return self.total > len(self.rows)


@dataclass(frozen=True, slots=True)
class Creator:
    user_id: str
    nickname: str | None
    link: str


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    date: dt.date
    completed_at: str | None
    profiles: int
    failures: int


@dataclass(frozen=True, slots=True)
class RunRow:
    started_at: str
    run_id: str
    snapshot_date: str
    outcome: str
    exit_code: int | None
    calls: int
    fetched: int
    failed: int
    retried: int
    rate_limited: int
    duration_s: float | None


@dataclass(frozen=True, slots=True)
class CodeCount:
    code: int | None  # None: the profiles written
    label: str
    count: int


@dataclass(frozen=True, slots=True)
class Bin:
    low: int  # inclusive
    high: int | None  # exclusive; None for the bin of zero followers
    count: int


@dataclass(frozen=True, slots=True)
class TierCount:
    tier: str | None
    label: str | None
    count: int


@dataclass(frozen=True, slots=True)
class GrowthRow:
    creator: Creator
    tier_label: str | None
    fans_before: int | None
    fans: int | None
    fans_delta: int
    fans_per_day: float | None
    fans_pct: float | None
    likes_saves_delta: int | None
    approximate: bool


@dataclass(frozen=True, slots=True)
class FlagRow:
    creator: Creator
    flags: tuple[tuple[str, str], ...]  # (flag, reason)
    fans_before: int | None
    fans: int | None
    fans_delta: int | None


@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str
    before: str
    after: str


@dataclass(frozen=True, slots=True)
class IdentityRow:
    creator: Creator
    changes: tuple[FieldChange, ...]


@dataclass(frozen=True, slots=True)
class PresenceRow:
    creator: Creator
    fans: int | None  # before for a disappeared user, now for an appeared one
    failure_code: int | None
    failure_message: str | None


@dataclass(frozen=True, slots=True)
class FailureRow:
    user_id: str
    code: int | None
    message: str
    attempts: str
    last_attempt_at: str


@dataclass(frozen=True, slots=True)
class Changes:
    state: ChangesState
    baseline: dt.date | None
    days: int | None
    rows: int
    growth: Capped[GrowthRow]
    flagged: Capped[FlagRow]
    identity: Capped[IdentityRow]
    disappeared: Capped[PresenceRow]
    appeared: Capped[PresenceRow]


@dataclass(frozen=True, slots=True)
class ReportData:
    latest: dt.date
    completed_at: str | None
    previous: dt.date | None
    snapshots: Capped[SnapshotRow]  # newest first
    unfinished: tuple[RunRow, ...]  # the last run of each later date without a manifest
    runs: Capped[RunRow]  # newest first
    unreadable_runs: int
    completing_run: RunRow | None  # the run summary in the latest manifest
    outcomes: tuple[CodeCount, ...]
    profiles: int
    fans_known: int
    fans_median: int | None
    fans_max: int | None
    histogram: tuple[Bin, ...]
    tiers: tuple[TierCount, ...]
    tiers_from_changes: bool
    changes: Changes
    failures: Capped[FailureRow]


def capped(rows: Sequence[T], limit: int, total: int | None = None) -> Capped[T]:
    return Capped(tuple(rows[:limit]), len(rows) if total is None else total)
