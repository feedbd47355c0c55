"""The fetch loop: a pool of workers, a not-before heap for retries, one shared controller.

Rules:
1. At most ``concurrency`` calls are in flight (the pool's size, the user's cap), and no more
   than the controller's window allows: an id is handed to a worker only while fewer calls than
   ``limiter.window`` are under way, so ids never queue up inside the controller (a stop, or a
   retry that comes due, does not wait behind hundreds of ids already handed out).  An id
   waiting out its back-off sits in a heap, not in a worker, so retries never hold up other ids.
2. Every call goes through ``ProfileClient.fetch``, which takes its turn from the shared rate
   controller first: first attempts and retries alike.
3. Outcomes are recorded in the ledger (the SQLite state) the moment they arrive; a success is
   committed before it counts as done, so a kill loses at most the calls in flight.
4. 302 costs the id no attempt (the limiter slows everyone down); 301/500/503/transport faults
   cost one and come back after ``backoff_delay`` (full jitter; base and cap from ``RunConfig``);
   when attempts run out the id is failed as retryable (a rerun tries it again); permanent
   errors fail it for good.
5. An account-level error (or a gone endpoint) stops dispatching at once; the calls already in
   flight finish and are recorded; the error is raised after they have.  ``max_calls`` and a
   stop request (SIGINT/SIGTERM) stop dispatching the same way.
6. What happens to ids is reported through the injected ``on_event`` callback: ``id.retry`` and
   ``id.failed`` always, ``call.done`` (one per call, with the HTTP status and latency the
   client traces) only when ``call_events`` is set, so the loop pays nothing for it otherwise.
   ``current_tally`` gives the counts with the limiter's rate and the retry backlog refreshed.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from pipeline.client import ProfileClient
from pipeline.config import DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP
from pipeline.crashpoints import crash_point
from pipeline.errors import (
    CallBudgetExhausted,
    PermanentError,
    RateLimitedError,
    StopRun,
    TransientError,
    WrongUserError,
)
from pipeline.ratelimit import RateController
from pipeline.records import CallTrace, FetchedProfile, Tally

WINDOW_RECHECK_S: Final = 0.25  # s between looks at the controller's window while it binds


def backoff_delay(
    attempt: int,
    *,
    base: float = DEFAULT_BACKOFF_BASE,
    cap: float = DEFAULT_BACKOFF_CAP,
    rng: Callable[[], float] = random.random,
) -> float:
    """Exponential back-off with full jitter: uniform in [0, min(cap, base * 2**(attempt-1)))."""
    exponent = min(max(attempt, 1) - 1, 64)  # no float overflow however many attempts
    return rng() * min(cap, base * 2.0**exponent)


class PendingLike(Protocol):
    @property
    def user_id(self) -> str: ...
    @property
    def attempts(self) -> int: ...


class Ledger(Protocol):
    """Where outcomes go (``state.State`` in production)."""

    def record_success(self, profile: FetchedProfile, attempts: int) -> None: ...
    def record_retry(self, user_id: str, attempts: int, code: int | None, message: str) -> None: ...
    def record_failure(
        self, user_id: str, attempts: int, code: int | None, message: str, *, retryable: bool
    ) -> None: ...
    def record_wrong_user(
        self, user_id: str, attempts: int, message: str, body: bytes, request_id: str | None
    ) -> None: ...


@dataclass(order=True, slots=True)
class _Retry:
    due: float
    seq: int
    user_id: str = field(compare=False)
    attempts: int = field(compare=False)


@dataclass(slots=True)
class FetchOutcome:
    """What the loop did; ``stopped_by`` is the error that ended it early, if any."""

    tally: Tally
    stopped_by: StopRun | None = None
    interrupted: bool = False


class Fetcher:
    def __init__(
        self,
        client: ProfileClient,
        ledger: Ledger,
        *,
        concurrency: int,
        max_attempts: int,
        max_calls: int | None = None,
        on_success: Callable[[], None] = lambda: None,
        on_progress: Callable[[Tally], None] = lambda _t: None,
        limiter: RateController | None = None,
        backoff: Callable[[int], float] = backoff_delay,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        call_events: bool = False,
    ) -> None:
        self._client = client
        self._ledger = ledger
        self._concurrency = concurrency
        self._max_attempts = max_attempts
        self._max_calls = max_calls
        self._on_success = on_success
        self._on_progress = on_progress
        self._limiter = limiter
        self._backoff = backoff
        self._clock = clock
        self._on_event = on_event
        self._call_events = call_events and on_event is not None
        self._heap: list[_Retry] = []
        self._seq = itertools.count()
        self._tally = Tally()
        self._stop: StopRun | None = None
        self._interrupted = False
        self._fatal: Exception | None = None
        self._wake = asyncio.Event()

    def current_tally(self) -> Tally:
        """The live counts, with the controller's figures and the retry backlog as of now."""
        tally = self._tally
        tally.retrying = len(self._heap)
        limiter = self._limiter
        if limiter is not None:
            tally.rate = limiter.rate
            tally.window = min(self._concurrency, limiter.window)
            tally.in_flight = limiter.in_flight
            tally.round_trip_s = limiter.round_trip
        return tally

    def request_stop(self) -> None:
        """Stop dispatching (SIGINT/SIGTERM); calls in flight still finish and are recorded."""
        self._interrupted = True
        self._wake.set()

    async def run(self, pending: Iterator[PendingLike]) -> FetchOutcome:
        queue: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue(maxsize=1)
        in_flight = 0
        budget_spent = False

        async def worker() -> None:
            nonlocal in_flight
            while (item := await queue.get()) is not None:
                try:
                    if self._stopping():
                        # Handed over just before the stop: not called, so not counted.
                        self._tally.calls -= 1
                        continue
                    await self._call(*item)
                except Exception as exc:  # a ledger (disk) error or a bug: stop, then re-raise
                    if self._fatal is None:
                        self._fatal = exc
                finally:
                    in_flight -= 1
                    self._wake.set()

        workers = [asyncio.create_task(worker()) for _ in range(self._concurrency)]
        try:
            fresh: Iterator[PendingLike] | None = pending
            while not self._stopping():
                if in_flight >= self._window():
                    # A call finishing (or a stop) wakes the loop; the window may also grow
                    # with time alone (before the first answer), hence the re-check.
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), WINDOW_RECHECK_S)
                    continue
                item = self._next_due()
                if item is None and fresh is not None:
                    nxt = next(fresh, None)
                    if nxt is None:
                        fresh = None
                        continue
                    item = (nxt.user_id, nxt.attempts)
                if item is None:
                    if not self._heap and in_flight == 0:
                        break
                    await self._sleep_until_due()
                    continue
                if self._max_calls is not None and self._tally.calls >= self._max_calls:
                    budget_spent = True
                    break
                self._tally.calls += 1
                in_flight += 1
                await queue.put(item)
        finally:
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        if self._fatal is not None:
            raise self._fatal
        if budget_spent and self._stop is None:
            self._stop = CallBudgetExhausted(
                f"--max-calls {self._max_calls} reached; the rest stays pending: "
                "rerun the same command to go on"
            )
        return FetchOutcome(self._tally, self._stop, self._interrupted)

    def _window(self) -> int:
        limiter = self._limiter
        return self._concurrency if limiter is None else min(self._concurrency, limiter.window)

    def _stopping(self) -> bool:
        return self._stop is not None or self._interrupted or self._fatal is not None

    def _next_due(self) -> tuple[str, int] | None:
        if self._heap and self._heap[0].due <= self._clock():
            retry = heapq.heappop(self._heap)
            return retry.user_id, retry.attempts
        return None

    async def _sleep_until_due(self) -> None:
        self._wake.clear()
        timeout = max(0.0, self._heap[0].due - self._clock()) if self._heap else None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _retry_later(self, user_id: str, attempts: int, delay: float) -> None:
        heapq.heappush(
            self._heap, _Retry(self._clock() + delay, next(self._seq), user_id, attempts)
        )
        self._wake.set()

    async def _call(self, user_id: str, attempts: int) -> None:
        tally = self._tally
        trace = CallTrace() if self._call_events else None
        code: int | None = 0
        outcome = "ok"
        try:
            if trace is None:
                profile = await self._client.fetch(user_id)
            else:
                profile = await self._client.fetch(user_id, trace=trace)
        except RateLimitedError as exc:
            code, outcome = exc.code, "rate_limited"
            tally.rate_limited += 1
            # The limiter has already slowed everyone down and paused; no attempt is used.
            self._retry_later(user_id, attempts, 0.0)
        except TransientError as exc:
            code = exc.code
            attempts += 1
            if attempts >= self._max_attempts:
                outcome = "failed"
                self._ledger.record_failure(
                    user_id, attempts, exc.code, exc.message, retryable=True
                )
                tally.failed += 1
                tally.done += 1
                self._event_failed(user_id, attempts, exc, retryable=True)
            else:
                outcome = "retry"
                self._ledger.record_retry(user_id, attempts, exc.code, exc.message)
                tally.retried += 1
                delay = self._backoff(attempts)
                self._retry_later(user_id, attempts, delay)
                if self._on_event is not None:
                    self._on_event(
                        "id.retry",
                        {
                            "user_id": user_id,
                            "code": exc.code,
                            "attempt": attempts,
                            "retry_in_s": round(delay, 3),
                            "message": exc.message,
                        },
                    )
        except WrongUserError as exc:
            code, outcome = exc.code, "failed"
            attempts += 1
            self._ledger.record_wrong_user(user_id, attempts, exc.message, exc.body, exc.request_id)
            tally.wrong_user += 1
            tally.failed += 1
            tally.done += 1
            self._event_failed(user_id, attempts, exc, retryable=False)
        except PermanentError as exc:
            code, outcome = exc.code, "failed"
            attempts += 1
            self._ledger.record_failure(user_id, attempts, exc.code, exc.message, retryable=False)
            tally.failed += 1
            tally.done += 1
            self._event_failed(user_id, attempts, exc, retryable=False)
        except StopRun as exc:
            code, outcome = getattr(exc, "code", None), "stopped"
            # The id stays pending for the next run; only the first such error is reported.
            if self._stop is None:
                self._stop = exc
            self._wake.set()
        else:
            crash_point("after_response")
            self._ledger.record_success(profile, attempts + 1)
            crash_point("after_store")
            tally.fetched += 1
            tally.done += 1
            self._on_success()
        if trace is not None and self._on_event is not None:
            latency = trace.latency_s
            self._on_event(
                "call.done",
                {
                    "user_id": user_id,
                    "attempt": attempts if outcome in ("retry", "failed") else attempts + 1,
                    "code": code,
                    "http_status": trace.http_status,
                    "latency_ms": None if latency is None else round(latency * 1000, 1),
                    "outcome": outcome,
                },
            )
        self._on_progress(self.current_tally())

    def _event_failed(
        self, user_id: str, attempts: int, exc: TransientError | PermanentError, *, retryable: bool
    ) -> None:
        if self._on_event is not None:
            self._on_event(
                "id.failed",
                {
                    "user_id": user_id,
                    "code": exc.code,
                    "attempt": attempts,
                    "retryable": retryable,
                    "message": exc.message,
                },
            )
