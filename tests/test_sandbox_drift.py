"""Drift: sandbox profiles change with the date, the same way in every process.

Profiles are read from ``DriftModel`` directly (what the server serves) and over HTTP from a
running sandbox; every figure is exact, since each is a function of (seed, id, date, plan).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import polars as pl
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cli import Seams, cli
from pipeline.sandbox import (
    EVENT_KINDS,
    DriftEvent,
    DriftModel,
    DriftPlan,
    Growth,
    Sandbox,
    SandboxConfig,
    SandboxOptionError,
    build_profile,
    drift_config_for,
    growth,
)
from pipeline.sandbox.profiles import profile_json
from tests.helpers import QUICK_START, make_id, read_failures, write_ids

V4 = "/api/xiaohongshu/get-user/v4"
START = date(2026, 12, 1)
WEEK = [START + timedelta(days=d) for d in range(7)]
IDS = [make_id(i, "drift") for i in range(60)]
SEED_SAMPLE = "5a901362e8ac2b36c99bce33"
SandboxFactory = Callable[..., Sandbox]
HTTP = httpx.Client(timeout=5.0)
NO_EVENTS = DriftModel(DriftPlan(START))


def day(n: int) -> date:
    return START + timedelta(days=n)


def get(box: Sandbox, user_id: str) -> httpx.Response:
    return HTTP.get(box.base_url + V4, params={"token": "sandbox", "userId": user_id})


def counters(data: dict[str, Any]) -> tuple[int, int, int, int, int]:
    return data["fans"], data["follows"], data["liked"], data["collected"], data["ndiscovery"]


def assert_facts(data: dict[str, Any]) -> None:
    """What the sandbox promises of every profile, on every date."""
    counts = {entry["type"]: entry["count"] for entry in data["interactions"]}
    assert counts == {
        "follows": data["follows"],
        "fans": data["fans"],
        "interaction": data["liked"] + data["collected"],
    }
    assert data["note_num_stat"] == {
        "posted": data["ndiscovery"],
        "liked": data["liked"],
        "collected": data["collected"],
    }
    for value in (*counters(data), *counts.values()):
        assert type(value) is int and value >= 0
    assert data["user_desc_info"]["desc"] == data["desc"] == data["share_info"]["content"]
    assert data["share_info"]["title"] == data["nickname"]


# --- determinism -------------------------------------------------------------------------------


def test_day_0_and_the_days_before_it_answer_the_plain_profile() -> None:
    model = DriftModel(DriftPlan.demo(IDS, START))
    for uid in IDS:
        assert model.profile_json(uid, 0) == profile_json(uid, 0)
        assert model.profile(uid, START - timedelta(days=30)) == build_profile(uid)


def test_the_same_id_date_and_seed_give_the_same_bytes_and_others_differ() -> None:
    first = DriftModel(DriftPlan.demo(IDS, START, 3), seed=3)
    again = DriftModel(DriftPlan.demo(IDS, START, 3), seed=3)
    assert [first.profile_json(u, 5) for u in IDS] == [again.profile_json(u, 5) for u in IDS]
    other_seed = DriftModel(DriftPlan.demo(IDS, START))
    changed = [u for u in IDS if first.profile_json(u, 5) != other_seed.profile_json(u, 5)]
    assert changed == IDS  # another seed: other profiles
    growing = [u for u in IDS if growth(3, u).kind == "growing"]
    assert all(first.profile_json(u, 5) != first.profile_json(u, 60) for u in growing)


PRINT_DIGEST = """
import hashlib, sys
from datetime import date
from pipeline.sandbox import DriftModel, DriftPlan
ids = sys.argv[1].split(",")
model = DriftModel(DriftPlan.demo(ids, date(2026, 12, 1), 7), seed=7)
digest = hashlib.sha256()
for uid in ids:
    for day in range(10):
        digest.update(model.profile_json(uid, day) + str(model.absent(uid, day)).encode())
