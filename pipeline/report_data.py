"""What the HTML report shows, read from an output folder into plain frozen records.

Every table is read through the manifests (``OUT/_manifests/dt=D.json``): the files a complete
snapshot lists, never a glob of its partition folder, where a crash's orphan part may sit until
the next run removes it.  polars scans those files lazily and reads only the columns the page
needs.  Everything returned is sorted with a tie-break (the user id last), and nothing depends
on the clock, so the same folder always gives the same records, hence the same page.

Sections and where they come from:

- freshness: the latest manifest (its date and ``created_at``), every manifest's row counts, and
  the run summaries of later dates that have no manifest (a snapshot still being fetched);
- runs: ``OUT/_runs/*.json``;
- outcomes by code: the latest snapshot's profile count and its ``failures.csv``;
- followers and tiers: the latest ``profiles`` (and ``profile_changes``' ``tier`` when present);
- growth, flags, identity changes, appeared/disappeared: the latest ``profile_changes``, with
  the new values of changed fields and the profile links taken from ``profiles``
  (``report_tables``, which also holds the manifest-following scan);
- failures: the first rows of the latest ``failures.csv``, in file order.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from pipeline import sink
from pipeline.errors import UsageError
from pipeline.report_records import (
    CODE_LABELS,
    FALLBACK_TIERS,
    TIER_ORDER,
    TOP_FAILURES,
    TOP_RUNS,
    TOP_SNAPSHOTS,
    Bin,
    Capped,
    ChangesState,
    CodeCount,
    FailureRow,
    ReportData,
    RunRow,
    SnapshotRow,
    TierCount,
    capped,
)
from pipeline.report_tables import PROFILE_COLUMNS, manifest_files, safe_path, scan
from pipeline.report_tables import changes as read_changes
from pipeline.schema import FAILURE_COLUMNS, PROFILE_CHANGES, PROFILES


def load(out_dir: Path) -> ReportData:
    """Read what the report shows from ``out_dir``; a ``UsageError`` when there is nothing."""
    if not out_dir.exists():
        raise UsageError(f"{out_dir}: no such folder")
    if not out_dir.is_dir():
        raise UsageError(f"{out_dir} is not a folder")
    manifests = {
        date: manifest
        for date in sink.manifest_dates(out_dir)
        if (manifest := sink.read_manifest(out_dir, date)) is not None
    }
    if not manifests:
        raise UsageError(
            f"{out_dir} has no complete snapshot (no readable _manifests/dt=*.json): "
            "run `xhs-profiles run ... --out` into it first"
        )
    try:
        return _load(out_dir, manifests)
    except (OSError, pl.exceptions.PolarsError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"cannot read the snapshots of {out_dir} ({first_line}): a file its manifest lists "
            "is missing or damaged; if a run is rewriting that snapshot, wait for it and retry"
        ) from exc


def _load(out_dir: Path, manifests: Mapping[dt.date, dict[str, Any]]) -> ReportData:
    dates = sorted(manifests)
    latest = dates[-1]
    previous = dates[-2] if len(dates) > 1 else None
    manifest = manifests[latest]
    runs, unreadable = _runs(out_dir)
    profiles = scan(out_dir, manifest_files(manifest, PROFILES.name), PROFILES, PROFILE_COLUMNS)
    profiles_now = profiles.collect()
    changes_files = manifest_files(manifest, PROFILE_CHANGES.name)
    changes = read_changes(out_dir, manifests, latest, previous, changes_files, profiles_now)
    fans = profiles_now.get_column("fans").drop_nulls()
    failures_all, failures_first = _failures(out_dir, manifest)
    return ReportData(
        latest=latest,
        completed_at=_text(manifest.get("created_at")),
        previous=previous,
        snapshots=capped([_snapshot_row(d, manifests[d]) for d in reversed(dates)], TOP_SNAPSHOTS),
        unfinished=_unfinished(runs, latest),
        runs=capped(list(reversed(runs)), TOP_RUNS),
        unreadable_runs=unreadable,
        completing_run=_run_row(manifest.get("summary"), ""),
        outcomes=_outcomes(profiles_now.height, failures_all),
        profiles=profiles_now.height,
        fans_known=fans.len(),
        fans_median=_int_or_none(fans.median()),
        fans_max=_int_or_none(fans.max()),
        histogram=_histogram(fans),
        tiers=_tiers(profiles_now, changes_files, out_dir, changes.state),
        tiers_from_changes=changes.state is ChangesState.OK,
        changes=changes,
        failures=failures_first,
    )


# ------------------------------------------------------------------------ manifests and runs


def _snapshot_row(date: dt.date, manifest: Mapping[str, Any]) -> SnapshotRow:
    rows = manifest.get("rows")
    failures = manifest.get("failures")
    return SnapshotRow(
        date=date,
        completed_at=_text(manifest.get("created_at")),
        profiles=_int(rows.get(PROFILES.name) if isinstance(rows, dict) else None),
        failures=_int(failures.get("rows") if isinstance(failures, dict) else None),
    )


def _runs(out_dir: Path) -> tuple[list[RunRow], int]:
    """Every readable run summary, oldest first; and how many could not be read."""
    rows: list[RunRow] = []
    unreadable = 0
    for path in sorted((out_dir / sink.RUNS_DIR).glob("*.json")):
        try:
            payload = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            unreadable += 1
            continue
        row = _run_row(payload, path.stem)
        if row is None:
            unreadable += 1
        else:
            rows.append(row)
    rows.sort(key=lambda r: (r.started_at, r.run_id))
    return rows, unreadable


def _run_row(payload: object, fallback_id: str) -> RunRow | None:
    if not isinstance(payload, dict) or not isinstance(payload.get("started_at"), str):
        return None
    requests = payload.get("requests")
    req = requests if isinstance(requests, dict) else {}
    duration = payload.get("duration_s")
    exit_code = payload.get("exit_code")
    return RunRow(
        started_at=payload["started_at"],
        run_id=_text(payload.get("run_id")) or fallback_id,
        snapshot_date=_text(payload.get("snapshot_date")) or "",
        outcome=_text(payload.get("outcome")) or "unknown",
        exit_code=exit_code if isinstance(exit_code, int) else None,
        calls=_int(req.get("calls")),
        fetched=_int(req.get("fetched")),
        failed=_int(req.get("failed")),
        retried=_int(req.get("retried")),
        rate_limited=_int(req.get("rate_limited")),
        duration_s=float(duration) if isinstance(duration, int | float) else None,
    )


def _unfinished(runs: Sequence[RunRow], latest: dt.date) -> tuple[RunRow, ...]:
    """The last run of each date after ``latest``: those snapshots have no manifest yet."""
    last: dict[str, RunRow] = {}
    for run in runs:  # oldest first: the last one wins
        if run.snapshot_date > latest.isoformat():
            last[run.snapshot_date] = run
    return tuple(last[date] for date in sorted(last))


# ------------------------------------------------------------------------ profiles


def _histogram(fans: pl.Series) -> tuple[Bin, ...]:
    """Counts in 1-2-5 bins (three per decade, even on a log axis), after a bin for zero."""
    if fans.len() == 0:
        return ()
    top = max(_int_or_none(fans.max()) or 0, 1)
    edges = [1]
    while edges[-1] <= top:
        edges.append(_next_edge(edges[-1]))
    counts = dict.fromkeys(range(-1, len(edges) - 1), 0)
    index = pl.sum_horizontal([(pl.col("fans") >= e).cast(pl.Int32) for e in edges]) - 1
    grouped = (
        pl.DataFrame({"fans": fans})
        .with_columns(index.alias("bin"))
        .group_by("bin")
        .len()
        .sort("bin")
    )
    for bin_index, count in grouped.iter_rows():
        counts[int(bin_index)] = int(count)
    spans = [Bin(edges[i], edges[i + 1], counts[i]) for i in range(len(edges) - 1)]
    # The axis starts at the decade of the first creator with a follower: 1 … 10 … 100 …
    first = next((b.low for b in spans if b.count), 1)
    decade = 10 ** int(math.log10(first))
    spans = [b for b in spans if b.low >= decade]
    return ((Bin(0, None, counts[-1]),) if counts[-1] else ()) + tuple(spans)


def _next_edge(edge: int) -> int:
    """1 → 2 → 5 → 10 → 20 → 50 → ..."""
    lead = edge // 10 ** int(math.log10(edge))
    return edge * 5 // 2 if lead == 2 else edge * 2


def _tiers(
    profiles_now: pl.DataFrame,
    changes_files: Sequence[str] | None,
    out_dir: Path,
    state: ChangesState,
) -> tuple[TierCount, ...]:
    if state is ChangesState.OK:
        counts = (
            scan(out_dir, changes_files, PROFILE_CHANGES, ("disappeared", "tier", "tier_label"))
            .filter(~pl.col("disappeared").fill_null(False))
            .group_by("tier", "tier_label")
            .len()
            .collect()
        )
        rows = [TierCount(t, label, int(n)) for t, label, n in counts.iter_rows()]
        seen = {row.tier for row in rows}
        rows += [TierCount(t, label, 0) for _, t, label in FALLBACK_TIERS if t not in seen]
    else:
        fans = profiles_now.get_column("fans")
        rows = []
        for i, (low, tier, label) in enumerate(FALLBACK_TIERS):
            high = FALLBACK_TIERS[i + 1][0] if i + 1 < len(FALLBACK_TIERS) else None
            inside = fans >= low if high is None else (fans >= low) & (fans < high)
            rows.append(TierCount(tier, label, int(inside.sum())))
        unknown = int(fans.is_null().sum())
        if unknown:
            rows.append(TierCount(None, None, unknown))

    def order(row: TierCount) -> tuple[int, str, str]:
        rank = TIER_ORDER.index(row.tier) if row.tier in TIER_ORDER else len(TIER_ORDER)
        return rank + (row.tier is None), row.tier or "", row.label or ""

    return tuple(sorted(rows, key=order))


# ------------------------------------------------------------------------ failures


def _failures(
    out_dir: Path, manifest: Mapping[str, Any]
) -> tuple[pl.DataFrame, Capped[FailureRow]]:
    """All of the snapshot's failures (user_id, code), and its first rows as shown."""
    info = manifest.get("failures")
    path = info.get("path") if isinstance(info, dict) else None
    empty = pl.DataFrame(schema={"user_id": pl.String(), "code": pl.Int64()})
    if not isinstance(path, str) or not (out_dir / safe_path(path)).is_file():
        return empty, Capped((), 0)
    frame = pl.read_csv(
        out_dir / safe_path(path),
        schema=dict.fromkeys(FAILURE_COLUMNS, pl.String()),
        has_header=True,
    ).with_columns(pl.col("code").str.strip_chars().cast(pl.Int64, strict=False))
    rows = [
        FailureRow(
            user_id=r["user_id"] or "",
            code=r["code"],
            message=r["message"] or "",
            attempts=r["attempts"] or "",
            last_attempt_at=r["last_attempt_at"] or "",
        )
        for r in frame.head(TOP_FAILURES).iter_rows(named=True)
    ]
    return frame.select("user_id", "code"), Capped(tuple(rows), frame.height)


def _outcomes(profiles: int, failures: pl.DataFrame) -> tuple[CodeCount, ...]:
    counts = failures.group_by("code").len().rows()
    rows = [
        CodeCount(code, _code_label(code), int(n))
        for code, n in sorted(counts, key=lambda cn: (-cn[1], cn[0] is None, cn[0] or 0))
    ]
    return (CodeCount(None, "fetched: a row in the profiles table", profiles), *rows)


def _code_label(code: int | None) -> str:
    if code is None:
        return "no code recorded"
    return CODE_LABELS.get(code, "other API code (not retried)")


# ------------------------------------------------------------------------ small helpers


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _int_or_none(value: object) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return int(value)
    return None
