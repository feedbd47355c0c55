"""What analysts ask of an xhs-profiles folder, in polars: ``python examples/analysts.py OUT``.

Every query reads only complete snapshots, through their manifests (``OUT/_manifests``): a
partition folder can hold a file that is not part of its snapshot yet (a run in progress, or
the orphan of a killed run), so a plain glob could count a creator twice.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl


def snapshot_files(out: Path, table: str) -> list[str]:
    """The files of ``table`` that complete snapshots list, oldest snapshot first."""
    files: list[str] = []
    for manifest in sorted((out / "_manifests").glob("dt=*.json")):
        entries = json.loads(manifest.read_text("utf-8"))["tables"].get(table, [])
        files += [str(out / entry["path"]) for entry in entries]
    return files


def scan(out: Path, table: str) -> pl.LazyFrame:
    # hive_partitioning gives each row its snapshot date as the typed column ``dt``.
    return pl.scan_parquet(snapshot_files(out, table), hive_partitioning=True)


def latest_row_per_user(out: Path) -> pl.DataFrame:
    """Each creator's most recent profile, whichever snapshot it is in.

    Not the same set as the latest snapshot: a creator whose call failed last night (or whose
    account went away) is missing from it but keeps its last known row here, with its ``dt``.
    """
    return (
        scan(out, "profiles")
        .select("user_id", "dt", "nickname", "fans", "liked", "collected")
        .sort("dt")
        .group_by("user_id")
        .agg(pl.all().last())
        .sort("fans", "user_id", descending=[True, False])
        .collect()
    )


def growth(out: Path, days: int, tolerance_days: int = 1) -> pl.DataFrame:
    """Followers gained over ``days`` up to the latest snapshot, against the latest snapshot at
    least ``days`` back and at most ``tolerance_days`` before that (else null: a "7-day" growth
    never silently uses a 15-day-old baseline, as an ASOF join without a tolerance would)."""
    profiles = scan(out, "profiles").select("user_id", "dt", "fans").collect()
    latest = profiles["dt"].max()
    now = profiles.filter(pl.col("dt") == latest).with_columns(
        target=pl.col("dt") - pl.duration(days=days)
    )
    then = profiles.rename({"dt": "baseline_dt", "fans": "fans_then"}).sort("baseline_dt")
    joined = now.sort("target").join_asof(
        then,
        left_on="target",
        right_on="baseline_dt",
        by="user_id",
        strategy="backward",
        tolerance=f"{tolerance_days}d",
        check_sortedness=False,  # sorted by the join keys within each user_id, as asof needs
    )
    return (
        joined.with_columns(days=(pl.col("dt") - pl.col("baseline_dt")).dt.total_days())
        .with_columns(
            gained=pl.col("fans") - pl.col("fans_then"),
            per_day=(pl.col("fans") - pl.col("fans_then")) / pl.col("days"),
        )
        .select("user_id", "dt", "baseline_dt", "days", "fans", "fans_then", "gained", "per_day")
        .sort("gained", "user_id", descending=[True, False], nulls_last=True)
    )


def tier_counts(out: Path) -> pl.DataFrame:
    """Creators per tier in the latest snapshot's changes (tier bounds: the data dictionary)."""
    changes = scan(out, "profile_changes")
    latest = changes.select(pl.col("dt").max()).collect().item()
    return (
        changes.filter((pl.col("dt") == latest) & ~pl.col("disappeared"))
        .group_by("tier", "tier_label")
        .agg(creators=pl.len(), median_fans=pl.col("fans").median())
        .sort("median_fans")
        .collect()
    )


def flagged(out: Path, days: int = 7) -> pl.DataFrame:
    """Creators flagged in the last ``days`` days of snapshots, one row per flag and snapshot,
    with its reason (the rules and thresholds: the data dictionary's flag table)."""
    changes = scan(out, "profile_changes")
    latest = changes.select(pl.col("dt").max()).collect().item()
    return (
        changes.filter(
            (pl.col("dt") > pl.lit(latest) - pl.duration(days=days))
            & (pl.col("flags").list.len() > 0)
        )
        .select("dt", "user_id", "nickname", "flags", "flag_reasons")
        .explode("flags", "flag_reasons")
        .sort("dt", "user_id", "flags")
        .collect()
    )


def main(out: Path) -> None:
    pl.Config.set_tbl_rows(12)
    pl.Config.set_fmt_str_lengths(90)
    pl.Config.set_tbl_width_chars(140)
    for title, frame in (
        ("latest row per user", latest_row_per_user(out)),
        ("7-day growth (±1 day)", growth(out, 7)),
        ("30-day growth (±1 day)", growth(out, 30)),
        ("tiers", tier_counts(out)),
        ("flagged in the last 7 days", flagged(out)),
    ):
        print(f"## {title}: {frame.height} rows")
        print(frame.head(12))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "out"))