print(digest.hexdigest())
"""


@pytest.mark.slow
def test_another_process_with_another_hash_seed_builds_the_same_bytes() -> None:
    model = DriftModel(DriftPlan.demo(IDS, START, 7), seed=7)
    digest = hashlib.sha256()
    for uid in IDS:
        for n in range(10):
            digest.update(model.profile_json(uid, n) + str(model.absent(uid, n)).encode())
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        child = subprocess.run(
            [sys.executable, "-c", PRINT_DIGEST, ",".join(IDS)],
            env=env, capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        assert child.stdout.strip() == digest.hexdigest()


# --- organic growth ----------------------------------------------------------------------------


def test_creators_are_mostly_growing_a_few_flat_and_a_few_shrinking() -> None:
    rates = [growth(0, make_id(i, "rates")) for i in range(5000)]
    kinds = [r.kind for r in rates]
    assert 250 <= kinds.count("flat") <= 350  # 6%
    assert 330 <= kinds.count("shrinking") <= 470  # 8%
    growing = [r for r in rates if r.kind == "growing"]
    assert all(1_000 <= r.fans_ppm <= 20_000 for r in growing)  # 0.1% to 2% a day
    assert sum(r.fans_ppm < 5_000 for r in growing) > len(growing) / 2  # most grow slowly
    assert all(r.fans_ppm // 2 <= r.engagement_ppm <= r.fans_ppm * 3 // 2 for r in growing)
    assert {r.notes_ppm for r in growing} == {0, 1_000_000 // 14, 100_000, 142_857, 200_000,
                                              250_000, 333_333, 500_000, 1_000_000}  # fmt: skip
    shrinking = [r for r in rates if r.kind == "shrinking"]
    assert all(-3_000 <= r.fans_ppm <= -500 and r.notes_ppm == 0 for r in shrinking)
    assert {(r.fans_ppm, r.follows_ppm, r.engagement_ppm, r.notes_ppm)
            for r in rates if r.kind == "flat"} == {(0, 0, 0, 0)}  # fmt: skip


def test_the_seed_samples_week_is_these_exact_counters() -> None:
    week = [counters(NO_EVENTS.profile(SEED_SAMPLE, on)) for on in WEEK]
    assert growth(0, SEED_SAMPLE) == Growth("growing", 1_252, 1_350, 1_052, 0)
    assert week == [
        (136926, 89, 1497019, 990670, 8),
        (137097, 89, 1498593, 991712, 8),
        (137268, 89, 1500168, 992754, 8),
        (137440, 89, 1501743, 993796, 8),
        (137611, 89, 1503318, 994838, 8),
        (137783, 89, 1504893, 995880, 8),
        (137954, 89, 1506468, 996923, 8),
    ]


def test_growth_is_a_daily_rate_of_the_day_0_value_floored() -> None:
    for uid in IDS:
        rates, base = growth(0, uid), build_profile(uid)
        for n in (1, 7, 30, 365):
            data = NO_EVENTS.profile(uid, day(n))
            fans, liked = base["fans"], base["liked"]
            assert data["fans"] == max(0, fans + fans * rates.fans_ppm * n // 10**6)
            assert data["liked"] == liked + liked * rates.engagement_ppm * n // 10**6
            assert data["ndiscovery"] == base["ndiscovery"] + rates.notes_ppm * n // 10**6


def test_a_week_of_growth_is_plausible_and_monotone() -> None:
    ids = [make_id(i, "week") for i in range(400)]
    by_kind: dict[str, int] = {}
    for uid in ids:
        kind = growth(0, uid).kind
        by_kind[kind] = by_kind.get(kind, 0) + 1
        week = [counters(NO_EVENTS.profile(uid, on)) for on in WEEK]
        fans = [c[0] for c in week]
        if kind == "flat":
            assert week == [week[0]] * 7
        elif kind == "shrinking":
            assert fans == sorted(fans, reverse=True)
            assert fans[0] - fans[6] <= fans[0] * 3_000 * 6 // 10**6 + 1  # 0.3% a day at most
            assert [c[4] for c in week] == [week[0][4]] * 7  # no new notes
        else:
            for counter in range(5):
                series = [c[counter] for c in week]
                assert series == sorted(series), (uid, counter, series)
            if fans[0] >= 10_000:  # large enough that the floor does not hide the rate
                assert fans[0] * 0.001 * 6 * 0.99 <= fans[6] - fans[0] <= fans[0] * 0.02 * 6
    assert by_kind["growing"] > 300 and by_kind["flat"] > 5 and by_kind["shrinking"] > 10


EVENT = st.builds(
    lambda kind, n, amount: (kind, n, amount),
    st.sampled_from(sorted(EVENT_KINDS)),
    st.integers(min_value=0, max_value=40),
    st.integers(min_value=0, max_value=100),
)


@settings(max_examples=150, deadline=None)
@given(
    user_id=st.from_regex(r"[0-9a-f]{24}", fullmatch=True),
    seed=st.integers(min_value=0, max_value=2**32),
    events=st.lists(EVENT, max_size=6),
    days=st.lists(st.integers(min_value=-5, max_value=800), min_size=1, max_size=5),
)
def test_every_date_keeps_the_facts_of_real_samples(
    user_id: str, seed: int, events: list[tuple[str, int, int]], days: list[int]
) -> None:
    plan_events, once = [], set()
    for kind, n, amount in events:
        if kind in ("born", "gone") and kind in once:
            continue
        once.add(kind)
        params: dict[str, int | str] = {}
        if kind == "purge":
            params = {"percent": amount}
        elif kind in ("spike", "round_jump", "fans_no_engagement"):
            params = {"followers": amount * 1_000}
        elif kind == "rename" and amount % 2:
            params = {"nickname": f"新名字{amount}"}
        plan_events.append(DriftEvent(user_id, day(n), kind, params))
    model = DriftModel(DriftPlan(START, tuple(plan_events)), seed)
    for n in days:
        assert_facts(model.profile(user_id, day(n)))


# --- scripted events ---------------------------------------------------------------------------

DEMO = DriftPlan.demo(IDS, START)
DEMO_MODEL = DriftModel(DEMO)


def demo_id(kind: str, **params: int) -> tuple[str, int]:
    """The id the demo plan gives ``kind`` (with these params), and the event's day."""
    event = next(e for e in DEMO.events if e.kind == kind and dict(e.params) == params)
    return event.user_id, (event.date - START).days


