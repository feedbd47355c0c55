"""pipeline.ratelimit: pacing, AIMD on 302 and the shared pause, on a simulated clock.

``Sim`` drives the controller's coroutines directly (no event loop): its ``sleep`` yields the
delay to the driver, which resumes the earliest sleeper after moving the clock forward.  Every
run is deterministic and 60 simulated seconds take a fraction of a real one.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any

import pytest

from pipeline.ratelimit import RateController


class _Sleep:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __await__(self) -> Generator[float, None, None]:
        yield self.seconds


class Sim:
    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Coroutine[Any, Any, None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await _Sleep(max(0.0, seconds))

    def spawn(self, coro: Coroutine[Any, Any, None], at: float | None = None) -> None:
        when = self.now if at is None else at
        heapq.heappush(self._queue, (when, next(self._seq), coro))

    def at(self, when: float, action: Callable[[], None]) -> None:
        async def run() -> None:
            action()

        self.spawn(run(), at=when)

    def run(self, until: float = float("inf")) -> None:
        while self._queue and self._queue[0][0] <= until:
            when, _, coro = heapq.heappop(self._queue)
            self.now = when
            try:
                delay = coro.send(None)
            except StopIteration:
                continue
            assert isinstance(delay, float), f"the controller awaited something else: {delay!r}"
            heapq.heappush(self._queue, (self.now + delay, next(self._seq), coro))
        for _, _, coro in self._queue:
            coro.close()
        self._queue.clear()


def controller(sim: Sim, rate: float | None, **kwargs: Any) -> RateController:
    return RateController(rate, clock=sim.clock, sleep=sim.sleep, **kwargs)


def acquire_times(sim: Sim, limiter: RateController, n: int, *, start: float = 0.0) -> list[float]:
    """Spawn one task per acquire at ``start``; return their send times in order."""
    times: list[float] = []

    async def one() -> None:
        times.append(await limiter.acquire())

    for _ in range(n):
        sim.spawn(one(), at=start)
    return times


# --- pacing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 8, 64])
def test_pacing_at_rate_r_gives_r_acquires_per_second_however_many_workers(workers: int) -> None:
    sim = Sim()
    limiter = controller(sim, 20.0)
    sent: list[float] = []

    async def worker() -> None:
        while True:
            sent.append(await limiter.acquire())

    for _ in range(workers):
        sim.spawn(worker())
    sim.run(until=10.0)
    assert len([t for t in sent if t < 10.0]) == 200
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(sent)}
    assert gaps == {0.05}


def test_burst_lets_that_many_calls_through_at_once_after_idle() -> None:
    sim = Sim()
    limiter = controller(sim, 10.0, burst=4.0)
    times = acquire_times(sim, limiter, 6, start=5.0)
    sim.run()
    assert times == pytest.approx([5.0, 5.0, 5.0, 5.0, 5.1, 5.2])


def test_uncapped_controller_never_waits() -> None:
    sim = Sim()
    limiter = controller(sim, None)
    times = acquire_times(sim, limiter, 500, start=1.0)
    sim.run()
    assert times == [1.0] * 500
    assert limiter.rate is None


def test_invalid_settings_are_refused() -> None:
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="rate must be"):
            RateController(bad)
    with pytest.raises(ValueError, match="burst"):
        RateController(1.0, burst=0.5)
    with pytest.raises(ValueError, match="min_rate"):
        RateController(1.0, min_rate=0.0)


# --- decrease on 302 -------------------------------------------------------------------------


def test_one_burst_of_302s_cuts_the_rate_by_0_7_once() -> None:
    sim = Sim()
    limiter = controller(sim, 100.0)
    times = acquire_times(sim, limiter, 10)
    sim.run()
    assert times[-1] == pytest.approx(0.09)
    sim.now = 0.1
    for sent_at in times:  # every refused call was sent before the cut
        limiter.on_rate_limited(None, sent_at=sent_at)
    assert limiter.rate == pytest.approx(70.0)
    assert limiter.snapshot() == {
        "rate": 70.0,
        "user_rate": 100.0,
        "ceiling_estimate": 100.0,
        "cuts": 1,
        "rate_limited": 10,
        "round_trip_s": 0.045,  # moving average of 0.10, 0.09, ... 0.01 s
    }


def test_a_302_for_a_call_sent_after_the_cut_cuts_again() -> None:
    sim = Sim()
    limiter = controller(sim, 100.0)
    first = acquire_times(sim, limiter, 1)
    sim.run()
    limiter.on_rate_limited(None, sent_at=first[0])
    assert limiter.rate == pytest.approx(70.0)
    later = acquire_times(sim, limiter, 1, start=0.1)
    sim.run()
    sim.now = 0.2
    limiter.on_rate_limited(None, sent_at=later[0])
    assert limiter.snapshot()["cuts"] == 2
    assert limiter.rate is not None and limiter.rate < 70.0


def test_without_send_times_302s_within_half_a_second_are_one_cut() -> None:
    sim = Sim()
    limiter = controller(sim, 100.0)
    for t in (0.0, 0.1, 0.2, 0.3, 0.49):
        sim.now = t
        limiter.on_rate_limited(None)
    assert limiter.snapshot()["cuts"] == 1
    assert limiter.rate == pytest.approx(70.0)
    sim.now = 0.6
    limiter.on_rate_limited(None)
    assert limiter.snapshot()["cuts"] == 2
    assert limiter.rate == pytest.approx(49.0)  # 70 * 0.7: nothing measured, nominal rate
    assert limiter.snapshot()["rate_limited"] == 6


def test_the_cut_starts_from_the_rate_actually_sent_not_the_set_one() -> None:
    """--rate 1000 with calls going out at 100/s: the cut lands at 70/s, not 700/s."""
    sim = Sim()
    limiter = controller(sim, 1000.0)

    async def sender() -> None:
        while sim.now < 2.0:
            await limiter.acquire()
            limiter.on_success()
            await sim.sleep(0.01)

    sim.spawn(sender())
    sim.run(until=2.0)
    limiter.on_rate_limited(None)
    assert limiter.rate == pytest.approx(70.0, rel=0.02)
    assert limiter.snapshot()["ceiling_estimate"] == pytest.approx(100.0, rel=0.02)


def test_uncapped_first_302_starts_from_observed_successes() -> None:
    sim = Sim()
    limiter = controller(sim, None)

    async def sender() -> None:
        while sim.now < 3.0:
            await limiter.acquire()
            await sim.sleep(0.04)  # round trip
            limiter.on_success()

    for _ in range(2):
        sim.spawn(sender())
    sim.run(until=3.0)
    limiter.on_rate_limited(None)
    assert limiter.rate == pytest.approx(0.7 * 50, rel=0.05)


def test_uncapped_first_302_with_nothing_measured_starts_at_10_per_second() -> None:
    limiter = controller(Sim(), None)
    limiter.on_rate_limited(None)
    assert limiter.rate == 10.0


def test_cuts_never_go_below_min_rate() -> None:
    sim = Sim()
    limiter = controller(sim, 10.0, min_rate=2.0)
    for step in range(30):
        sim.now = step * 1.0
        limiter.on_rate_limited(None)
    assert limiter.rate == 2.0
    assert limiter.snapshot()["cuts"] == 30


def test_no_cut_while_the_rate_is_below_what_the_server_just_accepted() -> None:
    """A sliding-window limiter still refusing after a cut must not drive the rate down."""
    sim = Sim()
    limiter = controller(sim, 100.0)

    async def sender() -> None:
        while True:
            await limiter.acquire()
            limiter.on_success()

    sim.spawn(sender())
    sim.at(1.0, lambda: limiter.on_rate_limited(None))  # sent at 100/s: rate 70
    # At 1.6 s the server accepted 40 + 42 calls in the last second: 82/s, above 70/s.
    sim.at(1.6, lambda: limiter.on_rate_limited(None))
    sim.run(until=1.61)
    assert limiter.snapshot()["cuts"] == 1
    assert limiter.snapshot()["rate_limited"] == 2
    assert limiter.rate is not None and 70.0 <= limiter.rate < 75.0  # growing, not cut


def test_a_302_at_the_known_ceiling_is_a_gentle_cut() -> None:
    sim = Sim()
    limiter = controller(sim, 100.0)
    limiter.on_rate_limited(None)  # ceiling 100, rate 70
    sim.now = 10.0
    limiter.on_rate_limited(None)  # at 70, nothing measured: 70 < 90, a new ceiling
    assert limiter.rate == pytest.approx(49.0)
    sim.now = 20.0
    limiter._rate = 68.0  # recovered to just below the ceiling estimate of 70
    limiter.on_rate_limited(None)
    assert limiter.rate == pytest.approx(0.9 * 68.0)


def test_answers_still_in_flight_are_not_taken_for_a_low_accepted_rate() -> None:
    """Round trips of 1 s: two answers back after 1.1 s do not mean the server takes 2/s."""
    sim = Sim()
    limiter = controller(sim, 1000.0)
    times = acquire_times(sim, limiter, 128)
    sim.run()
    sim.now = 1.05
    limiter.on_success(sent_at=times[0])
    limiter.on_success(sent_at=times[1])
    sim.now = 1.1
    limiter.on_rate_limited(None, sent_at=times[60])
    # Cut from the ~72/s sent over the last round trip (75 calls in 1.048 s), not from 2/s.
    assert limiter.rate == pytest.approx(0.7 * 75 / 1.048, rel=0.01)


# --- the shared pause ------------------------------------------------------------------------


def test_retry_after_pauses_every_acquirer_then_pacing_resumes() -> None:
    sim = Sim()
    limiter = controller(sim, 100.0)
    limiter.on_rate_limited(5.0)
    assert limiter.paused_until == 5.0
    times = acquire_times(sim, limiter, 4, start=0.1)
    sim.run()
    interval = 1 / limiter.rate  # type: ignore[operator]
    assert times == pytest.approx([5.0, 5.0 + interval, 5.0 + 2 * interval, 5.0 + 3 * interval])


def test_a_pause_that_starts_while_callers_wait_for_their_slot_holds_them_too() -> None:
    sim = Sim()
    limiter = controller(sim, 10.0)
    times = acquire_times(sim, limiter, 5)  # slots at 0.0, 0.1, 0.2, 0.3, 0.4
    sim.at(0.15, lambda: limiter.on_rate_limited(2.0))
    sim.run()
    assert times[:2] == pytest.approx([0.0, 0.1])
    assert min(times[2:]) >= 2.15
    assert all(b - a >= 1 / 7 - 1e-9 for a, b in itertools.pairwise(times[2:]))


def test_a_cut_without_retry_after_pauses_for_one_new_interval() -> None:
    sim = Sim()
    limiter = controller(sim, 10.0)
    sim.now = 1.0
    limiter.on_rate_limited(None)
    assert limiter.paused_until == pytest.approx(1.0 + 1 / 7)


def test_rates_are_measured_after_a_retry_after_pause_not_across_it() -> None:
    sim = Sim()
    limiter = controller(sim, 100.0)

    async def sender() -> None:
        while True:
            await limiter.acquire()
            limiter.on_success()

    sim.spawn(sender())
    sim.at(1.0, lambda: limiter.on_rate_limited(5.0))  # sent at 100/s: rate 70, paused to 6
    sim.at(6.3, lambda: limiter.on_rate_limited(None))
    sim.run(until=6.31)
    # About 0.7 x the ~72/s sent since the pause ended; across the pause it would be ~15.
    assert limiter.snapshot()["cuts"] == 2
    assert limiter.rate is not None and 45.0 < limiter.rate < 55.0


# --- increase --------------------------------------------------------------------------------


def test_successes_without_a_302_never_change_the_rate() -> None:
    sim = Sim()
    capped, uncapped = controller(sim, 50.0), controller(sim, None)
    for i in range(1000):
        sim.now = i * 0.01
        capped.on_success()
        uncapped.on_success()
    assert capped.rate == 50.0
    assert uncapped.rate is None


def _rate_after_successes(sim: Sim, limiter: RateController, until: float) -> float:
    while sim.now < until:
        sim.now = round(sim.now + 0.01, 6)
        limiter.on_success()
    assert limiter.rate is not None
    return limiter.rate


def test_recovery_is_halfway_back_to_the_ceiling_per_second_then_slow_probing() -> None:
    sim = Sim()
    limiter = controller(sim, None)

    async def sender() -> None:
        while sim.now < 1.0:
            await limiter.acquire()
            await sim.sleep(0.01)

    sim.spawn(sender())
    sim.run(until=1.0)
    limiter.on_rate_limited(None)  # sent at 100/s: ceiling 100, rate 70
    assert limiter.rate == pytest.approx(70.0, rel=0.02)
    # No growth while 302s may still be arriving (0.5 s), then halfway back per second.
    assert _rate_after_successes(sim, limiter, 1.5) == pytest.approx(70.0, rel=0.02)
    assert _rate_after_successes(sim, limiter, 2.5) == pytest.approx(85.0, rel=0.02)
    assert _rate_after_successes(sim, limiter, 3.5) == pytest.approx(92.5, rel=0.02)
    assert _rate_after_successes(sim, limiter, 4.5) == pytest.approx(96.25, rel=0.02)
    # Close to and past the ceiling estimate: about +2/s per second (2% of the rate).
    near = _rate_after_successes(sim, limiter, 7.5)
    later = _rate_after_successes(sim, limiter, 12.5)
    assert 100.0 < near < 105.0
    assert 5 * 2.0 < later - near < 5 * 2.3


def test_callers_already_queued_speed_up_when_the_rate_rises() -> None:
    """Slots are not booked at the rate in force when a caller queued."""
    sim = Sim()
    limiter = controller(sim, 100.0)
    limiter.on_rate_limited(None)  # ceiling 100, rate 70
    times = acquire_times(sim, limiter, 140, start=0.02)

    async def successes() -> None:
        while sim.now < 5.0:
            await sim.sleep(0.01)
            limiter.on_success()

    sim.spawn(successes())
    sim.run()
    # At a fixed 70/s the last would go at 2.0 s; the rate rising from 0.5 s on brings it in.
    assert 1.7 < max(times) < 1.9
    assert times == sorted(times)


def test_round_trip_is_a_moving_average_of_answer_times() -> None:
    sim = Sim()
    limiter = controller(sim, None)
    sim.now = 2.0
    limiter.on_success(sent_at=0.0)
    assert limiter.snapshot()["round_trip_s"] == 2.0
    sim.now = 3.0
    limiter.on_success(sent_at=2.0)
    assert limiter.snapshot()["round_trip_s"] == 1.8


def test_recovery_never_exceeds_the_users_rate() -> None:
    sim = Sim()
    limiter = controller(sim, 50.0)
    limiter.on_rate_limited(None)
    assert _rate_after_successes(sim, limiter, 60.0) == 50.0


def test_an_idle_spell_is_not_credited_as_success_time() -> None:
    sim = Sim()
    limiter = controller(sim, 100.0)
    limiter.on_rate_limited(None)  # ceiling 100, rate 70
    sim.now = 0.6
    limiter.on_success()
    before = limiter.rate
    assert before is not None
    sim.now = 600.0  # ten minutes without a call
    limiter.on_success()
    assert limiter.rate == pytest.approx(100 - (100 - before) * 0.5)  # one second's worth


# --- closed loop: a server with a hidden limit -----------------------------------------------


class TokenBucketServer:
    def __init__(self, limit: float, burst: float) -> None:
        self.limit, self.burst = limit, burst
        self.tokens, self.last = burst, 0.0

    def admit(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.limit)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class SlidingWindowServer:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.accepted: deque[float] = deque()

    def admit(self, now: float) -> bool:
        while self.accepted and self.accepted[0] <= now - 1.0:
            self.accepted.popleft()
        if len(self.accepted) < self.limit:
            self.accepted.append(now)
            return True
        return False


@dataclass
class RunFigures:
    calls: int
    ok: int
    limited: int
    seconds: float
    limit: float

    @property
    def efficiency(self) -> float:
        return self.ok / self.seconds / self.limit

    @property
    def limited_share(self) -> float:
        return self.limited / self.calls


def simulate(
    server: TokenBucketServer | SlidingWindowServer,
    start_rate: float | None,
    *,
    limit: float = 50.0,
    seconds: float = 60.0,
    workers: int = 16,
    arrival_jitter: float | None = None,
    retry_after: float | None = None,
    round_trip: tuple[float, float] = (0.05, 0.15),
    seed: int = 1,
) -> RunFigures:
    """16 workers, round trips of 50-150 ms; the server decides when the request arrives.

    Every 302 carries ``retry_after`` (None: no Retry-After header).

    ``arrival_jitter`` None: the request arrives half-way through its round trip (up to 25 ms
    of jitter between calls); a number: within that many seconds of being sent (loopback).
    """
    sim = Sim()
    rng = random.Random(seed)
    limiter = controller(sim, start_rate)
    figures = RunFigures(0, 0, 0, seconds, limit)

    async def worker() -> None:
        while True:
            sent_at = await limiter.acquire()
            if sim.now >= seconds:
                return
            figures.calls += 1
            trip = rng.uniform(*round_trip)
            there = trip / 2 if arrival_jitter is None else rng.uniform(0, arrival_jitter)
            await sim.sleep(there)
            accepted = server.admit(sim.now)
            await sim.sleep(trip - there)
            if accepted:
                figures.ok += 1
                limiter.on_success(sent_at=sent_at)
            else:
                figures.limited += 1
                limiter.on_rate_limited(retry_after, sent_at=sent_at)

    for _ in range(workers):
        sim.spawn(worker())
    sim.run(until=seconds + 1)
    return figures


SERVERS: dict[str, Callable[[], TokenBucketServer | SlidingWindowServer]] = {
    "bucket-burst-50": lambda: TokenBucketServer(50, 50),
    "bucket-burst-5": lambda: TokenBucketServer(50, 5),
    "sliding-window": lambda: SlidingWindowServer(50),
}


@pytest.mark.parametrize("jitter", [None, 0.002], ids=["jitter-25ms", "loopback"])
@pytest.mark.parametrize("server", sorted(SERVERS))
def test_started_20x_too_high_it_converges_near_the_hidden_limit(
    server: str, jitter: float | None
) -> None:
    figures = simulate(SERVERS[server](), 1000.0, arrival_jitter=jitter)
    summary = f"{figures.efficiency:.3f} of the limit, {figures.limited_share:.2%} limited"
    assert figures.efficiency >= 0.85, summary
    assert figures.limited_share <= 0.05, summary


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_uncapped_it_converges_near_the_hidden_limit(server: str) -> None:
    figures = simulate(SERVERS[server](), None, arrival_jitter=0.002)
    summary = f"{figures.efficiency:.3f} of the limit, {figures.limited_share:.2%} limited"
    assert figures.efficiency >= 0.85, summary
    assert figures.limited_share <= 0.05, summary


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_with_round_trips_of_seconds_it_still_converges(server: str) -> None:
    """128 workers, answers after 1-3 s (the real API is slow): feedback comes late.

    The first round trip at 20x the limit is paid for whatever the controller does (about 100
    302s), so this runs 120 s and asks less than the fast-answer cases.
    """
    figures = simulate(
        SERVERS[server](),
        1000.0,
        workers=128,
        round_trip=(1.0, 3.0),
        arrival_jitter=0.002,
        seconds=120.0,
    )
    summary = f"{figures.efficiency:.3f} of the limit, {figures.limited_share:.2%} limited"
    assert figures.efficiency >= 0.75, summary
    assert figures.limited_share <= 0.05, summary


def test_honouring_retry_after_still_converges_near_the_limit() -> None:
    figures = simulate(SERVERS["bucket-burst-50"](), 1000.0, retry_after=1.0, arrival_jitter=0.002)
    summary = f"{figures.efficiency:.3f} of the limit, {figures.limited_share:.2%} limited"
    assert figures.efficiency >= 0.85, summary
    assert figures.limited_share <= 0.05, summary


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_told_the_right_rate_it_holds_it_with_almost_no_302(server: str) -> None:
    figures = simulate(SERVERS[server](), 50.0, arrival_jitter=0.002)
    summary = f"{figures.efficiency:.3f} of the limit, {figures.limited_share:.2%} limited"
    assert figures.efficiency >= 0.93, summary
    assert figures.limited_share <= 0.01, summary


# --- what the controller reports -------------------------------------------------------------


def test_a_cut_and_a_retry_after_pause_are_reported_once_each() -> None:
    sim = Sim()
    seen: list[tuple[str, dict[str, Any]]] = []
    limiter = controller(sim, 100.0, on_event=lambda event, fields: seen.append((event, fields)))
    times = acquire_times(sim, limiter, 10)
    sim.run()
    sim.now = 0.1
    for sent_at in times:  # one overload: one cut, one pause however many 302s
        limiter.on_rate_limited(4.0, sent_at=sent_at)
    assert seen == [
        (
            "rate.cut",
            {"rate": 70.0, "previous_rate": 100.0, "ceiling_estimate": 100.0, "cuts": 1,
             "pause_s": 4.0},
        ),
        ("rate.pause", {"pause_s": 4.0, "rate": 70.0}),
    ]  # fmt: skip
    assert limiter.paused_until == pytest.approx(4.1)


def test_a_cut_without_retry_after_reports_its_one_interval_pause_and_no_pause_event() -> None:
    sim = Sim()
    seen: list[tuple[str, float]] = []
    limiter = controller(
        sim, 10.0, on_event=lambda event, fields: seen.append((event, fields["pause_s"]))
    )
    sim.now = 1.0
    limiter.on_rate_limited(None)
    assert seen == [("rate.cut", round(1 / 7, 3))]
