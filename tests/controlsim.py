"""A simulated clock and modelled servers for the rate controller (tests/test_ratelimit.py).

``Sim`` drives the controller's coroutines directly (no event loop): its ``sleep`` yields the
delay to the driver, which resumes the earliest sleeper after moving the clock forward; its
``event`` parks a coroutine until ``set``.  Every run is deterministic, and ten simulated
minutes take about a second.

``run`` plays a fetch loop against a modelled server: ``workers`` callers take ids (a 302's id
first, at once, as the fetcher does; a transient failure's id after its back-off), acquire,
reach the server after a one-way delay, where it decides (as the sandbox does) and answers after
the latency it draws.  The figures are the server's, like the bench's ledger.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.ratelimit import RateController


class _Sleep:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __await__(self) -> Generator[float, None, None]:
        yield self.seconds


class SimEvent:
    """``asyncio.Event`` on the simulated clock (the controller's window gate)."""

    def __init__(self, sim: Sim) -> None:
        self._sim = sim
        self._set = False
        self._parked: list[Coroutine[Any, Any, None]] = []

    def set(self) -> None:
        self._set = True
        for coro in self._parked:
            self._sim.resume(coro)
        self._parked.clear()

    def wait(self) -> _Wait:
        return _Wait(self)


class _Wait:
    def __init__(self, event: SimEvent) -> None:
        self.event = event

    def __await__(self) -> Generator[Any, None, None]:
        if not self.event._set:
            yield self.event


class Sim:
    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Coroutine[Any, Any, None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await _Sleep(max(0.0, seconds))

    def event(self) -> SimEvent:
        return SimEvent(self)

    def spawn(self, coro: Coroutine[Any, Any, None], at: float | None = None) -> None:
        when = self.now if at is None else at
        heapq.heappush(self._queue, (when, next(self._seq), coro))

    def resume(self, coro: Coroutine[Any, Any, None]) -> None:
        heapq.heappush(self._queue, (self.now, next(self._seq), coro))

    def at(self, when: float, action: Callable[[], None]) -> None:
        async def run() -> None:
            action()

        self.spawn(run(), at=when)

    def run(self, until: float = math.inf) -> None:
        while self._queue and self._queue[0][0] <= until:
            when, _, coro = heapq.heappop(self._queue)
            self.now = when
            try:
                awaited = coro.send(None)
            except StopIteration:
                continue
            if isinstance(awaited, SimEvent):
                awaited._parked.append(coro)
                continue
            assert isinstance(awaited, float), f"the controller awaited something else: {awaited!r}"
            heapq.heappush(self._queue, (self.now + awaited, next(self._seq), coro))
        for _, _, coro in self._queue:
            coro.close()
        self._queue.clear()


def controller(sim: Sim, rate: float | None = None, **kwargs: Any) -> RateController:
    return RateController(rate, clock=sim.clock, sleep=sim.sleep, event=sim.event, **kwargs)


# --- servers -----------------------------------------------------------------------------------


class Server(Protocol):
    def admit(self, now: float) -> bool: ...


@dataclass
class TokenBucket:
    """The sandbox's limiter: ``limit`` a second, a burst of ``burst`` (one second's worth)."""

    limit: float
    burst: float | None = None
    schedule: tuple[tuple[float, float], ...] = ()  # (from time, limit), as the sandbox's

    def __post_init__(self) -> None:
        self.tokens = self.burst if self.burst is not None else self.limit
        self.last = 0.0

    def admit(self, now: float) -> bool:
        for start, limit in self.schedule:
            if now >= start:
                self.limit = limit
        burst = self.burst if self.burst is not None else max(1.0, self.limit)
        self.tokens = min(burst, self.tokens + (now - self.last) * self.limit)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class SlidingWindow:
    """At most ``limit`` accepted calls in any ``window`` seconds."""

    limit: int
    window: float = 1.0
    accepted: deque[float] = field(default_factory=deque)

    def admit(self, now: float) -> bool:
        while self.accepted and self.accepted[0] <= now - self.window:
            self.accepted.popleft()
        if len(self.accepted) < self.limit:
            self.accepted.append(now)
            return True
        return False


class Unlimited:
    def admit(self, now: float) -> bool:
        return True


# --- a fetch loop against a server -------------------------------------------------------------


@dataclass
class Figures:
    ids: int
    calls: int = 0
    ok: int = 0
    limited: int = 0
    failed: int = 0
    first_call: float = math.nan
    last_ok: float = math.nan
    finished: float = math.nan
    accepted_at: list[float] = field(default_factory=list)  # server decision times
    sent_at: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # of accepted calls
    in_flight_max: int = 0
    controller: RateController | None = None

    @property
    def limited_share(self) -> float:
        return self.limited / self.calls if self.calls else 0.0

    @property
    def held(self) -> float:
        """Accepted calls per second from the first call to the last acceptance (the bench's)."""
        return self.ok / (self.last_ok - self.first_call)

    def accepted_between(self, start: float, end: float) -> float:
        return sum(1 for t in self.accepted_at if start <= t < end) / (end - start)

    def max_sent_in_any(self, seconds: float) -> int:
        times, best, j = sorted(self.sent_at), 0, 0
        for i, t in enumerate(times):
            while times[j] <= t - seconds:
                j += 1
            best = max(best, i - j + 1)
        return best

    def median_latency(self) -> float:
        values = sorted(self.latencies)
        return values[len(values) // 2]


Latency = Callable[[random.Random, float, int], float]  # (rng, now, server in flight) -> s


def uniform(lo: float, hi: float) -> Latency:
    return lambda rng, _now, _in_flight: rng.uniform(lo, hi)


def capacity(base: float, slots: int) -> Latency:
    """The sandbox's capacity mode: base latency x max(1, in flight / slots)."""
    return lambda _rng, _now, in_flight: base * max(1.0, in_flight / slots)


def run(
    server: Server,
    ids: int,
    *,
    latency: Latency,
    rate: float | None = None,
    workers: int = 512,
    max_in_flight: int | None = None,
    seed: int = 1,
    until: float = 3600.0,
    faults: Callable[[float, int], bool] | None = None,
    backoff: Callable[[random.Random, int], float] = lambda rng, a: rng.uniform(0, 0.5 * 2**a),
    retry_after: float | None = None,
    one_way: float = 0.001,
    **kwargs: Any,
) -> Figures:
    """``ids`` ids through ``workers`` callers; ``faults(now, attempt)`` True: a 500 answer."""
    sim = Sim()
    rng = random.Random(seed)
    cap = {} if max_in_flight is None else {"max_in_flight": max_in_flight}
    limiter = controller(sim, rate, **cap, **kwargs)
    figures = Figures(ids, controller=limiter)
    fresh = iter(range(ids))
    again: deque[tuple[int, int]] = deque()  # 302s: at once
    later: list[tuple[float, int, int]] = []  # transient failures: after a back-off
    done = 0
    server_in_flight = 0
    wake = [sim.event()]  # set when an id comes back to be called again

    def work_arrives() -> None:
        event, wake[0] = wake[0], sim.event()
        event.set()

    def next_id() -> tuple[int, int] | None:
        if again:
            return again.popleft()
        if later and later[0][0] <= sim.now:
            _, uid, attempt = heapq.heappop(later)
            return uid, attempt
        uid = next(fresh, None)
        return None if uid is None else (uid, 0)

    async def worker() -> None:
        nonlocal done, server_in_flight
        while done < ids:
            item = next_id()
            if item is None:
                await wake[0].wait()
                continue
            uid, attempt = item
            sent = await limiter.acquire()
            figures.calls += 1
            figures.sent_at.append(sent)
            if math.isnan(figures.first_call):
                figures.first_call = sent
            await sim.sleep(one_way)
            accepted = server.admit(sim.now)
            server_in_flight += 1
            figures.in_flight_max = max(figures.in_flight_max, server_in_flight)
            delay = latency(rng, sim.now, server_in_flight)
            decided = sim.now
            await sim.sleep(delay)
            server_in_flight -= 1
            if not accepted:
                figures.limited += 1
                limiter.on_rate_limited(retry_after, sent_at=sent)
                again.append((uid, attempt))
                work_arrives()
            elif faults is not None and faults(decided, attempt):
                figures.failed += 1
                limiter.on_success(sent_at=sent, fault=True)
                due = sim.now + backoff(rng, attempt)
                heapq.heappush(later, (due, uid, attempt + 1))
                sim.at(due, work_arrives)
            else:
                figures.ok += 1
                figures.accepted_at.append(decided)
                figures.latencies.append(delay)
                figures.last_ok = decided
                limiter.on_success(sent_at=sent)
                done += 1
                if done == ids:
                    work_arrives()  # the idle callers see that the run is over
        figures.finished = sim.now

    for _ in range(workers):
        sim.spawn(worker())
    sim.run(until=until)
    return figures