def around(uid: str, n: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The demo's profile of ``uid`` the day before ``n``, on ``n``, and 3 days later."""
    return tuple(DEMO_MODEL.profile(uid, day(k)) for k in (n - 1, n, n + 3))  # type: ignore[return-value]


def without_event(uid: str, n: int) -> dict[str, Any]:
    """``uid`` without its event, ``n`` days in: an event day pauses the organic change of the
    counters it touches, so 3 days after it they stand where the eventless ones stood 2 days
    after (plus the event's amount)."""
    return NO_EVENTS.profile(uid, day(n))


def test_the_demo_plan_puts_eleven_events_on_days_3_to_6() -> None:
    assert [(e.kind, (e.date - START).days, dict(e.params)) for e in DEMO.events] == [
        ("spike", 6, {}), ("round_jump", 4, {}), ("purge", 5, {}), ("fans_no_engagement", 3, {}),
        ("follows_spike", 3, {}), ("rename", 4, {}), ("bio", 5, {}), ("notes_deleted", 6, {}),
        ("gone", 5, {}), ("gone", 6, {"code": 404}), ("born", 4, {}),
    ]  # fmt: skip
    assert len({e.user_id for e in DEMO.events}) == 11
    assert DriftPlan.demo(reversed(IDS + IDS[:5] + ["not an id"]), START) == DEMO
    assert DriftPlan.demo(IDS, START, seed=1) != DEMO
    assert build_profile(demo_id("purge")[0])["fans"] >= 1_000
    assert build_profile(demo_id("notes_deleted")[0])["ndiscovery"] >= 5
    assert [e.kind for e in DriftPlan.demo(IDS[:3], START).events] == [
        "spike", "round_jump", "purge"]  # fmt: skip
    assert DriftPlan.demo([], START).events == ()
    assert DEMO.describe()[0] == f"2026-12-04 (day 3)  {demo_id('fans_no_engagement')[0]}  " \
                                 "fans_no_engagement followers=20000"  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "amount"), [("spike", 50_000), ("round_jump", 10_000), ("fans_no_engagement", 20_000)]
)
def test_a_follower_jump_adds_exactly_its_amount_that_day_and_persists(
    kind: str, amount: int
) -> None:
    uid, n = demo_id(kind)
    before, on, later = around(uid, n)
    assert on["fans"] - before["fans"] == amount
    assert later["fans"] == without_event(uid, n + 2)["fans"] + amount
    assert_facts(on)
    if kind == "fans_no_engagement":
        assert (on["liked"], on["collected"]) == (before["liked"], before["collected"])
        eventless = without_event(uid, n + 2)
        assert (later["liked"], later["collected"]) == (eventless["liked"], eventless["collected"])


