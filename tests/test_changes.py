"""pipeline.changes: two snapshots → profile_changes, explainable flags, stated baselines."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from click.testing import CliRunner

from pipeline import changes, runner, sink
from pipeline.changes import SnapshotFiles, compute
from pipeline.cli import cli
from pipeline.config import RunConfig, Secret
from pipeline.flatten import flatten
from pipeline.records import Failure, FetchedProfile
from pipeline.schema import PROFILE_CHANGES
from tests.helpers import QUICK_START, make_id, write_ids

D1, D2 = dt.date(2026, 11, 20), dt.date(2026, 11, 27)  # a week apart: per-day = delta / 7
FETCHED_AT = dt.datetime(2026, 11, 27, 3, 0, tzinfo=dt.UTC)


def uid(name: str) -> str:
    return make_id(0, name)


def body(
    *,
    fans: int = 20_000,
    follows: int = 300,
    liked: int = 50_000,
    collected: int = 10_000,
    notes: int = 100,
    nickname: str = "小顾小小家",
    desc: str = "家居博主",
    level: int = 3,
    tags: tuple[str, ...] = ("家居博主",),
    fans_text: str | None = None,
) -> dict[str, Any]:
    return {
        "nickname": nickname,
        "red_id": "guting1008",
        "desc": desc,
        "ip_location": "广东",
        "level": {"number": level},
        "red_official_verified": False,
        "fans": fans,
        "follows": follows,
        "liked": liked,
        "collected": collected,
        "note_num_stat": {"posted": notes, "liked": liked, "collected": collected},
        "tags": [{"tag_type": "profession", "name": name} for name in tags],
        "interactions": [
            {"type": "fans", "name": "粉丝", "count": fans_text or fans},
            {"type": "follows", "name": "关注", "count": follows},
        ],
    }


def snapshot(
    root: Path,
    day: dt.date,
    bodies: dict[str, dict[str, Any]],
    failures: dict[str, int] | None = None,
) -> SnapshotFiles:
    """Write one snapshot's three tables (as the runner would) and its failures.csv."""
    failures = failures or {}
    batch = [
        FetchedProfile(user, orjson.dumps({"userid": user, **data}), None, FETCHED_AT)
        for user, data in bodies.items()
    ]
    parts = {t.name: sink.write_part(root, t, day, f) for t, f in flatten(batch).by_table()}
    sink.write_failures(
        root, day, [Failure(u, code, f"code {code}", 1, FETCHED_AT) for u, code in failures.items()]
    )
    return SnapshotFiles(
        day,
        profiles=(root / parts["profiles"].path,),
        tags=(root / parts["profile_tags"].path,),
        interactions=(root / parts["profile_interactions"].path,),
        failures=sink.failures_path(root, day),
    )


def rows_by_user(frame: pl.DataFrame) -> dict[str, dict[str, Any]]:
    return {row["user_id"]: row for row in frame.iter_rows(named=True)}


