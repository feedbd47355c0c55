"""A week of daily snapshots against the drift sandbox (what ``make demo`` runs): the changes
table shows each scripted event as it should, and the analysts' examples run on it, in polars
and in DuckDB with the same answers."""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import duckdb
import polars as pl
import pytest

from pipeline import runner
from pipeline.config import RunConfig, Secret
from pipeline.ids import open_id_file
from pipeline.sandbox import DriftPlan, Sandbox, drift_config_for
from tests.helpers import QUICK_START

REPO = Path(__file__).resolve().parents[1]
IDS_CSV = REPO / "data" / "sample_ids.csv"
START = dt.date(2026, 11, 1)
DAYS = [START + dt.timedelta(days=n) for n in range(8)]  # day 0 to day 7: a week of changes


def demo_ids() -> list[str]:
    return [row.user_id for row in open_id_file(IDS_CSV, None) if row.user_id]


@pytest.fixture(scope="module")
def week(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    for day in DAYS:
        with Sandbox(drift_config_for(day, demo_ids(), start=START)) as api:
            config = RunConfig(
                input_path=IDS_CSV, out_dir=out, token=Secret("sandbox"), base_url=api.base_url,
                snapshot_date=day, concurrency=8, **QUICK_START,
            )  # fmt: skip
            assert runner.run(config).complete
    return out


def event_id(kind: str, **params: Any) -> tuple[str, dt.date]:
    plan = DriftPlan.demo(demo_ids(), START)
    [event] = [
        e for e in plan.events if e.kind == kind and all(e.param(k) == v for k, v in params.items())
    ]
    return event.user_id, event.date


def change(out: Path, user_id: str, day: dt.date) -> dict[str, Any]:
    frame = pl.read_parquet(out / "profile_changes" / f"dt={day}" / "*.parquet")
    [row] = frame.filter(pl.col("user_id") == user_id).iter_rows(named=True)
    return row


def test_the_spike_is_flagged_against_the_creators_own_history(week: Path) -> None:
    uid, day = event_id("spike")
    row = change(week, uid, day)
    assert (row["fans_delta"], row["days"], row["baseline_dt"]) == (
        50_000,
        1,
        day - dt.timedelta(1),
    )
    assert "spike_vs_history" in row["flags"] and "round_jump" in row["flags"]
    reason = row["flag_reasons"][row["flags"].index("spike_vs_history")]
    assert reason.startswith("fans +50000 in 1 day, ") and "over 5 earlier changes" in reason


def test_the_rename_and_the_new_bio_show_old_and_new_values(week: Path) -> None:
    uid, day = event_id("rename")
    row = change(week, uid, day)
    assert row["changed_fields"] == ["nickname"]
    assert row["nickname_before"] is not None and row["nickname"] != row["nickname_before"]
    bio_id, bio_day = event_id("bio")
    bio = change(week, bio_id, bio_day)
    assert bio["changed_fields"] == ["description"] and bio["description_before"] is not None


def test_deleted_accounts_disappear_with_their_code_and_a_new_one_appears(week: Path) -> None:
    gone_404, day_404 = event_id("gone", code=404)
    assert (
        change(week, gone_404, day_404)["disappeared"],
        change(week, gone_404, day_404)["failure_code"],
    ) == (True, 404)
    gone_empty, day_empty = event_id("gone", code=0)  # code 0: data {}
    row = change(week, gone_empty, day_empty)
    assert (row["disappeared"], row["failure_code"]) == (True, 0)
    assert row["failure_message"].startswith("no profile in the answer")
    born, day_born = event_id("born")
    new = change(week, born, day_born)
    assert (new["appeared"], new["fans_before"], new["fans_delta"]) == (True, None, None)


@pytest.mark.parametrize(
    ("kind", "flag"),
    [
        ("purge", "purge"),
        ("round_jump", "round_jump"),
        ("follows_spike", "follows_spike"),
        ("notes_deleted", "notes_deleted"),
        ("fans_no_engagement", "fans_without_engagement"),
    ],
)
def test_each_scripted_event_raises_its_flag_on_its_day(week: Path, kind: str, flag: str) -> None:
    uid, day = event_id(kind)
    assert flag in change(week, uid, day)["flags"]
    assert flag not in change(week, uid, day - dt.timedelta(days=1))["flags"]


def test_creators_without_an_event_raise_no_flag(week: Path) -> None:
    scripted = {e.user_id for e in DriftPlan.demo(demo_ids(), START).events}
    frame = pl.read_parquet(week / "profile_changes" / "*" / "*.parquet")
    quiet = frame.filter(~pl.col("user_id").is_in(list(scripted)))
    assert quiet.height > 100
    assert quiet.filter(pl.col("flags").list.len() > 0)["user_id"].to_list() == []


# --- the examples ----------------------------------------------------------------------------


def load_examples() -> ModuleType:
    spec = importlib.util.spec_from_file_location("analysts", REPO / "examples" / "analysts.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["analysts"] = module
    spec.loader.exec_module(module)
    return module


def duckdb_answers(out: Path) -> list[pl.DataFrame]:
    con = duckdb.connect()
    con.execute("SET VARIABLE out = ?", [str(out)])
    answers = []
    for statement in (REPO / "examples" / "analysts.sql").read_text("utf-8").split(";\n"):
        code = "\n".join(line for line in statement.splitlines() if not line.startswith("--"))
        if not code.strip():
            continue
        result = con.sql(code)
        if result is not None and not code.lstrip().startswith("CREATE"):
            answers.append(result.pl())
    con.close()
    return answers


def test_the_polars_and_duckdb_examples_give_the_same_answers(week: Path) -> None:
    analysts = load_examples()
    polars_answers = [
        analysts.latest_row_per_user(week),
        analysts.growth(week, 7),
        analysts.growth(week, 30),
        analysts.tier_counts(week),
        analysts.flagged(week),
    ]
    for mine, theirs in zip(polars_answers, duckdb_answers(week), strict=True):
        assert mine.columns == theirs.columns
        assert mine.cast(theirs.schema).rows() == theirs.rows()


def test_latest_row_per_user_keeps_creators_missing_from_the_latest_snapshot(week: Path) -> None:
    latest = load_examples().latest_row_per_user(week)
    gone, _ = event_id("gone", code=404)
    [row] = latest.filter(pl.col("user_id") == gone).iter_rows(named=True)
    assert row["dt"] < DAYS[-1]  # its last known row, not in the latest snapshot
    last = pl.read_parquet(week / "profiles" / f"dt={DAYS[-1]}" / "*.parquet")
    assert latest.height > last.height


def test_growth_states_its_baseline_and_a_missing_one_is_null(week: Path) -> None:
    analysts = load_examples()
    seven = analysts.growth(week, 7)
    assert set(seven["baseline_dt"].drop_nulls()) == {DAYS[0]} and set(
        seven["days"].drop_nulls()
    ) == {7}
    spike, _ = event_id("spike")
    [row] = seven.filter(pl.col("user_id") == spike).iter_rows(named=True)
    assert row["gained"] >= 50_000
    assert analysts.growth(week, 30)["baseline_dt"].null_count() == analysts.growth(week, 30).height


def test_the_examples_script_prints_every_answer(
    week: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load_examples().main(week)
    printed = capsys.readouterr().out
    for title in ("latest row per user", "7-day growth", "30-day growth", "tiers", "flagged"):
        assert f"## {title}" in printed