def test_a_purge_removes_30_percent_of_the_day_befores_followers() -> None:
    uid, n = demo_id("purge")
    before, on, later = around(uid, n)
    assert on["fans"] == before["fans"] - before["fans"] * 30 // 100
    assert later["fans"] < without_event(uid, n + 3)["fans"] * 0.75
    assert on["liked"] >= before["liked"]


def test_a_follows_spike_adds_2000_follows() -> None:
    uid, n = demo_id("follows_spike")
    before, on, later = around(uid, n)
    assert on["follows"] - before["follows"] == 2_000
    assert later["follows"] == without_event(uid, n + 2)["follows"] + 2_000


def test_deleted_notes_take_5_off_the_notes_posted() -> None:
    uid, n = demo_id("notes_deleted")
    before, on, later = around(uid, n)
    assert on["ndiscovery"] == on["note_num_stat"]["posted"] == before["ndiscovery"] - 5
    assert later["ndiscovery"] == without_event(uid, n + 2)["ndiscovery"] - 5


def test_a_rename_and_a_bio_change_the_texts_from_their_day_on() -> None:
    uid, n = demo_id("rename")
    before, on, later = around(uid, n)
    assert before["nickname"] == build_profile(uid)["nickname"] != on["nickname"]
    assert later["nickname"] == on["nickname"] == on["share_info"]["title"]
    assert (on["desc"], on["fans"]) == (before["desc"], on["fans"])
    uid, n = demo_id("bio")
    before, on, later = around(uid, n)
    assert before["desc"] != on["desc"] == on["user_desc_info"]["desc"] == later["desc"]
    assert on["user_desc_info"]["desc_with_placeholder"] == on["desc"]
    assert on["nickname"] == before["nickname"]


def test_event_params_override_the_defaults() -> None:
    uid = IDS[0]
    plan = DriftPlan(START, (
        DriftEvent(uid, day(2), "spike", {"followers": 123}),
        DriftEvent(uid, day(2), "rename", {"nickname": "新名字"}),
        DriftEvent(uid, day(3), "bio", {"desc": "新的简介\n第二行"}),
        DriftEvent(uid, day(4), "purge", {"percent": 50}),
        DriftEvent(uid, day(5), "rename", {"nickname": "又改名"}),
    ))  # fmt: skip
    model = DriftModel(plan)
    fans = [model.profile(uid, day(n))["fans"] for n in range(1, 6)]
    assert fans[1] - fans[0] == 123 and fans[3] == fans[2] - fans[2] * 50 // 100
    assert [model.profile(uid, day(n))["nickname"] for n in (2, 4, 5, 9)] == [
        "新名字", "新名字", "又改名", "又改名"]  # fmt: skip
    assert model.profile(uid, day(3))["share_info"]["content"] == "新的简介\n第二行"


