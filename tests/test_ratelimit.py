"""pipeline.ratelimit: rate and concurrency control on a simulated clock.

Two kinds of test: the rules one at a time (pacing, caps, the window, cuts, pauses, what it
reports), driving ``acquire`` and the answers by hand; and closed loops against modelled servers
(``tests/controlsim.py``: token buckets that decide at arrival as the sandbox does, a sliding
window of a minute, a server that queues, a limit that changes), each asserting the figures the
issue asks of the bench, with the defaults.  Every run is deterministic (seeded) and simulated
minutes take a fraction of a second.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from pipeline.ratelimit import (
    CRUISE_GAIN,
    MIN_WINDOW,
    START_RATE,
    RateController,
    _startup_cut,
    _startup_growth,
)
from tests.controlsim import (
    Figures,
    Latency,
    Sim,
    SlidingWindow,
    TokenBucket,
    Unlimited,
    capacity,
    controller,
    run,
    uniform,
)


def acquire_times(sim: Sim, limiter: RateController, n: int, *, start: float = 0.0) -> list[float]:
    """Spawn one task per acquire at ``start``; return their send times in order."""
    times: list[float] = []

    async def one() -> None:
        times.append(await limiter.acquire())

    for _ in range(n):
        sim.spawn(one(), at=start)
    return times


def summary(f: Figures, limit: float | None = None) -> str:
    held = f"{f.held / limit:.3f} of the limit" if limit else f"{f.held:.1f}/s"
    snapshot = f.controller.snapshot() if f.controller else None
    return f"{held}, {f.limited_share:.2%} refused, {f.calls} calls, {snapshot}"


# --- pacing and the user's caps --------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 8, 64])
def test_pacing_at_rate_r_gives_r_acquires_per_second_however_many_workers(workers: int) -> None:
    sim = Sim()
    limiter = controller(sim, 10.0)  # a cap below the start rate: paced at the cap from the start
    sent: list[float] = []

    async def worker() -> None:
        while True:
            sent.append(await limiter.acquire())

    for _ in range(workers):
        sim.spawn(worker())
    sim.run(until=10.0)
    # 10/s, and any ten in a row span 1.02 s (the cap's margin for jitter on the way): 98.
    assert len([t for t in sent if t < 10.0]) in (98, 99)
    assert all(b - a >= 0.1 - 1e-9 for a, b in itertools.pairwise(sent))
    assert all(b - a >= 1.02 - 1e-9 for a, b in zip(sent, sent[10:], strict=False))


def test_it_starts_at_16_per_second_and_does_not_grow_before_any_answer() -> None:
    sim = Sim()
    limiter = controller(sim)
    times = acquire_times(sim, limiter, 64)
    sim.run()
    assert limiter.rate == START_RATE == 16.0
    assert times[-1] == pytest.approx(63 / 16)
    # Until an answer, pacing bounds what is sent; what a fetch loop may hand out grows with
    # the time since the oldest call still unanswered: 2 x 16/s x 63/16 s + 4.
    assert limiter.window == 2 * 63 + 4


def test_invalid_settings_are_refused() -> None:
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="rate must be"):
            RateController(bad)
    with pytest.raises(ValueError, match="burst"):
        RateController(1.0, burst=0.5)
    with pytest.raises(ValueError, match="min_rate"):
        RateController(1.0, min_rate=0.0)
    with pytest.raises(ValueError, match="max_in_flight"):
        RateController(None, max_in_flight=0)
    for bad in (0.0, float("inf")):
        with pytest.raises(ValueError, match="start_rate"):
            RateController(None, start_rate=bad)


def test_a_given_start_rate_is_where_the_start_begins_below_the_cap() -> None:
    sim = Sim()
    limiter = controller(sim, start_rate=200.0)
    times = acquire_times(sim, limiter, 21)
    sim.run()
    assert limiter.rate == 200.0
    assert times[-1] == pytest.approx(20 / 200)
    assert controller(Sim(), 50.0, start_rate=200.0).rate == 50.0


def test_rate_and_concurrency_caps_are_never_exceeded_as_the_server_sees_it() -> None:
    """--rate 20 --concurrency 8 against no limit and calls of 0.2-0.6 s: both caps bind."""
    f = run(Unlimited(), 1500, latency=uniform(0.2, 0.6), rate=20.0, max_in_flight=8)
    assert f.max_sent_in_any(1.0) <= 20
    assert f.in_flight_max <= 8
    assert f.controller is not None and f.controller.snapshot()["in_flight_max"] <= 8
    assert f.held >= 0.85 * min(20.0, 8 / 0.4), summary(f)


def test_a_cap_is_kept_over_any_second_of_sends_even_after_a_burst_of_callers() -> None:
    sim = Sim()
    limiter = controller(sim, 5.0)
    times = acquire_times(sim, limiter, 40, start=1.0)
    sim.run()
    assert all(b - a >= 1.0 for a, b in zip(times, times[5:], strict=False))


# --- the window --------------------------------------------------------------------------------


def test_the_window_is_twice_rate_times_round_trip_plus_headroom_at_least_16() -> None:
    sim = Sim()
    limiter = controller(sim)
    times = acquire_times(sim, limiter, 4)
    sim.run()
    sim.now = 0.5
    limiter.on_success(sent_at=0.0)  # a round trip of 0.5 s at the start's 16/s
    assert limiter.window == math.ceil(2 * 16.0 * 0.5) + 4 == 20
    assert len(times) == 4
    slow_sim = Sim()
    slow = controller(slow_sim, 2.0)
    acquire_times(slow_sim, slow, 1)
    slow_sim.run()
    slow_sim.now = 0.5
    slow.on_success(sent_at=0.0)
    assert slow.window == MIN_WINDOW == 16  # 2 x 2/s x 0.5 s + 4 = 6: the floor


def test_a_full_window_holds_callers_first_come_first_served_until_an_answer_frees_a_slot() -> None:
    sim = Sim()
    limiter = controller(sim, 1000.0, max_in_flight=2)
    order: list[int] = []

    async def caller(k: int) -> None:
        sent = await limiter.acquire()
        order.append(k)
        await sim.sleep(1.0)
        limiter.on_success(sent_at=sent)

    for k in range(5):
        sim.spawn(caller(k))
    sim.run()
    assert order == [0, 1, 2, 3, 4]
    assert limiter.snapshot()["in_flight_max"] == 2
    assert sim.now >= 3.0  # five one-second calls, two at a time


# --- start-up growth and the first cut -----------------------------------------------------------


def test_startup_grows_15_percent_per_round_trip_then_faster_past_twice_the_start() -> None:
    assert _startup_growth(1.0, 1.0) == pytest.approx(math.log(1.15))
    assert _startup_growth(1.0, 0.1) == pytest.approx(10 * math.log(1.15))
    assert _startup_growth(8.0, 1.0) == pytest.approx(math.log(1.35))  # 3 doublings: +0.2
    assert _startup_growth(64.0, 0.1) == pytest.approx(10 * math.log(1.15))  # never > x1.5/s more
    # Past a one-second round trip: slower by sqrt(1 s / rtt).
    assert _startup_growth(1.0, 4.0) == pytest.approx(math.log(1.15) / 4 / 2)


def test_startup_cut_lands_near_the_limit_whatever_the_round_trip() -> None:
    """Growth at 0.1 s overshoots a 1 s burst ~4x; at 3.5 s (slowly) ~1.5x: the cut follows."""
    fast = math.log(1.15) / 0.1
    slow = _startup_growth(1.0, 3.5)
    assert _startup_cut(fast, 0.1) == 0.25
    assert 0.55 < _startup_cut(slow, 3.5) < 0.75


def test_growth_waits_while_nobody_waits_for_the_pacer() -> None:
    """Two callers at 1 s a call use 2/s of the 16/s allowed: no reason to allow more."""
    f = run(Unlimited(), 40, latency=uniform(1.0, 1.0), workers=2)
    assert f.controller is not None and f.controller.rate == START_RATE


# --- closed loops: the scenarios, with the defaults --------------------------------------


def test_limit_50_at_50_to_150_ms_is_held_with_few_302s() -> None:
    f = run(TokenBucket(50), 3000, latency=uniform(0.05, 0.15), seed=2)
    assert f.held >= 0.95 * 50, summary(f, 50)
    assert f.limited_share <= 0.02, summary(f, 50)
    assert f.controller is not None
    assert f.controller.snapshot()["ceiling_estimate"] == pytest.approx(50, rel=0.03)


def test_limit_20_at_2_to_5_s_is_held_with_few_302s() -> None:
    f = run(TokenBucket(20), 1000, latency=uniform(2.0, 5.0), seed=2)
    assert f.held >= 0.9 * 20, summary(f, 20)
    assert f.limited_share <= 0.02, summary(f, 20)


def test_no_limit_at_1_s_grows_to_hundreds_in_flight() -> None:
    f = run(Unlimited(), 5000, latency=uniform(1.0, 1.0))
    assert f.ids / f.finished >= 150, summary(f)
    assert f.in_flight_max == 512


def test_queueing_without_a_limit_stops_the_window_before_latency_balloons() -> None:
    """Latency x in flight / 40 past 40 in flight (0.2 s unloaded): about 200/s at most."""
    f = run(Unlimited(), 6000, latency=capacity(0.2, 40))
    assert f.held >= 0.9 * 200, summary(f)
    assert f.median_latency() <= 1.5 * 0.2, summary(f)
    assert f.controller is not None
    assert 40 <= f.controller.window <= 60
    assert f.controller.snapshot()["cuts_by_reason"]["latency"] >= 1


def test_a_latency_step_with_no_limit_does_not_collapse_the_window() -> None:
    """0.2 s, then 2 s from t = 10 s, no queueing: the base round trip follows within a window
    of 10 s instead of reading the step as a queue for ever (BBR's min-RTT expiry)."""

    def step(rng: Any, now: float, _in_flight: int) -> float:
        return 0.2 if now < 10.0 else 2.0

    f = run(Unlimited(), 24000, latency=step)
    assert f.last_ok > 26.0  # the run outlasts the step by more than the base's window
    after = f.accepted_between(14.0, 24.0)
    assert after >= 0.8 * min(512 / 2.0, f.accepted_between(5.0, 10.0)), summary(f)


def test_a_limit_that_drops_and_rises_is_followed_within_10_s() -> None:
    schedule = ((0.0, 50.0), (20.0, 10.0), (40.0, 80.0))
    f = run(TokenBucket(50, schedule=schedule), 3500, latency=uniform(0.05, 0.15), seed=3)
    for change, limit, end in ((0.0, 50.0, 20.0), (20.0, 10.0, 40.0), (40.0, 80.0, 55.0)):
        assert f.accepted_between(change + 10, end) >= 0.85 * limit, (change, summary(f))
    assert f.limited_share <= 0.05, summary(f)


def test_told_20x_too_high_with_100_slots_it_still_finds_the_limit() -> None:
    f = run(TokenBucket(50), 3000, latency=uniform(0.05, 0.15), rate=1000.0, max_in_flight=100)
    assert f.held >= 0.9 * 50, summary(f, 50)
    assert f.limited_share <= 0.05, summary(f, 50)


def test_told_the_right_rate_it_holds_it_with_almost_no_302() -> None:
    f = run(TokenBucket(50), 2000, latency=uniform(0.05, 0.15), rate=50.0)
    assert f.held >= 0.95 * 50, summary(f, 50)
    assert f.limited_share <= 0.01, summary(f, 50)


def test_a_limit_per_sliding_second_is_found_though_more_slowly_than_a_bucket() -> None:
    """A window carries no unused capacity over, so the estimate between two refusals counts
    only what was sent below the limit: it closes in probe by probe instead of at once."""
    f = run(SlidingWindow(50), 3000, latency=uniform(0.05, 0.15))
    assert f.held >= 0.85 * 50, summary(f, 50)
    assert f.limited_share <= 0.03, summary(f, 50)


def test_a_limit_per_sliding_minute_is_held_on_average_and_never_runs_away() -> None:
    """600 calls per sliding minute: the start's growth spends the minute's 600 in a few seconds
    and the server refuses everything for the rest of it.  The controller backs off to its floor
    through that minute, then holds the minute's average; the price is that each probe spends
    the window's burst again (about 15% of calls refused over ten minutes)."""
    f = run(SlidingWindow(600, 60.0), 7000, latency=uniform(0.05, 0.15), until=600.0, seed=4)
    assert f.held >= 0.9 * 10, summary(f, 10)
    assert f.limited_share <= 0.25, summary(f, 10)
    sent_in_first_minute = sum(1 for t in f.sent_at if 10.0 <= t < 60.0)
    assert sent_in_first_minute <= 120  # near the floor of 0.5/s, probing: not the rate it had
    later = [t for t in f.sent_at if t >= 120.0]
    most = max(sum(1 for t in later if a <= t < a + 1.0) for a in range(120, 560, 2))
    assert most <= 600  # a probe refills what expired; never more than the window's worth


def test_a_retry_storm_passes_the_same_pacer_and_neither_grows_nor_cuts_the_rate() -> None:
    """Every call the server decides between 20 s and 22 s answers 500 (a few hundred ids at
    once); they come back after their back-off, through the same controller."""

    def storm(now: float, _attempt: int) -> bool:
        return 20.0 <= now < 22.0

    f = run(TokenBucket(50), 3000, latency=uniform(0.05, 0.15), faults=storm, seed=5)
    assert f.failed >= 80
    assert f.limited_share <= 0.03, summary(f, 50)
    assert f.accepted_between(25.0, 35.0) >= 0.9 * 50, summary(f, 50)
    after_start = [t for t in f.sent_at if t >= 15.0]
    most = max(sum(1 for t in after_start if a <= t < a + 1.0) for a in range(15, 55))
    assert most <= 1.6 * 50  # retries take turns with first calls: the probes' excess at most
    assert f.controller is not None
    assert f.controller.snapshot()["faults"] == f.failed


# --- 302s, Retry-After and the record ----------------------------------------------------------


def test_302s_for_calls_sent_before_a_cut_do_not_cut_again() -> None:
    sim = Sim()
    limiter = controller(sim, 100.0)
    times = acquire_times(sim, limiter, 10)
    sim.run()
    sim.now = 0.8  # the ten went at 16/s, the last at 0.5625 s
    limiter.on_success(sent_at=times[0])
    for sent_at in times[1:]:
        limiter.on_rate_limited(None, sent_at=sent_at)
    snapshot = limiter.snapshot()
    assert (snapshot["cuts"], snapshot["rate_limited"]) == (1, 9)
    assert snapshot["cuts_by_reason"] == {"startup": 1}


def test_retry_after_of_0_pauses_nobody_and_the_limit_is_still_found() -> None:
    f = run(TokenBucket(50), 2000, latency=uniform(0.05, 0.15), retry_after=0.0, seed=6)
    assert f.controller is not None and f.controller.snapshot()["pauses"] == 0
    assert f.held >= 0.95 * 50, summary(f, 50)
    assert f.limited_share <= 0.03, summary(f, 50)


def test_retry_after_of_120_s_stops_every_call_then_resumes_paced_without_a_burst() -> None:
    sim = Sim()
    limiter = controller(sim, 100.0)
    first = acquire_times(sim, limiter, 5)
    sim.run()
    sim.now = 0.5  # the five went at 16/s, the last at 0.25 s
    limiter.on_rate_limited(120.0, sent_at=first[0])
    assert limiter.paused_until == pytest.approx(120.5)
    later = acquire_times(sim, limiter, 20, start=0.6)
    sim.run()
    assert min(later) == pytest.approx(120.5)
    rate = limiter.rate
    assert rate is not None and rate < 100.0
    gaps = [b - a for a, b in itertools.pairwise(later)]
    assert min(gaps) >= 1 / rate - 1e-9  # paced from the pause's end, not all at once
    snapshot = limiter.snapshot()
    assert (snapshot["pauses"], snapshot["paused_s"]) == (1, 120.0)


def test_retry_after_of_120_s_in_a_closed_loop_sends_nothing_while_paused() -> None:
    f = run(TokenBucket(20), 600, latency=uniform(0.05, 0.15), retry_after=120.0, seed=7)
    assert f.controller is not None
    first_refusal_answer = f.controller.snapshot()["last_cuts"][0]["at_s"]
    quiet = [t for t in f.sent_at if first_refusal_answer + 0.01 < t < first_refusal_answer + 119]
    assert quiet == []
    assert f.ok == 600 and f.limited <= 40


def test_the_snapshot_shows_rate_window_round_trips_and_the_last_cuts_with_reasons() -> None:
    f = run(TokenBucket(50), 1500, latency=uniform(0.05, 0.15), seed=8)
    assert f.controller is not None
    snap = f.controller.snapshot()
    assert set(snap) >= {"rate", "in_flight_limit", "round_trip_s", "base_round_trip_s",
                         "ceiling_estimate", "phase", "cuts", "cuts_by_reason", "last_cuts",
                         "rate_limited", "in_flight_max", "max_in_flight"}  # fmt: skip
    assert sum(snap["cuts_by_reason"].values()) == snap["cuts"] >= 2
    assert 1 <= len(snap["last_cuts"]) <= 5
    assert {c["reason"] for c in snap["last_cuts"]} <= {
        "startup", "probe", "cruise", "measure", "latency"}  # fmt: skip
    assert snap["round_trip_s"] == pytest.approx(0.1, abs=0.03)
    assert snap["rate"] == pytest.approx(CRUISE_GAIN * 50, rel=0.1)


def test_a_cut_and_a_retry_after_pause_are_reported_once_each() -> None:
    sim = Sim()
    seen: list[tuple[str, dict[str, Any]]] = []
    limiter = controller(sim, 100.0, on_event=lambda event, fields: seen.append((event, fields)))
    times = acquire_times(sim, limiter, 10)
    sim.run()
    sim.now = 0.6  # the ten went at 16/s, the last at 0.5625 s
    for sent_at in times:  # one overload: one cut, one pause however many 302s
        limiter.on_rate_limited(4.0, sent_at=sent_at)
    assert [event for event, _ in seen] == ["rate.cut", "rate.pause"]
    cut = seen[0][1]
    assert cut["reason"] == "startup" and cut["rate"] < cut["previous_rate"] == 16.0
    assert set(cut) == {"reason", "rate", "previous_rate", "ceiling_estimate", "in_flight_limit",
                        "cuts"}  # fmt: skip
    assert seen[1] == ("rate.pause", {"pause_s": 4.0, "rate": cut["rate"]})
    assert limiter.paused_until == pytest.approx(4.6)


def test_rounds_of_latency_ignore_302s_and_the_base_is_the_lowest_round_median() -> None:
    """A 302 that comes back fast is no news about queueing (Gradient2's dropped-call bug)."""

    def fast_refusals(rng: Any, _now: float, _in_flight: int) -> float:
        return rng.uniform(0.09, 0.11)

    latency: Latency = fast_refusals
    f = run(TokenBucket(30), 1200, latency=latency, seed=9)
    assert f.controller is not None
    base = f.controller.snapshot()["base_round_trip_s"]
    assert base is not None and 0.09 <= base <= 0.11