@pytest.fixture
def week(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """A week between two snapshots with one creator per kind of change."""
    before = {
        uid("steady"): body(),
        uid("spike"): body(fans=8_000),
        uid("purge"): body(fans=100_000),
        uid("rename"): body(),
        uid("notes"): body(notes=40),
        uid("gone"): body(),
        uid("round"): body(fans=30_000),
        uid("follows"): body(),
        uid("hollow"): body(fans=5_000),
        uid("display"): body(fans=12_000),
        uid("zero"): body(fans=0, liked=0, collected=0, notes=0),
    }
    after = {
        uid("steady"): body(fans=20_700, liked=50_700),
        uid("spike"): body(fans=58_000, liked=51_000),
        uid("purge"): body(fans=69_999),
        uid("rename"): body(nickname="顾小家", desc="新简介", tags=("家居博主", "母婴博主")),
        uid("notes"): body(notes=35),
        uid("round"): body(fans=40_000, liked=52_000),
        uid("follows"): body(follows=2_500),
        uid("hollow"): body(fans=25_000),
        uid("display"): body(fans=13_000, fans_text="1.3万"),
        uid("zero"): body(fans=10, liked=5, collected=0, notes=1),
        uid("new"): body(fans=1_500),
    }
    then = snapshot(tmp_path, D1, before)
    now = snapshot(tmp_path, D2, after, failures={uid("gone"): 404})
    return rows_by_user(compute(now, then))


def test_every_row_states_its_baseline_and_days_and_the_frame_has_the_declared_schema(
    tmp_path: Path,
) -> None:
    then = snapshot(tmp_path, D1, {uid("a"): body()})
    now = snapshot(tmp_path, D2, {uid("a"): body(fans=20_700)})
    frame = compute(now, then)
    assert frame.schema == PROFILE_CHANGES.schema
    [row] = frame.iter_rows(named=True)
    assert (row["baseline_dt"], row["days"]) == (D1, 7)
    assert (row["fans"], row["fans_before"], row["fans_delta"]) == (20_700, 20_000, 700)
    assert (row["fans_per_day"], row["fans_pct"]) == (100.0, pytest.approx(3.5))
    assert (row["likes_saves"], row["likes_saves_before"]) == (60_000, 60_000)
    assert row["flags"] == [] and row["flag_reasons"] == [] and row["changed_fields"] == []


def test_a_steady_creator_has_its_counters_tier_and_ratios_and_no_flag(week) -> None:
    row = week[uid("steady")]
    assert (row["liked_delta"], row["likes_saves_delta"], row["likes_saves_per_day"]) == (
        700,
        700,
        100.0,
    )
    assert (row["tier"], row["tier_label"]) == ("micro", "初级达人")
    assert row["likes_saves_per_follower"] == pytest.approx(60_700 / 20_700)
    assert row["likes_saves_per_note"] == pytest.approx(607.0)
    assert (row["appeared"], row["disappeared"], row["approximate"]) == (False, False, False)
    assert row["flags"] == []


def test_a_fifty_thousand_jump_is_flagged_with_its_reason(week) -> None:
    row = week[uid("spike")]
    assert row["fans_delta"] == 50_000
    assert row["flags"] == ["fans_jump", "round_jump"]
    assert row["flag_reasons"] == [
        "fans +50000 in 7 days, from 8000 (625.0%)",
        "fans +50000 exactly: a round number",
    ]
    assert row["tier"] == "mid"


def test_a_purge_a_follows_spike_deleted_notes_and_hollow_growth_are_flagged(week) -> None:
    assert week[uid("purge")]["flags"] == ["purge"]
    assert week[uid("purge")]["flag_reasons"] == ["fans -30001 (-30.0%)"]
    assert week[uid("follows")]["flags"] == ["follows_spike"]
    assert week[uid("follows")]["flag_reasons"] == ["follows +2200 in 7 days"]
    assert week[uid("notes")]["flags"] == ["notes_deleted"]
    assert week[uid("notes")]["flag_reasons"] == ["notes_posted -5: notes deleted or hidden"]
    assert week[uid("hollow")]["flags"] == ["fans_jump", "round_jump", "fans_without_engagement"]
    assert week[uid("hollow")]["flag_reasons"][2] == "fans +20000 while likes + saves changed by +0"
    assert week[uid("round")]["flags"] == ["round_jump"]


def test_a_rename_shows_both_names_and_the_changed_fields(week) -> None:
    row = week[uid("rename")]
    assert (row["nickname"], row["nickname_before"]) == ("顾小家", "小顾小小家")
    assert row["changed_fields"] == ["nickname", "description", "tags"]
    assert (row["description_before"], row["tags_before"]) == ("家居博主", ["家居博主"])
    assert (row["red_id_before"], row["level_before"], row["verified_before"]) == (None, None, None)


def test_appeared_and_disappeared_users_carry_what_is_known(week) -> None:
    new, gone = week[uid("new")], week[uid("gone")]
    assert (new["appeared"], new["disappeared"], new["fans"], new["fans_before"]) == (
        True,
        False,
        1_500,
        None,
    )
    assert new["fans_delta"] is None and new["tier"] == "nano"
    assert (gone["disappeared"], gone["failure_code"], gone["failure_message"]) == (
        True,
        404,
        "code 404",
    )
    assert (gone["fans"], gone["fans_before"], gone["nickname"]) == (None, 20_000, "小顾小小家")
    assert week[uid("steady")]["failure_code"] is None


def test_a_display_count_makes_the_row_approximate(week) -> None:
    assert week[uid("display")]["approximate"] is True
    assert week[uid("steady")]["approximate"] is False


def test_a_zero_baseline_gives_a_null_percentage_not_a_division_error(week) -> None:
    row = week[uid("zero")]
    assert (row["fans_delta"], row["fans_pct"]) == (10, None)
    assert (row["tier"], row["tier_label"], row["likes_saves_per_note"]) == (
        "emerging",
        "素人",
        5.0,
    )


def test_a_spike_against_the_creators_own_history_is_flagged_once_it_has_one(
    tmp_path: Path,
) -> None:
    user = uid("history")
    days = [D1 + dt.timedelta(days=i) for i in range(7)]
    fans = [10_000, 10_100, 10_190, 10_300, 10_400, 10_490, 12_500]  # +2,010 on the last day
    files = [
        snapshot(tmp_path / "d", d, {user: body(fans=n, liked=3 * n)})
        for d, n in zip(days, fans, strict=True)
    ]
    history: list[Path] = []
    for i in range(1, 7):
        frame = compute(files[i], files[i - 1], history)
        path = tmp_path / "hist" / f"{i}.parquet"
        path.parent.mkdir(exist_ok=True)
        frame.write_parquet(path)
        history.append(path)
    [last] = pl.read_parquet(history[-1]).iter_rows(named=True)
    assert last["flags"] == ["spike_vs_history"]
    assert last["flag_reasons"] == [
        "fans +2010 in 1 day, 128.8× the creator's usual spread above its median daily change "
        "(100.0/day over 5 earlier changes)"
    ]
    [early] = pl.read_parquet(history[2]).iter_rows(named=True)
    assert early["flags"] == []  # 2 earlier changes: too few to call anything unusual


def test_the_first_snapshot_has_an_empty_typed_changes_frame(tmp_path: Path) -> None:
    only = snapshot(tmp_path, D1, {uid("a"): body()})
    frame = compute(only, None)
    assert frame.height == 0 and frame.schema == PROFILE_CHANGES.schema


def test_a_baseline_after_the_snapshot_is_refused(tmp_path: Path) -> None:
    first = snapshot(tmp_path, D1, {uid("a"): body()})
    second = snapshot(tmp_path, D2, {uid("a"): body()})
    with pytest.raises(ValueError, match="not before"):
        compute(first, second)


@pytest.mark.parametrize(
    ("text", "tier"),
    [("100,200,300,400,500", "mega"), ("1000,10000,50000,500000,1000000", "micro")],
)
def test_tier_bounds_are_configurable(
    week_files: tuple[SnapshotFiles, SnapshotFiles], text: str, tier: str
) -> None:
    now, then = week_files
    [row] = compute(now, then, tiers=changes.parse_tier_bounds(text)).iter_rows(named=True)
    assert row["tier"] == tier


@pytest.fixture
def week_files(tmp_path: Path) -> tuple[SnapshotFiles, SnapshotFiles]:
    return snapshot(tmp_path, D2, {uid("a"): body()}), snapshot(tmp_path, D1, {uid("a"): body()})


@pytest.mark.parametrize("text", ["1,2", "5,4,3,2,1", "a,b,c,d,e", "0,1,2,3,4"])
def test_bad_tier_bounds_are_a_one_line_usage_error(text: str) -> None:
    result = CliRunner().invoke(cli, ["changes", "/nonexistent", "--tier-bounds", text])
    assert result.exit_code == 2
    assert result.stderr == (
        "xhs-profiles: --tier-bounds takes 5 increasing follower counts (where nano, micro, mid, "
        f"macro, mega start), got {text!r}\n"
    )


# --- written by the runner, rebuilt by the command ------------------------------------------


def run_day(api: Any, csv_path: Path, out: Path, day: dt.date) -> None:
    config = RunConfig(
        input_path=csv_path, out_dir=out, token=Secret("sandbox"), base_url=api.base_url,
        snapshot_date=day, concurrency=4, **QUICK_START,
    )  # fmt: skip
    assert runner.run(config).complete


def test_every_completed_snapshot_gets_a_changes_file_listed_in_its_manifest(
    sandbox, tmp_path: Path
) -> None:
    api = sandbox()
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(i, "runs") for i in range(10)])
    out = tmp_path / "out"
    run_day(api, csv_path, out, D1)
    run_day(api, csv_path, out, D2)
    for day, rows in ((D1, 0), (D2, 10)):
        manifest = sink.read_manifest(out, day)
        assert manifest is not None
        [entry] = manifest["tables"]["profile_changes"]
        assert entry["rows"] == rows
        frame = pl.read_parquet(out / entry["path"])
        assert frame.schema == PROFILE_CHANGES.schema and frame.height == rows
        assert (out / "profile_changes" / f"dt={day}" / "_SUCCESS").exists()
    assert set(pl.read_parquet(out / entry["path"])["baseline_dt"]) == {D1}