def test_gone_and_born_answer_without_a_profile_on_their_dates(sandbox: SandboxFactory) -> None:
    gone, gone_404, born = demo_id("gone")[0], demo_id("gone", code=404)[0], demo_id("born")[0]
    box = sandbox(config=SandboxConfig(drift=DEMO, as_of=day(4)))

    def answer(uid: str) -> tuple[int, Any, Any]:
        response = get(box, uid)
        body = response.json()
        return response.status_code, body["code"], body["data"]

    assert answer(gone)[:2] == answer(gone_404)[:2] == (200, 0)
    assert answer(born)[:2] == (200, 0)
    box.set_date(day(3))
    assert answer(born) == (200, 404, None)
    assert get(box, born).json()["message"] == "not found"
    box.set_date(day(6))
    assert answer(gone) == (200, 0, {})
    assert answer(gone_404) == (200, 404, None)
    box.set_date(day(30))
    assert answer(gone) == (200, 0, {}) and answer(gone_404)[1] == 404
    assert answer(born)[2]["userid"] == born


# --- the server and its date -------------------------------------------------------------------


def test_post_date_moves_a_running_server_through_a_week(sandbox: SandboxFactory) -> None:
    box = sandbox(config=SandboxConfig(drift=DEMO, as_of=START))
    spiked = demo_id("spike")[0]
    seen = []
    for on in WEEK:
        posted = HTTP.post(box.base_url + "/_sandbox/date", json={"date": on.isoformat()})
        assert posted.json() == {"ok": True, "drift": True, "date": on.isoformat(),
                                 "day": (on - START).days, "start": "2026-12-01",
                                 "follows_clock": False}  # fmt: skip
        data = get(box, spiked).json()["data"]
        assert data == DEMO_MODEL.profile(spiked, on)
        seen.append(data["fans"])
    assert seen[6] - seen[5] == 50_000
    assert HTTP.get(box.base_url + "/_sandbox/date").json()["date"] == "2026-12-07"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"date": "2026-13-01"}', "date must be a date YYYY-MM-DD, got '2026-13-01'"),
        (b'{"date": "12/01/2026"}', "date must be a date YYYY-MM-DD, got '12/01/2026'"),
        (b'{"day": 3}', 'expected a JSON object {"date": "YYYY-MM-DD"}'),
        (b'"2026-12-01"', 'expected a JSON object {"date": "YYYY-MM-DD"}'),
        (b"{", "unexpected end of data: line 1 column 2 (char 1)"),
    ],
)
def test_post_date_refuses_what_is_not_a_date(
    sandbox: SandboxFactory, body: bytes, error: str
) -> None:
    box = sandbox(config=SandboxConfig(drift=DEMO, as_of=START))
    refused = HTTP.post(box.base_url + "/_sandbox/date", content=body)
    assert (refused.status_code, refused.json()) == (400, {"ok": False, "error": error})
    assert HTTP.get(box.base_url + "/_sandbox/date").json()["date"] == "2026-12-01"


def test_a_sandbox_without_drift_refuses_a_date(sandbox: SandboxFactory) -> None:
    box = sandbox()
    refused = HTTP.post(box.base_url + "/_sandbox/date", json={"date": "2026-12-01"})
    assert refused.status_code == 400
    assert refused.json()["error"] == (
        "this sandbox has no drift plan (--drift): every date answers the same"
    )
    assert HTTP.get(box.base_url + "/_sandbox/date").json() == {
        "ok": True, "drift": False, "date": None}  # fmt: skip
    with pytest.raises(SandboxOptionError, match="a sandbox date needs a drift plan"):
        box.set_date(START)


