"""Shared test helpers: ids, input files, reading a finished output folder back."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import polars as pl

from pipeline.schema import TABLES

# Where the rate controller's slow start begins in tests of short runs (RunConfig.start_rate):
# from the real 16/s a 50-id run spends most of a second climbing, which made the fast suite 70 s.
# The start itself is tested on a simulated clock (test_ratelimit) and measured by `make bench`.
QUICK_START: Final = {"start_rate": 1000.0}


def make_id(n: int, salt: str = "") -> str:
    """A valid id (24 hex), the same for the same ``n`` and ``salt``.

    The separator keeps salts apart: without it ``make_id(10, "7-1")`` and ``make_id(0, "7-11")``
    would hash the same text, and two datasets sharing one sandbox would share ids.
    """
    return hashlib.sha256(f"{salt}:{n}".encode()).hexdigest()[:24]


def write_ids(path: Path, ids: Iterable[str], header: str = "user_id") -> Path:
    path.write_text(header + "\n" + "".join(f"{i}\n" for i in ids), encoding="utf-8")
    return path


def read_table(out: Path, table: str) -> pl.DataFrame:
    return pl.read_parquet(out / table / "*" / "*.parquet", hive_partitioning=True)


def read_failures(out: Path, snapshot: str) -> list[dict[str, str]]:
    path = out / "failures" / f"dt={snapshot}" / "failures.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def table_names() -> list[str]:
    return [t.name for t in TABLES]
