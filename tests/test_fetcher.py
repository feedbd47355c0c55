"""The fetch loop's scheduling rules, with a scripted fake client and an in-memory ledger."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from pipeline.errors import (
    AccountError,
    CallBudgetExhausted,
    PermanentError,
    RateLimitedError,
    StorageError,
    TransientError,
)
from pipeline.fetcher import Fetcher, backoff_delay
from pipeline.ratelimit import RateController
from pipeline.records import CallTrace, FetchedProfile


@dataclass(frozen=True)
class Pending:
    user_id: str
    attempts: int = 0


def uid(n: int) -> str:
    return f"{n:024x}"


@dataclass
class FakeClient:
    """Answers each id from a script of outcomes (an exception to raise, or 'ok')."""

    scripts: dict[str, list[object]] = field(default_factory=dict)
    delay: float = 0.0
    calls: Counter[str] = field(default_factory=Counter)
    order: list[str] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    async def fetch(self, user_id: str) -> FetchedProfile:
        self.calls[user_id] += 1
        self.order.append(user_id)
        self.events.append(("start", user_id))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            script = self.scripts.get(user_id, [])
            outcome = script.pop(0) if script else "ok"
            if isinstance(outcome, BaseException):
                raise outcome
            return FetchedProfile(user_id, b"{}", None, dt.datetime.now(dt.UTC))
        finally:
            self.events.append(("end", user_id))
            self.in_flight -= 1


@dataclass
class FakeLedger:
    successes: dict[str, int] = field(default_factory=dict)
    retries: list[tuple[str, int, int | None]] = field(default_factory=list)
    failures: dict[str, tuple[int, int | None, bool]] = field(default_factory=dict)
    explode_on_success: bool = False

    def record_success(self, profile: FetchedProfile, attempts: int) -> None:
        if self.explode_on_success:
            raise StorageError("disk full while writing state")
        assert profile.user_id not in self.successes, "an id was stored twice"
        self.successes[profile.user_id] = attempts

    def record_retry(self, user_id: str, attempts: int, code: int | None, message: str) -> None:
        self.retries.append((user_id, attempts, code))

    def record_failure(
        self, user_id: str, attempts: int, code: int | None, message: str, *, retryable: bool
    ) -> None:
        self.failures[user_id] = (attempts, code, retryable)


def make(client: FakeClient, ledger: FakeLedger, **kwargs: object) -> Fetcher:
    options: dict[str, object] = {"concurrency": 4, "max_attempts": 3, "backoff": lambda _a: 0.0}
    options.update(kwargs)
    return Fetcher(client, ledger, **options)  # type: ignore[arg-type]


async def test_every_id_ends_fetched_exactly_once_and_concurrency_is_capped() -> None:
    client, ledger = FakeClient(delay=0.002), FakeLedger()
    ids = [Pending(uid(i)) for i in range(200)]
    outcome = await make(client, ledger, concurrency=7).run(iter(ids))
    assert set(ledger.successes) == {p.user_id for p in ids}
    assert set(client.calls.values()) == {1}
    assert client.max_in_flight == 7
    assert outcome.tally.calls == 200 and outcome.tally.fetched == 200
    assert outcome.stopped_by is None


async def test_transient_errors_retry_until_attempts_run_out_then_fail_as_retryable() -> None:
    flaky, doomed = uid(1), uid(2)
    client = FakeClient(
        scripts={
            flaky: [TransientError("collection failed", code=301)],
            doomed: [TransientError("internal error", code=500)] * 5,
        }
    )
    ledger = FakeLedger()
    outcome = await make(client, ledger, max_attempts=3).run(
        iter([Pending(flaky), Pending(doomed)])
    )
    assert ledger.successes == {flaky: 2}
    assert ledger.failures == {doomed: (3, 500, True)}
    assert client.calls[doomed] == 3
    assert (flaky, 1, 301) in ledger.retries
    assert outcome.tally.retried == 3  # flaky once, doomed twice before its last attempt


async def test_resumed_attempt_counts_continue_from_the_state() -> None:
    doomed = uid(3)
    client = FakeClient(scripts={doomed: [TransientError("x", code=500)] * 5})
    ledger = FakeLedger()
    await make(client, ledger, max_attempts=3).run(iter([Pending(doomed, attempts=2)]))
    assert client.calls[doomed] == 1
    assert ledger.failures[doomed] == (3, 500, True)


async def test_rate_limited_calls_do_not_use_up_attempts() -> None:
    limited = uid(4)
    client = FakeClient(scripts={limited: [RateLimitedError("rate limit exceeded")] * 6})
    ledger = FakeLedger()
    outcome = await make(client, ledger, max_attempts=2).run(iter([Pending(limited)]))
    assert ledger.successes == {limited: 1}
    assert client.calls[limited] == 7
    assert outcome.tally.rate_limited == 6


async def test_permanent_errors_fail_at_once_and_are_not_retryable() -> None:
    gone = uid(5)
    client = FakeClient(scripts={gone: [PermanentError("no such user", code=404)]})
    ledger = FakeLedger()
    await make(client, ledger).run(iter([Pending(gone)]))
    assert ledger.failures == {gone: (1, 404, False)}
    assert client.calls[gone] == 1


@pytest.mark.slow
async def test_an_id_waiting_for_its_backoff_does_not_hold_the_only_slot() -> None:
    slow_retry, others = uid(6), [uid(100 + i) for i in range(5)]
    client = FakeClient(scripts={slow_retry: [TransientError("x", code=301)]})
    ledger = FakeLedger()
    fetcher = make(client, ledger, concurrency=1, backoff=lambda _a: 0.3)
    await fetcher.run(iter([Pending(slow_retry)] + [Pending(o) for o in others]))
    # All the other ids were called while slow_retry waited; its retry came last.
    assert client.order == [slow_retry, *others, slow_retry]


async def test_account_error_stops_dispatching_and_lets_calls_in_flight_finish() -> None:
    bad = uid(7)
    ids = [Pending(uid(200 + i)) for i in range(3)] + [Pending(bad)]
    ids += [Pending(uid(300 + i)) for i in range(50)]
    client = FakeClient(
        scripts={bad: [AccountError(601, "insufficient balance (code 601)")]}, delay=0.01
    )
    ledger = FakeLedger()
    outcome = await make(client, ledger, concurrency=4).run(iter(ids))
    assert isinstance(outcome.stopped_by, AccountError)
    assert outcome.stopped_by.code == 601
    # No call started after the refusal; every call started before it finished and was stored.
    refused_at = client.events.index(("end", bad))
    assert all(kind == "end" for kind, _ in client.events[refused_at:])
    assert sum(client.calls.values()) <= 4 + 1  # the workers' calls plus one handed over
    assert len(ledger.successes) == sum(client.calls.values()) - 1
    assert bad not in ledger.failures and bad not in ledger.successes


async def test_max_calls_stops_after_exactly_that_many_calls() -> None:
    client, ledger = FakeClient(), FakeLedger()
    ids = [Pending(uid(i)) for i in range(20)]
    outcome = await make(client, ledger, max_calls=5).run(iter(ids))
    assert sum(client.calls.values()) == 5
    assert outcome.tally.calls == 5
    assert isinstance(outcome.stopped_by, CallBudgetExhausted)


async def test_a_ledger_failure_stops_the_loop_and_is_raised_not_swallowed() -> None:
    client, ledger = FakeClient(), FakeLedger(explode_on_success=True)
    ids = [Pending(uid(i)) for i in range(50)]
    with pytest.raises(StorageError, match="disk full"):
        await asyncio.wait_for(make(client, ledger).run(iter(ids)), timeout=5)
    assert sum(client.calls.values()) <= 4 + 1


@pytest.mark.slow
async def test_request_stop_finishes_in_flight_calls_and_dispatches_no_more() -> None:
    client, ledger = FakeClient(delay=0.05), FakeLedger()
    fetcher = make(client, ledger, concurrency=3)
    ids = [Pending(uid(i)) for i in range(100)]
    task = asyncio.create_task(fetcher.run(iter(ids)))
    await asyncio.sleep(0.07)
    fetcher.request_stop()
    outcome = await task
    assert outcome.interrupted
    assert len(ledger.successes) == sum(client.calls.values()) < 100


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (10_000, 30.0), (0, 0.5)],
)
def test_backoff_is_exponential_and_capped(attempt: int, expected: float) -> None:
    assert backoff_delay(attempt, rng=lambda: 1.0) == expected


def test_backoff_uses_full_jitter() -> None:
    assert backoff_delay(4, rng=lambda: 0.25) == 1.0
    assert backoff_delay(4, rng=lambda: 0.0) == 0.0
    assert backoff_delay(3, base=0.5, cap=1.5, rng=lambda: 1.0) == 1.5
    delays = {backoff_delay(5) for _ in range(50)}
    assert all(0 <= d < 8 for d in delays)
    assert len(delays) > 1


# --- what the loop reports -------------------------------------------------------------------


@dataclass
class TracingClient(FakeClient):
    """A FakeClient that fills in the call trace the loop hands it, as the real client does."""

    async def fetch(self, user_id: str, *, trace: CallTrace | None = None) -> FetchedProfile:
        if trace is not None:
            trace.http_status, trace.latency_s = 200, 0.0123
        return await super().fetch(user_id)


def recorder() -> tuple[list[tuple[str, dict[str, Any]]], Callable[[str, dict[str, Any]], None]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    return seen, lambda event, fields: seen.append((event, fields))


async def test_retries_and_failures_are_reported_as_events_with_the_id_code_and_attempt() -> None:
    flaky, doomed, gone = uid(1), uid(2), uid(3)
    client = FakeClient(
        scripts={
            flaky: [TransientError("collection failed (code 301)", code=301)],
            doomed: [TransientError("internal server error (code 500)", code=500)] * 2,
            gone: [PermanentError("no such user", code=404)],
        }
    )
    seen, on_event = recorder()
    backoff = {1: 0.25}
    await make(
        client, FakeLedger(), max_attempts=2, on_event=on_event, backoff=lambda a: backoff[a]
    ).run(iter([Pending(flaky), Pending(doomed), Pending(gone)]))
    assert sorted(seen, key=lambda e: (e[0], e[1]["user_id"])) == [
        ("id.failed", {"user_id": doomed, "code": 500, "attempt": 2, "retryable": True,
                       "message": "internal server error (code 500)"}),
        ("id.failed", {"user_id": gone, "code": 404, "attempt": 1, "retryable": False,
                       "message": "no such user"}),
        ("id.retry", {"user_id": flaky, "code": 301, "attempt": 1, "retry_in_s": 0.25,
                      "message": "collection failed (code 301)"}),
        ("id.retry", {"user_id": doomed, "code": 500, "attempt": 1, "retry_in_s": 0.25,
                      "message": "internal server error (code 500)"}),
    ]  # fmt: skip


async def test_call_events_come_only_when_asked_for_with_status_latency_and_outcome() -> None:
    limited, ok = uid(4), uid(5)
    scripts: dict[str, list[object]] = {limited: [RateLimitedError("rate limited (code 302)")]}
    quiet, on_quiet = recorder()
    await make(TracingClient(scripts=dict(scripts)), FakeLedger(), on_event=on_quiet).run(
        iter([Pending(ok)])
    )
    assert quiet == []  # call_events off: nothing per call
    seen, on_event = recorder()
    client = TracingClient(scripts={limited: [RateLimitedError("rate limited (code 302)")]})
    await make(client, FakeLedger(), on_event=on_event, call_events=True, concurrency=1).run(
        iter([Pending(limited), Pending(ok)])
    )
    done = [fields for event, fields in seen if event == "call.done"]
    common = {"http_status": 200, "latency_ms": 12.3}
    assert sorted(done, key=lambda f: (f["user_id"], f["code"])) == [
        {"user_id": limited, "attempt": 1, "code": 0, **common, "outcome": "ok"},
        {"user_id": limited, "attempt": 1, "code": 302, **common, "outcome": "rate_limited"},
        {"user_id": ok, "attempt": 1, "code": 0, **common, "outcome": "ok"},
    ]  # a 302 costs no attempt: the retry is attempt 1 again


async def test_the_tally_counts_the_ids_waiting_in_the_retry_heap() -> None:
    waiting = [uid(i) for i in range(3)]
    client = FakeClient(scripts={u: [TransientError("x", code=500)] for u in waiting})
    backlog: list[int] = []
    fetcher = make(
        client,
        FakeLedger(),
        backoff=lambda _a: 0.05,
        on_progress=lambda tally: backlog.append(tally.retrying),
        concurrency=3,
    )
    outcome = await fetcher.run(iter(Pending(u) for u in waiting))
    assert max(backlog) == 3  # all three waited out their back-off at once
    assert backlog[-1] == 0 and outcome.tally.retrying == 0


# --- the controller's window ---------------------------------------------------------------


async def test_ids_are_handed_out_only_while_the_controllers_window_has_room() -> None:
    """Concurrency is the pool's cap; the controller's window (here 3) binds below it, and no
    id is taken from the pending ones before a call can start for it."""
    limiter = RateController(None, max_in_flight=3)  # no answer yet: its window is its cap
    client, ledger = FakeClient(delay=0.01), FakeLedger()
    taken: list[str] = []

    def pending() -> Iterator[Pending]:
        for i in range(30):
            taken.append(uid(i))
            yield Pending(uid(i))

    windows: list[int | None] = []
    fetcher = make(
        client,
        ledger,
        concurrency=10,
        limiter=limiter,
        on_progress=lambda tally: windows.append(tally.window),
    )
    first_start = asyncio.Event()
    original = client.fetch

    async def fetch(user_id: str) -> FetchedProfile:
        if not first_start.is_set():
            first_start.set()
            assert len(taken) <= 3 + 1  # the window's worth and the one the loop looks at
        return await original(user_id)

    client.fetch = fetch  # type: ignore[method-assign]
    outcome = await fetcher.run(pending())
    assert outcome.tally.fetched == 30
    assert client.max_in_flight == 3
    assert set(windows) == {3}