def test_without_a_date_the_server_follows_the_utc_clock(sandbox: SandboxFactory) -> None:
    box = sandbox(config=SandboxConfig(drift=DriftPlan(START)))
    info = HTTP.get(box.base_url + "/_sandbox/date").json()
    today = NO_EVENTS.date_of(NO_EVENTS.day_of_clock(time.time()))
    assert (info["date"], info["follows_clock"]) == (today.isoformat(), True)
    assert NO_EVENTS.day_of_clock(1_796_083_200) == 0  # 2026-12-01T00:00:00Z
    assert NO_EVENTS.day_of_clock(1_796_083_200 + 86_399) == 0
    assert NO_EVENTS.day_of_clock(1_796_083_200 + 86_400 * 6) == 6
    box.set_date(day(2))
    box.set_date(None)
    assert HTTP.get(box.base_url + "/_sandbox/date").json()["follows_clock"] is True


def test_set_date_before_start_and_after_a_restart_keeps_the_date() -> None:
    box = Sandbox(SandboxConfig(drift=DEMO, as_of=START))
    box.set_date(day(5))
    with box:
        assert get(box, IDS[0]).json()["data"] == DEMO_MODEL.profile(IDS[0], day(5))
    with box:
        assert get(box, IDS[0]).json()["data"] == DEMO_MODEL.profile(IDS[0], day(5))


def test_the_ledger_counts_calls_and_successes_across_dates(sandbox: SandboxFactory) -> None:
    gone, born, plain = demo_id("gone")[0], demo_id("born")[0], IDS[0]
    assert plain not in {e.user_id for e in DEMO.events}
    box = sandbox(config=SandboxConfig(drift=DEMO, as_of=day(3), scripts={plain: ["301"]}))
    for on in (day(3), day(5)):
        box.set_date(on)
        for uid in (gone, born, plain):
            get(box, uid)
    stats = box.stats()
    assert stats.calls == 6
    assert stats.calls_by_id == {gone: 2, born: 2, plain: 2}
    assert stats.successes_by_id == {gone: 1, born: 1, plain: 1}  # day 3: born 404; day 5: gone
    assert stats.by_code == {0: 4, 404: 1, 301: 1}  # gone's data {} is code 0, not a success


def test_modes_that_reshape_a_profile_reshape_the_drifted_one(sandbox: SandboxFactory) -> None:
    uid = demo_id("spike")[0]
    box = sandbox(config=SandboxConfig(drift=DEMO, as_of=day(4), scripts={uid: ["display_counts"]}))
    shown = get(box, uid).json()["data"]
    fans = DEMO_MODEL.profile(uid, day(4))["fans"]
    assert {e["type"]: e["count"] for e in shown["interactions"]}["fans"] == (
        f"{fans / 10_000:.1f}".removesuffix(".0") + "万"
    )
    assert shown["fans"] == fans


# --- configuration -----------------------------------------------------------------------------


