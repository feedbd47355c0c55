"""One rate controller shared by every worker: pacing, AIMD on 302, and a shared pause.

Why it is written here: aiolimiter's leaky bucket cannot change its rate while running, and
tenacity/stamina retry in-line (the waiting call keeps its concurrency slot).  This controller
only paces and adapts; retry scheduling stays in the fetch loop's not-before heap.

Rules:
1. Pacing: each ``acquire`` takes the next ticket (first come, first served; no ``await``
   between reading and bumping the counter, so no lock is needed).  Ticket k may go at
   ``anchor_time + (k - anchor_ticket) / rate``.  When the rate changes, the schedule is
   re-anchored at "now", so tickets already handed out speed up or slow down with it (absolute
   slot reservations would keep a queue booked at a rate long since raised); waiters re-check
   their slot at least every ``MAX_NAP`` seconds.  After an idle spell ``burst`` calls may go at
   once.  Rate ``None`` means no pacing until the first 302.
2. Every call, first attempts and retries alike, acquires: the client calls ``acquire`` right
   before each request and ``on_rate_limited`` / ``on_success`` with each answer, passing the
   send time ``acquire`` returned.
3. Multiplicative decrease on 302.  The rate at which the 302 happened is the lowest of the set
   rate, the rate calls were actually sent at and the rate the server accepted them at (a set
   rate of 1000/s means little when 16 workers send 160/s).  Rates are measured over the last
   ``max(1 s, round trip)`` of unpaused time; accepted rates only once the history is longer
   than a round trip plus 0.5 s (before that, the answers have not come back yet).  That rate
   becomes the ceiling estimate, and the new rate is 0.7 times it, or 0.9 times it when it
   confirms the previous estimate (within 10%): a known ceiling needs a nudge, not a cut that
   makes the sawtooth average far below the limit.  Never below ``min_rate``.
   One overload gives one cut, not one per 302: a 302 for a call sent before the last cut says
   nothing about the new rate; without a send time, at most one cut per
   ``max(0.5 s, burst / rate)``; and no cut while the rate is below what the server has just
   accepted (a sliding-window limiter still remembering an earlier overload).
4. Additive increase, only after a cut, time-based (per second of successes, not per call; time
   paused or idle is not credited), and only once 302s have stopped for
   ``max(0.5 s, burst / rate)``: halfway back to the ceiling estimate per second while below
   it, then slow probing at ``max(1, 2% of the rate)`` requests/s per second.  Never above the
   user's ``--rate``.
5. Pause: a 302 with ``Retry-After`` pauses every worker for that long; a cut without one pauses
   them for one new interval, so calls queued at the old pace do not go out in a burst.
6. Time comes from the injected ``clock`` / ``sleep``, so tests run on a simulated clock.
7. What it decides is reported through the injected ``on_event`` callback (never a logger of its
   own): ``rate.cut`` for each cut (with the pause of one new interval it starts), and
   ``rate.pause`` when a ``Retry-After`` starts a pause (not for each 302 that extends one).
   ``paused_until`` and ``rate`` are read-only views for the progress display.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

DECREASE_FACTOR = 0.7
GENTLE_FACTOR = 0.9  # when the 302 came within CONFIRM_BAND of the last ceiling estimate
CONFIRM_BAND = 0.9
RATE_WINDOW = 1.0  # seconds over which send and success rates are measured, at least
MIN_CUT_SPACING = 0.5  # seconds between cuts when the 302's send time is unknown
DEFAULT_START_RATE = 10.0  # requests/s after a first 302 when nothing was measured
MAX_GROWTH_STEP = 1.0  # seconds of success credited at once (no jump after an idle spell)
MAX_NAP = 0.25  # seconds a waiter sleeps before re-checking its slot against the current rate
RTT_SMOOTHING = 0.2  # weight of a new round-trip sample in the moving average


class RateController:
    """Token bucket shared by all workers + AIMD on 302 + shared pause."""

    def __init__(
        self,
        rate: float | None,
        *,
        burst: float = 1.0,
        min_rate: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of requests per second, got {rate}")
        if not burst >= 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        if not min_rate > 0:
            raise ValueError(f"min_rate must be positive, got {min_rate}")
        self._user_rate = rate
        self._rate = rate
        self._burst = burst
        self._min_rate = min(min_rate, rate) if rate is not None else min_rate
        self._clock = clock
        self._sleep = sleep
        self._on_event = on_event
        # Pacing schedule: ticket k may go at _anchor_time + (k - _anchor_ticket) / rate.
        self._issued = 0
        self._anchor_ticket = 0.0
        self._anchor_time = -math.inf
        self._paused_until = -math.inf
        # Measurements.
        self._started: float | None = None
        self._measure_from = -math.inf
        self._sent: deque[float] = deque()
        self._succeeded: deque[float] = deque()
        self._rtt: float | None = None
        # AIMD state.
        self._ceiling: float | None = None
        self._last_cut = -math.inf
        self._last_limited = -math.inf
        self._last_growth = -math.inf
        self._cuts = 0
        self._rate_limited = 0

    @property
    def rate(self) -> float | None:
        """Current rate in requests/s (None: uncapped and never limited yet)."""
        return self._rate

    @property
    def paused_until(self) -> float:
        """Clock time before which no call starts (in the past when not paused)."""
        return self._paused_until

    async def acquire(self) -> float:
        """Wait for the shared pause to end and for this caller's turn; return the send time.

        Pass the returned time (on this controller's clock) back as ``sent_at``.
        """
        ticket = self._issue()
        while True:
            now = self._clock()
            if now < self._paused_until:
                await self._sleep(self._paused_until - now)
                continue
            slot = self._slot(ticket)
            if slot <= now:
                break
            await self._sleep(min(slot - now, MAX_NAP))
        sent_at = self._clock()
        if self._started is None:
            self._started = sent_at
        self._sent.append(sent_at)
        _trim(self._sent, sent_at - self._window())
        return sent_at

    def on_success(self, *, sent_at: float | None = None) -> None:
        """Additive increase (only after a 302 lowered the rate; never above the user's rate)."""
        now = self._clock()
        self._observe_round_trip(now, sent_at)
        self._succeeded.append(now)
        _trim(self._succeeded, now - self._window())
        # Time spent paused is not time of success.
        elapsed = min(now - max(self._last_growth, self._paused_until), MAX_GROWTH_STEP)
        self._last_growth = now
        rate = self._rate
        if rate is None or elapsed <= 0:
            return
        if now - self._last_limited < self._cut_spacing(rate):
            return  # 302s are still arriving: the current rate is not yet known to be safe
        cap = self._user_rate if self._user_rate is not None else math.inf
        if rate >= cap:
            return
        step = max(1.0, 0.02 * rate) * elapsed
        ceiling = self._ceiling
        if ceiling is not None and rate < ceiling:
            rate = max(ceiling - (ceiling - rate) * 0.5**elapsed, rate + step)
        else:
            rate += step
        self._set_rate(min(rate, cap), now)

    def on_rate_limited(self, retry_after: float | None, *, sent_at: float | None = None) -> None:
        """Multiplicative decrease (once per overload, not per 302) and a pause for everyone.

        ``retry_after`` is the server's Retry-After in seconds, if it sent one; ``sent_at`` is
        what ``acquire`` returned for the call that was refused.
        """
        now = self._clock()
        self._observe_round_trip(now, sent_at)
        self._rate_limited += 1
        self._last_limited = now
        if self._should_cut(now, sent_at):
            previous = self._rate
            self._cut(now)
            assert self._rate is not None  # set by _cut
            interval = 1.0 / self._rate
            if retry_after is None:
                self._pause(now, now + interval)
            if self._on_event is not None:
                self._on_event(
                    "rate.cut",
                    {
                        "rate": _rounded(self._rate),
                        "previous_rate": _rounded(previous),
                        "ceiling_estimate": _rounded(self._ceiling),
                        "cuts": self._cuts,
                        "pause_s": round(retry_after if retry_after is not None else interval, 3),
                    },
                )
        if retry_after is not None and retry_after > 0:
            starts = now >= self._paused_until
            self._pause(now, now + retry_after)
            # Rates measured across this pause would show the pause, not the server's limit.
            self._measure_from = self._paused_until
            if starts and self._on_event is not None:
                self._on_event(
                    "rate.pause",
                    {"pause_s": round(retry_after, 3), "rate": _rounded(self._rate)},
                )

    def snapshot(self) -> dict[str, float | int | None]:
        """Figures for the run summary."""
        return {
            "rate": _rounded(self._rate),
            "user_rate": self._user_rate,
            "ceiling_estimate": _rounded(self._ceiling),
            "cuts": self._cuts,
            "rate_limited": self._rate_limited,
            "round_trip_s": _rounded(self._rtt),
        }

    # --- pacing schedule ---------------------------------------------------------------------

    def _issue(self) -> int:
        ticket = self._issued
        self._issued += 1
        rate = self._rate
        if rate is not None:
            earliest = max(self._clock(), self._paused_until) - (self._burst - 1.0) / rate
            if self._slot(ticket) < earliest:
                # Idle: the schedule fell behind; unused slots are not saved up beyond ``burst``.
                self._anchor_ticket, self._anchor_time = float(ticket), earliest
        return ticket

    def _slot(self, ticket: int) -> float:
        if self._rate is None:
            return -math.inf
        return self._anchor_time + (ticket - self._anchor_ticket) / self._rate

    def _position(self, now: float) -> float:
        """The (fractional) ticket whose slot is ``now``, never past the tickets issued."""
        assert self._rate is not None
        if now <= self._anchor_time:
            return self._anchor_ticket
        return min(
            float(self._issued), self._anchor_ticket + (now - self._anchor_time) * self._rate
        )

    def _set_rate(self, rate: float, now: float) -> None:
        if self._rate is None:
            self._anchor_ticket, self._anchor_time = float(self._issued), now
        else:
            self._anchor_ticket = self._position(now)
            self._anchor_time = max(now, self._anchor_time)
        self._rate = rate

    def _pause(self, now: float, until: float) -> None:
        self._paused_until = max(self._paused_until, until)
        if self._rate is not None:
            self._anchor_ticket = self._position(now)
            self._anchor_time = max(self._anchor_time, self._paused_until)

    # --- measurements ------------------------------------------------------------------------

    def _observe_round_trip(self, now: float, sent_at: float | None) -> None:
        if sent_at is None or sent_at > now:
            return
        sample = now - sent_at
        if self._rtt is None:
            self._rtt = sample
        else:
            self._rtt += RTT_SMOOTHING * (sample - self._rtt)

    def _window(self) -> float:
        return max(RATE_WINDOW, self._rtt or 0.0)

    def _measured(self, now: float) -> tuple[float | None, float | None]:
        """Send and accepted rates over the last window of unpaused time (None: unknown)."""
        if self._started is None:
            return None, None
        history = now - max(self._started, self._measure_from)
        span = min(self._window(), history)
        if span <= 0:
            return None, None
        _trim(self._sent, now - span)
        _trim(self._succeeded, now - span)
        sent = len(self._sent) / span if self._sent else None
        # Until a round trip has passed, the answers to what was sent have not come back.
        fair = self._succeeded and history >= MIN_CUT_SPACING + (self._rtt or 0.0)
        accepted = len(self._succeeded) / span if fair else None
        return sent, accepted

    # --- decrease ----------------------------------------------------------------------------

    def _should_cut(self, now: float, sent_at: float | None) -> bool:
        rate = self._rate
        if rate is None or self._cuts == 0:
            return True
        if sent_at is not None:
            if sent_at < self._last_cut:
                return False  # sent at the old rate: already answered by the last cut
            spacing = self._burst / rate
        else:
            spacing = self._cut_spacing(rate)
        if now - self._last_cut < spacing:
            return False
        # Below what the server has just accepted, the 302 is the server's memory of an
        # earlier overload (a sliding window), not a verdict on the current rate.
        _, accepted = self._measured(now)
        return accepted is None or rate >= accepted

    def _cut_spacing(self, rate: float) -> float:
        return max(MIN_CUT_SPACING, self._burst / rate)

    def _cut(self, now: float) -> None:
        limited_at = self._rate if self._rate is not None else math.inf
        for measured in self._measured(now):
            if measured is not None:
                limited_at = min(limited_at, measured)
        if math.isinf(limited_at):
            # Uncapped and nothing measured yet: start from a modest default.
            self._ceiling = None
            new_rate = DEFAULT_START_RATE
        else:
            confirmed = self._ceiling is not None and limited_at >= CONFIRM_BAND * self._ceiling
            self._ceiling = limited_at
            new_rate = (GENTLE_FACTOR if confirmed else DECREASE_FACTOR) * limited_at
        self._set_rate(max(self._min_rate, new_rate), now)
        self._cuts += 1
        self._last_cut = now
        self._last_growth = now


def _trim(times: deque[float], older_than: float) -> None:
    while times and times[0] < older_than:
        times.popleft()


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
