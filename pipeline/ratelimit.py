"""One controller of rate and concurrency below the retry loop, needing no setting.

Every call, first attempts and retries alike, passes through it: ``acquire`` waits for a slot in
the in-flight window, for the shared pause to end and for its turn at the pacing rate, and
returns the send time; the client answers with exactly one of ``on_success`` (any answer but
302), ``on_rate_limited`` (302) or ``on_failed`` (no usable answer), passing that send time back.

Why it is written here: aiolimiter's leaky bucket cannot change its rate while running,
tenacity/stamina retry in-line (the waiting call keeps its slot), and the anchors that adapt
(botocore's adaptive mode, Netflix concurrency-limits, Envoy's adaptive concurrency, BBR) each
control one of the two numbers, from a signal this API does not give (a throttle is a business
code 302 in a 200 body, its limit is not published, and a call takes 50 ms or several seconds).

It owns two numbers: the pacing rate R and the window W (calls admitted and not yet answered).
Throughput is min(R, W / round trip).  The user's ``--rate`` and ``--concurrency`` are caps on
them, never targets.  Rules (each constant says why its value, below or beside the code that
uses it: rule 4's measuring is ``pipeline.ratelimit_estimate``, the rounds of rules 6 and 7
``pipeline.ratelimit_rounds``; every constant is importable from here):

1. Start: R = ``START_RATE`` (16/s: what the old default of 16 slots sent at a one-second round
   trip).  Until the first 302, and only while callers wait for the pacer (a rate nobody uses
   proves nothing) and an answer has come back, R grows continuously by ``START_GROWTH``
   (x1.15) per smoothed round trip; once it has doubled, by 0.1 more per doubling up to
   ``MAX_GROWTH`` (x1.5) per round trip, that extra never faster than x1.5 per second; past a
   one-second round trip all of it slower by sqrt(1 s / round trip), because a 302 then comes
   back long after a server's one-second burst ran out and every second of growth past the
   limit until then is paid in refusals.  R never runs past ``STARTUP_PACING_GAIN`` (2) x the
   best delivery rate seen (BBR's pacing gain), so with no rate limit it stays meaningful.
2. Window: W = ``WINDOW_GAIN`` x R x smoothed round trip + ``WINDOW_HEADROOM`` (BBR's
   cwnd = 2 x bw x RTT), at least ``MIN_WINDOW`` (16, the old default: at zero latency, where
   the client's own CPU is the queue, fewer calls in flight only lose throughput), at most
   ``max_in_flight``: long calls get more slots, short ones fewer, and a limit that falls costs
   at most a window of 302s.  Before the first answer pacing alone bounds the sends, and the
   window a fetch loop reads grows with the time since the oldest call in flight (2 x R x that
   time + headroom).
3. Cuts.  A 302 is fresh if its call was sent after the last cut; one overload gives one cut.
   The first fresh 302 of the start cuts R to what was being sent times ``_startup_cut``: the
   overshoot a one-second burst implies at the growth used (x0.25 at 0.1 s, x0.63 at 3.5 s).
   While cruising (the limit fell), to ``CUT`` (0.5) x what was sent; while probing, back to the
   known ceiling (at most ``PROBE_CUT`` x what was sent, never below the cruise rate).  While
   measuring, a further halving only if more than half of what was sent since the last cut is
   refused.
4. Measuring what the server accepts, by send time, never by answer time (which carries the
   server's burst): between the first and the last refused call of an episode its bucket was
   empty at both ends, so the calls it accepted in between, over that span, are its limit
   (BBR's long-term policer estimate).  The estimate is taken once every call sent before the
   last cut has been answered; ``MEASURE_ACCEPTS`` accepted calls over ``MEASURE_SPAN`` s make
   it trusted.  A probe's short episode is measured from the previous episode's last refusal
   instead (the bucket was empty there too: exact unless the cruise let it fill); a window
   limiter carries no unused capacity over, so that pair is checked against the accepted rate
   since the probe began and, if they differ by more than 5%, their midpoint is taken.  The
   episode and its estimate are ``ratelimit_estimate.LimitEstimator``'s.
5. Cruise at ``CRUISE_GAIN`` (0.97) x the estimate for max(``HOLD_MIN`` s, ``HOLD_ROUNDS``
   round trips) (``HOLD_MIN`` only after a rough estimate), then probe: R = cruise x
   (1 + ``PROBE_GAIN`` x (t / unit)^3), t counted while the pacer binds, unit = max(1 s, 2 round
   trips): +1% at half a unit, +10% at one, +80% at two, x8 at 4.1: gentle while the server's
   refill since the last refusal drains, then fast enough to find a limit that rose eightfold
   within seconds, and slow at long round trips, where an overshoot costs more.
6. Latency, with no 302 seen (queueing without a rate limit): answers are grouped in rounds by
   send time (at least ``ROUND_SAMPLES`` calls and a quarter round trip, complete when all of
   them are answered, so the short calls that answer first do not bias a round); the base is
   the lowest round median over ``BASE_WINDOW`` s.  When two rounds in a row have a median over
   ``DELAY_TARGET`` (1.25) x base, the window becomes target x the best delivery rate over
   ``DELIVERY_WINDOW`` s x base (BBR's cwnd from bandwidth x min RTT; the delivery window is the
   longer, so a server that merely got slower is not taken for a queue and starved); a round
   under the target that filled the window lets it grow by up to ``DELAY_GROWTH``.  While
   latency binds, one round every ``BASE_WINDOW`` s runs at a quarter of the window to measure
   the base afresh (BBR's PROBE_RTT), so a queue it keeps never becomes its own baseline.  Once
   a 302 has shown a limit, the window follows the rate alone.  The rounds, the base, the
   delivery rate and this rule are ``ratelimit_rounds.LatencyRounds``'.
7. ``Retry-After`` pauses every caller for that long (0: no pause; the cut still applies); the
   pause is no time of growth, cruise or measurement.  Answers that are not 302 (the 500s of a
   retry storm too) are the rate accepted; a round where more than ``FAULT_FREEZE`` of the calls
   failed (301/500/503, or no usable answer) stops growth until a round is healthy again, so a
   storm's retries, which pass the same pacer and window, never pose as spare capacity.
8. Caps: R never exceeds ``--rate``, and no floor(rate) calls go within (1 + ``CAP_MARGIN``) x
   floor(rate) / rate s of each other, so jitter on the way cannot show the server more than
   ``--rate`` in any second; W never exceeds ``max_in_flight``.  Pacing is a schedule of
   tickets (``anchor_time + (k - anchor_ticket) / R``, re-anchored when R changes), first come
   first served; callers over the window wait in order for a slot.
9. Visible: ``snapshot`` gives R, W, the round trips, the estimate, the phase, cuts by reason
   and the last ``LAST_CUTS``; ``on_event`` hears ``rate.cut`` (with its reason) and
   ``rate.pause``.  Time comes from the injected ``clock`` / ``sleep`` / ``event``, so tests run
   on a simulated clock.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from pipeline.config import DEFAULT_START_RATE
from pipeline.ratelimit_estimate import CONFIRM_BAND as CONFIRM_BAND
from pipeline.ratelimit_estimate import CUT as CUT
from pipeline.ratelimit_estimate import MEASURE_ACCEPTS as MEASURE_ACCEPTS
from pipeline.ratelimit_estimate import MEASURE_SPAN as MEASURE_SPAN
from pipeline.ratelimit_estimate import PAIR_SPAN_MAX as PAIR_SPAN_MAX
from pipeline.ratelimit_estimate import LimitEstimator
from pipeline.ratelimit_rounds import BASE_WINDOW as BASE_WINDOW
from pipeline.ratelimit_rounds import DELAY_FLOOR as DELAY_FLOOR
from pipeline.ratelimit_rounds import DELAY_GROWTH as DELAY_GROWTH
from pipeline.ratelimit_rounds import DELAY_TARGET as DELAY_TARGET
from pipeline.ratelimit_rounds import DELIVERY_WINDOW as DELIVERY_WINDOW
from pipeline.ratelimit_rounds import FAULT_FREEZE as FAULT_FREEZE
from pipeline.ratelimit_rounds import ROUND_SAMPLES as ROUND_SAMPLES
from pipeline.ratelimit_rounds import LatencyRounds

# Imported for the callers as well: the constants of rule 4's measuring (and CUT, which its
# rough estimate undoes) are pipeline.ratelimit_estimate's, those of rule 6
# pipeline.ratelimit_rounds'.

START_RATE: Final = DEFAULT_START_RATE  # requests/s before anything is known (16)
START_GROWTH: Final = 1.15  # per round trip until a 302: the first overshoot is ~15% for ~1 RTT
MAX_GROWTH: Final = 1.5  # per round trip, however far the start has grown
STARTUP_PACING_GAIN: Final = 2.0  # the start paces at most at 2x the best delivery (BBR: 2.89)
GROWTH_RTT_FLOOR: Final = 0.01  # s: growth is never timed on a round trip shorter than this
MIN_RATE: Final = 0.5  # requests/s (botocore's floor)
STARTUP_BURST_S: Final = 1.0  # the burst the start's first cut assumes a server allows, in s
STARTUP_CUT_MIN: Final = 0.25  # the start's first cut: what was sent x 0.25 ... 0.8
STARTUP_CUT_MAX: Final = 0.8
PROBE_CUT: Final = 0.85  # a probe's 302: back to the ceiling, at most 85% of what it sent
CRUISE_GAIN: Final = 0.97  # of the measured limit (BBR's pacing margin + the estimate's error)
HOLD_MIN: Final = 2.5  # s of cruise before probing, at least
HOLD_ROUNDS: Final = 8  # round trips of cruise before probing, at least
HOLD_DOUBLINGS: Final = 0  # a confirmed ceiling does not lengthen the hold (a risen limit would
# then be found late: 50 -> 10 -> 80/s must be followed within 10 s)
PROBE_GAIN: Final = 0.1  # probe: cruise x (1 + 0.1 t^3), t in probe units
PROBE_UNIT_MIN: Final = 1.0  # s
PROBE_UNIT_ROUNDS: Final = 2.0  # round trips per probe unit
WINDOW_GAIN: Final = 2.0  # BBR cwnd_gain
WINDOW_HEADROOM: Final = 4  # calls (BBR's minimum cwnd)
MIN_WINDOW: Final = 16  # calls in flight, at least (the old default; zero latency needs it)
DEFAULT_MAX_IN_FLIGHT: Final = 512
RTT_SMOOTHING: Final = 0.125  # weight of a new round-trip sample (TCP's srtt)
MAX_NAP: Final = 0.25  # s a pacer waiter sleeps before re-checking its slot
CAP_MARGIN: Final = 0.02  # the user's --rate is kept over (1 + 2%) s windows of our own sends
MAX_GROWTH_STEP: Final = 1.0  # s of growth credited at once
LAST_CUTS: Final = 5  # cuts kept in the snapshot
ANSWER_LOG_S: Final = 30.0  # s of answers kept (by answer time) for the estimates


class _Event(Protocol):
    def set(self) -> None: ...
    def wait(self) -> Awaitable[Any]: ...


class RateController:
    """Pacing + in-flight window, adapted to 302s and latency; caps from the user."""

    def __init__(
        self,
        rate: float | None = None,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        start_rate: float = START_RATE,
        burst: float = 1.0,
        min_rate: float = MIN_RATE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        event: Callable[[], _Event] = asyncio.Event,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of requests per second, got {rate}")
        if not burst >= 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        if not min_rate > 0:
            raise ValueError(f"min_rate must be positive, got {min_rate}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if not (start_rate > 0 and math.isfinite(start_rate)):
            raise ValueError(f"start_rate must be a positive number, got {start_rate}")
        self._user_rate = rate
        self._cap = rate if rate is not None else math.inf
        self._max_in_flight = max_in_flight
        self._min_window = min(MIN_WINDOW, max_in_flight)
        self._min_rate = min(min_rate, rate) if rate is not None else min_rate
        self._start_rate = start_rate
        self._rate = min(start_rate, self._cap)
        # The user's cap is also kept over any ``CAP_WINDOW`` of sends: at most floor(rate) calls
        # in any (1 + CAP_MARGIN) s, so jitter on the way cannot show the server more.
        self._cap_calls = max(1, math.floor(rate)) if rate is not None else 0
        self._cap_span = self._cap_calls / rate * (1 + CAP_MARGIN) if rate is not None else 0.0
        self._cap_sent: deque[float] = deque()
        self._burst = burst
        self._clock = clock
        self._sleep = sleep
        self._event = event
        self._on_event = on_event
        # Pacing schedule: ticket k may go at _anchor_time + (k - _anchor_ticket) / rate.
        self._issued = 0
        self._anchor_ticket = 0.0
        self._anchor_time = -math.inf
        self._paused_until = -math.inf
        self._pauses = 0
        self._paused_s = 0.0
        self._pacer_bound_at = -math.inf
        # Window.
        self._admitted = 0  # holding a window slot: waiting for the pacer or on the wire
        self._in_flight = 0  # sent, not answered
        self._in_flight_max = 0
        self._waiters: deque[_Event] = deque()
        self._window = self._min_window
        # Measurements.
        self._started: float | None = None
        self._sent: deque[float] = deque()  # send times over the last few seconds
        self._pending: dict[float, int] = {}  # send time -> calls in flight sent then
        self._pending_order: deque[float] = deque()
        self._srtt: float | None = None
        self._answers: deque[tuple[float, float, bool]] = deque()  # (answered, sent, accepted)
        self._latency = LatencyRounds(max_in_flight, self._min_window)  # rule 6
        # Rate regime.
        self._phase = "startup"
        self._last_growth: float | None = None
        self._epoch = -math.inf  # calls sent before this were sent at an older rate
        self._limit = LimitEstimator()  # rule 4: episodes of 302s, the ceiling
        self._cruise_rate: float | None = None
        self._hold_until = -math.inf
        self._doublings = 0
        self._probe_t = 0.0
        self._probe_started = -math.inf
        self._growth = 0.0  # the start's growth, per second, when it last grew
        # Record.
        self._rate_limited = 0
        self._faults = 0
        self._cuts = 0
        self._cut_reasons: dict[str, int] = {}
        self._last_cuts: deque[dict[str, Any]] = deque(maxlen=LAST_CUTS)
        self._update_window(self._clock())

    # --- what others read ----------------------------------------------------------------

    @property
    def rate(self) -> float | None:
        """Current pacing rate in requests/s."""
        return self._rate

    @property
    def window(self) -> int:
        """The in-flight limit: calls admitted and not yet answered, at most.

        Before the first answer the pacing alone bounds what is sent; what a fetch loop should
        hand out grows with the time since the first send (2 x rate x that time + headroom), so
        a stop on the first answers leaves few calls queued for the pacer.
        """
        if self._srtt is None:
            oldest = self._oldest_pending()
            age = self._clock() - oldest if oldest is not None else 0.0
            grown = math.ceil(WINDOW_GAIN * self._rate * age) + WINDOW_HEADROOM
            return max(self._min_window, min(self._max_in_flight, grown))
        return self._window

    @property
    def in_flight(self) -> int:
        """Calls sent and not yet answered."""
        return self._in_flight

    @property
    def round_trip(self) -> float | None:
        """Smoothed round trip of answers, in seconds (None before the first)."""
        return self._srtt

    @property
    def paused_until(self) -> float:
        """Clock time before which no call starts (in the past when not paused)."""
        return self._paused_until

    def snapshot(self) -> dict[str, Any]:
        """Figures for the run summary (small: counts and the last few cuts)."""
        return {
            "rate": _rounded(self._rate),
            "user_rate": self._user_rate,
            "in_flight_limit": self._window,
            "max_in_flight": self._max_in_flight,
            "in_flight_max": self._in_flight_max,
            "round_trip_s": _rounded(self._srtt),
            "base_round_trip_s": _rounded(self._latency.base),
            "ceiling_estimate": _rounded(self._limit.ceiling),
            "phase": self._phase,
            "cuts": self._cuts,
            "cuts_by_reason": dict(sorted(self._cut_reasons.items())),
            "last_cuts": list(self._last_cuts),
            "rate_limited": self._rate_limited,
            "faults": self._faults,
            "pauses": self._pauses,
            "paused_s": round(self._paused_s, 3),
        }

    # --- the calls -----------------------------------------------------------------------

    async def acquire(self) -> float:
        """Wait for a window slot, the shared pause and this caller's pacing turn.

        Returns the send time (on this controller's clock): pass it back as ``sent_at``.
        """
        if self._admitted >= self._window or self._waiters:
            gate = self._event()
            self._waiters.append(gate)
            try:
                await gate.wait()  # the releaser admitted this caller before waking it
            except BaseException:
                if gate in self._waiters:
                    self._waiters.remove(gate)
                else:
                    self._unadmit()
                raise
        else:
            self._admitted += 1
        try:
            sent_at = await self._pace()
        except BaseException:
            self._unadmit()
            raise
        if self._started is None:
            self._started = sent_at
        self._sent.append(sent_at)
        self._trim_sent(sent_at)
        if sent_at in self._pending:
            self._pending[sent_at] += 1
        else:
            self._pending[sent_at] = 1
            self._pending_order.append(sent_at)
        self._in_flight += 1
        if self._in_flight > self._in_flight_max:
            self._in_flight_max = self._in_flight
        self._latency.sent(sent_at, self._admitted, self._rate, self._srtt)
        return sent_at

    def on_success(self, *, sent_at: float | None = None, fault: bool = False) -> None:
        """An answer other than 302: the server accepted the call at this rate.

        ``fault``: the answer is a transient failure (301, 500, 503): still the rate accepted
        and a round trip measured, but a round with mostly such answers stops growth.
        """
        now = self._clock()
        self._release(sent_at)
        if fault:
            self._faults += 1
        if sent_at is not None and sent_at <= now:
            rtt = now - sent_at
            self._srtt = (
                rtt if self._srtt is None else self._srtt + RTT_SMOOTHING * (rtt - self._srtt)
            )
            self._latency.answered(sent_at, rtt, fault)
            self._record_answer(now, sent_at, True)
        self._after_answer(now)

    def on_rate_limited(self, retry_after: float | None, *, sent_at: float | None = None) -> None:
        """A 302: cut once per overload (not per 302), measure, and pause if told to.

        ``retry_after`` is the server's Retry-After in seconds, if it sent one.
        """
        now = self._clock()
        self._release(sent_at)
        self._rate_limited += 1
        when = now if sent_at is None or sent_at > now else sent_at
        self._grow(now)  # credit growth up to now before deciding
        self._record_answer(now, when, False)
        if when >= self._epoch:
            if not self._limit.measuring:
                self._open_episode(now, when)
            elif self._limit.refused():
                # More than half of what was sent since the cut is refused: cut again.
                self._cut(now, self._rate * CUT, "measure")
                self._limit.cut(now)
        if retry_after is not None and retry_after > 0:
            self._pause(now, now + retry_after)
        self._after_answer(now)

    def on_failed(self, *, sent_at: float | None = None) -> None:
        """No usable answer (transport fault, timeout, a body without a business code)."""
        now = self._clock()
        self._release(sent_at)
        self._faults += 1
        if sent_at is not None:
            self._latency.answered(sent_at, None, True)
        self._after_answer(now)

    def _after_answer(self, now: float) -> None:
        self._complete_rounds(now)
        self._grow(now)
        self._maybe_estimate(now)
        self._update_window(now)

    # --- window --------------------------------------------------------------------------

    def _release(self, sent_at: float | None) -> None:
        if self._in_flight > 0:
            self._in_flight -= 1
        if sent_at is not None:
            left = self._pending.get(sent_at)
            if left is not None:
                if left > 1:
                    self._pending[sent_at] = left - 1
                else:
                    del self._pending[sent_at]
        self._unadmit()

    def _unadmit(self) -> None:
        if self._admitted > 0:
            self._admitted -= 1
        self._admit_waiters()

    def _admit_waiters(self) -> None:
        while self._waiters and self._admitted < self._window:
            self._admitted += 1
            self._waiters.popleft().set()

    def _oldest_pending(self) -> float | None:
        order, pending = self._pending_order, self._pending
        while order and order[0] not in pending:
            order.popleft()
        return order[0] if order else None

    def _update_window(self, now: float) -> None:
        rtt = self._srtt
        if rtt is None:  # until the first answer the start's pacing alone bounds what is sent
            self._window = self._max_in_flight
            self._admit_waiters()
            return
        # At most what latency allows (a quarter of that while a round measures the base).
        window = min(
            math.ceil(WINDOW_GAIN * self._rate * rtt) + WINDOW_HEADROOM, self._latency.limit
        )
        self._window = max(self._min_window, min(self._max_in_flight, window))
        self._admit_waiters()

    # --- pacing --------------------------------------------------------------------------

    async def _pace(self) -> float:
        ticket = self._issue()
        while True:
            now = self._clock()
            if now < self._paused_until:
                await self._sleep(self._paused_until - now)
                continue
            slot = self._slot(ticket)
            if self._cap_calls and len(self._cap_sent) >= self._cap_calls:
                slot = max(slot, self._cap_sent[0] + self._cap_span)
            if slot <= now:
                if self._cap_calls:
                    self._cap_sent.append(now)
                    if len(self._cap_sent) > self._cap_calls:
                        self._cap_sent.popleft()
                return now
            self._pacer_bound_at = now
            await self._sleep(min(slot - now, MAX_NAP))

    def _issue(self) -> int:
        ticket = self._issued
        self._issued += 1
        earliest = max(self._clock(), self._paused_until) - (self._burst - 1.0) / self._rate
        if self._slot(ticket) < earliest:
            # Idle: the schedule fell behind; unused slots are not saved up beyond ``burst``.
            self._anchor_ticket, self._anchor_time = float(ticket), earliest
        return ticket

    def _slot(self, ticket: int) -> float:
        return self._anchor_time + (ticket - self._anchor_ticket) / self._rate

    def _position(self, now: float) -> float:
        """The (fractional) ticket whose slot is ``now``, never past the tickets issued."""
        if now <= self._anchor_time:
            return self._anchor_ticket
        return min(
            float(self._issued), self._anchor_ticket + (now - self._anchor_time) * self._rate
        )

    def _set_rate(self, rate: float, now: float) -> None:
        rate = max(self._min_rate, min(self._cap, rate))
        if rate == self._rate:
            return
        self._anchor_ticket = self._position(now)
        self._anchor_time = max(now, self._anchor_time)
        self._rate = rate

    def _pause(self, now: float, until: float) -> None:
        if until <= self._paused_until:
            return
        starts = now >= self._paused_until
        self._paused_s += until - max(now, self._paused_until)
        self._paused_until = until
        self._anchor_ticket = self._position(now)
        self._anchor_time = max(self._anchor_time, until)
        # Time paused is no time of cruise, and the server refills while nobody sends: a
        # measurement stops at the pause.
        self._hold_until = max(self._hold_until, until + HOLD_MIN)
        self._limit.pause(now)  # the server refills while nobody sends
        if starts:
            self._pauses += 1
            self._emit("rate.pause", {"pause_s": round(until - now, 3), "rate": self._rate})

    # --- measurements --------------------------------------------------------------------

    def _trim_sent(self, now: float) -> None:
        horizon = now - max(2.0, 2 * (self._srtt or 0.0))
        sent = self._sent
        while sent and sent[0] < horizon:
            sent.popleft()

    def _record_answer(self, now: float, sent_at: float, accepted: bool) -> None:
        answers = self._answers
        answers.append((now, sent_at, accepted))
        horizon = now - max(ANSWER_LOG_S, 4 * (self._srtt or 0.0))
        while answers[0][0] < horizon:
            answers.popleft()
        self._limit.record(sent_at, accepted)

    def _send_rate(self, now: float) -> float:
        """Calls sent per second over the last max(0.5 s, round trip) of unpaused time."""
        span = max(0.5, self._srtt or 0.0)
        start = max(now - span, self._started if self._started is not None else now)
        start = max(start, min(self._paused_until, now))
        if now - start < 0.05:
            return self._rate
        count = 0
        for t in reversed(self._sent):
            if t < start:
                break
            count += 1
        return count / (now - start)

    def _complete_rounds(self, now: float) -> None:
        latency = self._latency
        for round_ in latency.finished(now, self._srtt, self._oldest_pending()):
            queueing = latency.end(
                now,
                round_,
                srtt=self._srtt,
                window=self._window,
                answers=self._answers,
                rate_limited=self._phase != "startup",
            )
            if queueing is not None:  # the window latency allows fell: and the rate with it
                if queueing.window < 0.9 * self._window:
                    self._record_cut(now, "latency", self._rate, self._rate, queueing.window)
                self._set_rate(min(self._rate, 1.5 * queueing.delivered), now)

    # --- rate ----------------------------------------------------------------------------

    def _grow(self, now: float) -> None:
        """Startup growth or the probe's ramp, for the time the pacer has bound since last."""
        last, self._last_growth = self._last_growth, now
        if last is None or self._srtt is None:
            return
        elapsed = min(now - max(last, self._paused_until), MAX_GROWTH_STEP)
        # Growth only while the pacer is what holds calls back: not the window, not the ids.
        bound = now - self._pacer_bound_at <= max(0.25, self._srtt)
        bound = bound and self._in_flight < 0.9 * self._window
        if elapsed <= 0 or not bound or self._latency.faulty(now) or self._rate >= self._cap:
            return
        if self._phase == "cruise":
            if now >= self._hold_until:
                self._phase = "probe"
                self._probe_t = 0.0
                self._probe_started = now
            return
        if self._phase == "startup":
            self._growth = _startup_growth(self._rate / self._start_rate, self._srtt)
            grown = self._rate * math.exp(self._growth * elapsed)
            best = self._latency.best_delivery
            if best is not None:  # no faster than twice what the server has delivered
                grown = min(grown, max(self._rate, STARTUP_PACING_GAIN * best))
            self._set_rate(grown, now)
        elif self._phase == "probe":
            assert self._cruise_rate is not None
            self._probe_t += elapsed
            unit = max(PROBE_UNIT_MIN, PROBE_UNIT_ROUNDS * self._srtt)
            target = self._cruise_rate * (1 + PROBE_GAIN * (self._probe_t / unit) ** 3)
            self._set_rate(max(self._rate, target), now)

    def _open_episode(self, now: float, sent_at: float) -> None:
        sent = min(self._rate, self._send_rate(now))
        phase = self._phase
        ceiling = self._limit.ceiling
        if phase == "probe" and ceiling is not None and sent <= 2 * ceiling:
            # A probe past the known ceiling: back to it (the server's refill since the last
            # refusal let the probe run on; what it accepted since then measures the limit, see
            # LimitEstimator._pair_estimate), never below the cruise rate known to be accepted.
            new = max(self._cruise_rate or 0.0, min(ceiling, PROBE_CUT * sent))
        elif phase == "startup":
            new = sent * _startup_cut(self._growth, self._srtt or 0.0)
        else:
            new = CUT * sent
        self._limit.open(sent_at, sent, now, probe=phase == "probe", answers=self._answers)
        self._phase = "measure"
        self._cut(now, new, phase)

    def _cut(self, now: float, rate: float, reason: str) -> None:
        previous = self._rate
        self._set_rate(rate, now)
        self._epoch = now
        self._record_cut(now, reason, previous, self._rate, None)

    def _record_cut(
        self, now: float, reason: str, previous: float, rate: float, window: int | None
    ) -> None:
        self._cuts += 1
        self._cut_reasons[reason] = self._cut_reasons.get(reason, 0) + 1
        start = self._started if self._started is not None else now
        limit = window if window is not None else self._window
        self._last_cuts.append(
            {
                "at_s": round(now - start, 3),
                "reason": reason,
                "rate": _rounded(rate),
                "previous_rate": _rounded(previous),
                "in_flight_limit": limit,
            }
        )
        self._emit(
            "rate.cut",
            {
                "reason": reason,
                "rate": _rounded(rate),
                "previous_rate": _rounded(previous),
                "ceiling_estimate": _rounded(self._limit.ceiling),
                "in_flight_limit": limit,
                "cuts": self._cuts,
            },
        )

    def _maybe_estimate(self, now: float) -> None:
        """Cruise at the episode's estimate once it is taken (``LimitEstimator.estimate``)."""
        if not self._limit.measuring:
            return
        estimate = self._limit.estimate(
            now,
            srtt=self._srtt,
            oldest=self._oldest_pending(),
            rate=self._rate,
            answers=self._answers,
            probe_started=self._probe_started,
        )
        if estimate is None:
            return
        self._doublings = min(self._doublings + 1, HOLD_DOUBLINGS) if estimate.confirmed else 0
        self._cruise_rate = max(self._min_rate, min(self._cap, CRUISE_GAIN * estimate.limit))
        self._set_rate(self._cruise_rate, now)
        # The server's bucket is empty after a measurement: a call or two at the new rate may
        # still be refused; that says nothing about the rate.
        self._epoch = now + max(0.25, 4 / self._rate)
        self._phase = "cruise"
        hold = max(HOLD_MIN, HOLD_ROUNDS * (self._srtt or 0.0))
        steady = estimate.trusted or estimate.confirmed
        self._hold_until = now + (hold * 2**self._doublings if steady else HOLD_MIN)

    def _emit(self, event: str, fields: dict[str, Any]) -> None:
        if self._on_event is not None:
            self._on_event(event, fields)


def _startup_growth(grown: float, rtt: float) -> float:
    """The start's growth per second, having grown ``grown`` times, at this round trip.

    x1.15 per round trip; from twice the start on, +0.1 per doubling up to x1.5 (the further the
    rate has grown without a 302, the further the limit may be), but that part never faster
    than x1.5 per second (a server's burst hides its limit for about a second, whatever the
    round trip).  Past a one-second round trip, slower by sqrt(1 s / round trip): a 302 then
    comes back long after the burst ran out, and every second of growth past the limit until
    then is paid in refusals.
    """
    rtt = max(rtt, GROWTH_RTT_FLOOR)
    base = math.log(START_GROWTH) / rtt
    faster = START_GROWTH + 0.1 * max(0.0, math.log2(max(grown, 1.0)) - 1)
    accelerated = min(math.log(min(faster, MAX_GROWTH)) / rtt, math.log(MAX_GROWTH))
    return max(base, accelerated) * min(1.0, math.sqrt(1.0 / rtt))


def _startup_cut(growth: float, rtt: float) -> float:
    """How far to cut what the start was sending when its first 302 came back.

    A server that allows a second's burst refuses nothing until the growth has sent a second's
    worth over its limit: at ``growth`` per second that takes the rate x e^x past the limit,
    where e^x - 1 - x = growth x 1 s, and the 302 comes back a round trip later, when the rate
    is e^(growth x rtt) further.  Cut to 95% of the limit that implies, between x0.25 and x0.8.
    """
    target = growth * STARTUP_BURST_S
    x = math.sqrt(2 * target)  # e^x - 1 - x = target, by Newton's method from x ~ sqrt(2t)
    for _ in range(8):
        x -= (math.exp(x) - 1 - x - target) / (math.exp(x) - 1 or 1.0)
    overshoot = math.exp(max(x, 0.0) + growth * rtt)
    return min(STARTUP_CUT_MAX, max(STARTUP_CUT_MIN, 0.95 / overshoot))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