def test_a_plan_round_trips_through_its_json_file(tmp_path: Path) -> None:
    plan = DriftPlan(START, (*DEMO.events, DriftEvent(IDS[0], day(9), "bio", {"desc": "新简介"})))
    plan.dump(tmp_path / "plan.json")
    assert DriftPlan.load(tmp_path / "plan.json") == plan
    written = json.loads((tmp_path / "plan.json").read_text(encoding="utf-8"))
    assert written["start"] == "2026-12-01"
    assert written["events"][-1] == {"user_id": IDS[0], "date": "2026-12-10", "kind": "bio",
                                     "params": {"desc": "新简介"}}  # fmt: skip
    event = {"user_id": IDS[1].upper(), "date": "2026-12-02", "kind": "gone"}  # no params
    hand_written = json.dumps({"start": "2026-12-01", "events": [event]})
    assert DriftPlan.from_json(hand_written).events == (DriftEvent(IDS[1], day(1), "gone"),)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[", "a drift plan must be JSON: unexpected end of data: line 1 column 2 (char 1)"),
        ('{"events": []}', 'a drift plan is {"start": "YYYY-MM-DD", "events": [...]}'),
        ('{"start": "2026-12-01", "events": [{"kind": "spike"}]}',
         'drift plan events are [{"user_id": ..., "date": ..., "kind": ..., "params": {}}]'),
        ('{"start": "soon", "events": []}',
         "the drift plan's start must be a date YYYY-MM-DD, got 'soon'"),
        (f'{{"start": "2026-12-01", "events": [{{"user_id": "{IDS[0]}", "date": "2026-12-02", '
         '"kind": "explode"}]}',
         "unknown drift event 'explode'; use one of: spike, round_jump, purge, follows_spike, "
         "rename, bio, notes_deleted, gone, born, fans_no_engagement"),
        (f'{{"start": "2026-12-01", "events": [{{"user_id": "{IDS[0]}", "date": "2026-11-30", '
         '"kind": "spike"}]}',
         f"spike event for {IDS[0]} on 2026-11-30 is before the plan's start 2026-12-01"),
        (f'{{"start": "2026-12-01", "events": [{{"user_id": "{IDS[0]}", "date": "2026-12-02", '
         '"kind": "spike", "params": {"followers": "lots"}}]}',
         "spike param followers cannot be 'lots'"),
        (f'{{"start": "2026-12-01", "events": [{{"user_id": "{IDS[0]}", "date": "2026-12-02", '
         '"kind": "gone", "params": {"code": 500}}]}', "gone param code cannot be 500"),
        (f'{{"start": "2026-12-01", "events": [{{"user_id": "{IDS[0]}", "date": "2026-12-02", '
         '"kind": "born", "params": {"when": 1}}]}', "born has no param 'when' (params: none)"),
        ('{"start": "2026-12-01", "events": [{"user_id": "abc", "date": "2026-12-02", '
         '"kind": "born"}]}', "drift event user_id must be 24 hex, got 'abc'"),
    ],
)  # fmt: skip
def test_a_bad_plan_is_a_one_line_option_error(tmp_path: Path, text: str, error: str) -> None:
    (tmp_path / "plan.json").write_text(text, encoding="utf-8")
    with pytest.raises(SandboxOptionError) as caught:
        DriftPlan.load(tmp_path / "plan.json")
    assert str(caught.value) == f"drift plan {tmp_path / 'plan.json'}: {error}"


def test_two_gone_events_for_one_id_are_refused() -> None:
    with pytest.raises(SandboxOptionError, match=f"more than one gone event for {IDS[0]}"):
        DriftPlan(START, (DriftEvent(IDS[0], day(1), "gone"), DriftEvent(IDS[0], day(2), "gone")))


def test_config_takes_a_plan_file_and_a_date_string(tmp_path: Path) -> None:
    DEMO.dump(tmp_path / "plan.json")
    config = SandboxConfig.from_options(drift=str(tmp_path / "plan.json"), as_of="2026-12-05")
    assert (config.drift, config.as_of) == (DEMO, day(4))
    with pytest.raises(SandboxOptionError, match=r"^a sandbox date needs a drift plan"):
        SandboxConfig(as_of=START)
    with pytest.raises(SandboxOptionError, match=r"^as_of must be a date YYYY-MM-DD, got '5 Dec'$"):
        SandboxConfig.from_options(drift=DEMO, as_of="5 Dec")


def test_drift_config_for_serves_one_history_for_every_snapshot_of_a_series() -> None:
    monday = drift_config_for(day(0), IDS, start=START, latency=(0.01, 0.05), fault_mix="301:0.1")
    thursday = drift_config_for(day(3), reversed(IDS), start=START, fault_mix="301:0.1",
                                latency=(0.01, 0.05))  # fmt: skip
    assert monday.drift == thursday.drift == DEMO
    assert (monday.as_of, thursday.as_of) == (day(0), day(3))
    assert (monday.latency, dict(monday.fault_mix)) == ((0.01, 0.05), {"code:301": 0.1})
    seeded = drift_config_for(day(3), IDS, start=START, seed=2)
    assert seeded.drift == DriftPlan.demo(IDS, START, 2) and seeded.seed == 2


# --- the command -------------------------------------------------------------------------------