def test_the_changes_command_rebuilds_the_same_rows_and_swaps_the_file_in_the_manifest(
    sandbox, tmp_path: Path
) -> None:
    api = sandbox()
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(i, "rebuild") for i in range(10)])
    out = tmp_path / "out"
    run_day(api, csv_path, out, D1)
    run_day(api, csv_path, out, D2)
    before = sink.read_manifest(out, D2)
    assert before is not None
    [old] = before["tables"]["profile_changes"]
    first = pl.read_parquet(out / old["path"])
    result = CliRunner().invoke(cli, ["changes", str(out)])
    assert result.exit_code == 0, result.output
    after = sink.read_manifest(out, D2)
    assert after is not None
    [new] = after["tables"]["profile_changes"]
    assert result.stdout == (
        f"profile_changes {D2} against {D1} (7 days): 10 rows, 0 flagged -> {out / new['path']}\n"
    )
    assert new["path"] != old["path"] and not (out / old["path"]).exists()
    assert pl.read_parquet(out / new["path"]).equals(first)
    assert after["summary"] == before["summary"]
    assert {k: v for k, v in after["tables"].items() if k != "profile_changes"} == {
        k: v for k, v in before["tables"].items() if k != "profile_changes"
    }


def test_the_changes_command_refuses_what_it_cannot_compare(sandbox, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    result = CliRunner().invoke(cli, ["changes", str(empty)])
    assert (result.exit_code, result.stderr) == (
        2,
        f"xhs-profiles: no complete snapshot in {empty}: run xhs-profiles run first\n",
    )
    api = sandbox()
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(i, "refuse") for i in range(3)])
    out = tmp_path / "out"
    run_day(api, csv_path, out, D1)
    late = CliRunner().invoke(cli, ["changes", str(out), "--to", "2026-12-01"])
    assert (late.exit_code, late.stderr) == (
        2,
        f"xhs-profiles: snapshot 2026-12-01 in {out} is not complete (no manifest)\n",
    )
    backwards = CliRunner().invoke(cli, ["changes", str(out), "--from", "2026-11-21"])
    assert (backwards.exit_code, backwards.stderr) == (
        2,
        "xhs-profiles: --from 2026-11-21 must be before --to 2026-11-20\n",
    )
    bad = CliRunner().invoke(cli, ["changes", str(out), "--to", "20/11/2026"])
    assert bad.stderr == "xhs-profiles: --to must be a date as YYYY-MM-DD, got '20/11/2026'\n"