def invoke(args: list[str]) -> Any:
    env = {"JUSTONEAPI_TOKEN": None, "JUSTONEAPI_BASE_URL": None}
    return CliRunner().invoke(cli, ["sandbox", *args], obj=Seams(), env=env)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--drift"], "--drift needs --drift-ids FILE.csv (the demo plan's events go to its ids) "
                      "or --drift-plan FILE.json"),
        (["--date", "2026-12-01"], "--date needs --drift: without it every date answers the same"),
        (["--drift-ids", "ids.csv", "--date", "tomorrow"],
         "--date must be a date YYYY-MM-DD, got 'tomorrow'"),
        (["--drift-ids", "ids.csv", "--drift-plan", "plan.json"],
         "give --drift-ids or --drift-plan, not both"),
        (["--drift-ids", "missing.csv"], "--drift-ids: input file not found: missing.csv"),
        (["--drift-ids", "no-ids.csv"], "--drift-ids: no-ids.csv has no valid ids"),
        (["--drift-plan", "missing.json"],
         "cannot read drift plan missing.json: No such file or directory"),
        (["--drift-plan", "ids.csv"], "drift plan ids.csv: a drift plan must be JSON: unexpected "
                                      "character, expected a JSON value: line 1 column 1 (char 0)"),
    ],
)  # fmt: skip
def test_bad_drift_options_are_one_line_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], error: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write_ids(tmp_path / "ids.csv", IDS[:3])
    write_ids(tmp_path / "no-ids.csv", ["not-an-id"])
    result = invoke(args)
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, "", f"xhs-profiles: sandbox: {error}\n")  # fmt: skip


def test_the_command_prints_the_plan_it_serves(tmp_path: Path, sandbox: SandboxFactory) -> None:
    port = urlsplit(sandbox().base_url).port  # taken: the command stops right after printing
    csv_path = write_ids(tmp_path / "ids.csv", IDS)
    result = invoke(["--drift-ids", str(csv_path), "--date", "2026-12-01", "--port", str(port)])
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "drift: plan from 2026-12-01 (day 0) with 11 events; answering as of 2026-12-01; "
        "POST /_sandbox/date moves it"
    )
    assert lines[1:12] == [f"  {line}" for line in DEMO.describe()]
    assert lines[12].startswith(f"sandbox API on http://127.0.0.1:{port} ")
    assert result.exit_code == 2


# --- end to end --------------------------------------------------------------------------------


def test_daily_runs_against_one_drifted_server_store_each_dates_counters(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """What the changes table will compare: each snapshot holds its own date's counters."""
    ids = sorted({e.user_id for e in DEMO.events} | set(IDS[:10]))
    csv_path = write_ids(tmp_path / "ids.csv", ids)
    box = sandbox(config=drift_config_for(START, ids, start=START))
    assert box.config.drift == DriftPlan.demo(ids, START)
    model, out = DriftModel(box.config.drift), tmp_path / "out"
    for n in (2, 3, 6):
        box.set_date(day(n))
        args = ["run", str(csv_path), "--out", str(out), "--base-url", box.base_url,
                "--snapshot-date", day(n).isoformat(), "--no-progress"]  # fmt: skip
        env = {"JUSTONEAPI_TOKEN": "sandbox", "JUSTONEAPI_BASE_URL": None}
        result = CliRunner().invoke(cli, args, obj=Seams(config_overrides=QUICK_START), env=env)
        assert result.exit_code == 0, result.output
        profiles = pl.read_parquet(out / "profiles" / f"dt={day(n)}" / "*.parquet")
        fans = dict(zip(profiles["user_id"], profiles["fans"], strict=True))
        present = {u for u in ids if model.absent(u, n) is None}
        assert fans == {u: model.profile(u, day(n))["fans"] for u in present}
        failed = {row["user_id"]: row["code"] for row in read_failures(out, day(n).isoformat())}
        assert failed == {u: "404" if model.absent(u, n) == "code:404" else "0"
                          for u in set(ids) - present}  # fmt: skip
    spiked = demo_id("spike")[0]
    assert model.profile(spiked, day(6))["fans"] - model.profile(spiked, day(5))["fans"] == 50_000
    assert box.stats().calls == 3 * len(ids)
