"""Latency rounds for the rate controller: rule 6 of ``pipeline.ratelimit``.

Answers are grouped in rounds by send time (at least ``ROUND_SAMPLES`` calls and a quarter round
trip), complete when every call of the round is answered, so the short calls that answer first
do not bias a round.  From the rounds come the base round trip (the lowest round median over
``BASE_WINDOW`` s), the delivery rate (answers per second, the best over ``DELIVERY_WINDOW`` s),
the queueing rule (the window the latency allows, while no 302 has shown a limit), the rounds
that measure the base afresh, and the rounds whose answers were mostly faults (no growth).

``LatencyRounds`` owns that state; the controller tells it of every send and answer, ends the
rounds it returns as complete, applies the window or rate a queue asks for, and reads the limit
it puts on the window.  The answer log it reads the delivery rate from is the controller's.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

ROUND_SAMPLES: Final = 32  # answers per latency round: a median steady enough to compare
BASE_WINDOW: Final = 10.0  # s over which the base round trip is the lowest round median
DELIVERY_WINDOW: Final = 20.0  # s over which the delivery rate is the highest (BBR: bw > RTT)
DELAY_TARGET: Final = 1.25  # queueing allowed over the base (Envoy's 25% buffer)
DELAY_GROWTH: Final = 1.25  # most the latency rule lets the window grow per round
DELAY_FLOOR: Final = 0.5  # most the latency rule cuts the window per round
FAULT_FREEZE: Final = 0.5  # more than half of a round's answers failed: no growth for a while


@dataclass(slots=True)
class _Round:
    """Calls sent in [start, end): their round trips, once every one of them is answered."""

    start: float
    end: float
    samples: list[float] = field(default_factory=list)
    answers: int = 0
    faults: int = 0  # answers that were transient failures, or no usable answer
    admitted_max: int = 0
    probe: bool = False  # a base-measuring round at a quarter of the window


class Queueing(NamedTuple):
    """A round showed a queue: the window it allows, from the best delivery rate seen."""

    window: int
    delivered: float  # answers/s, the best over ``DELIVERY_WINDOW`` s


class LatencyRounds:
    """Rounds of calls by send time: the base round trip, delivery, the window latency allows."""

    def __init__(self, max_in_flight: int, min_window: int) -> None:
        self._max_in_flight = max_in_flight
        self._min_window = min_window
        self._rounds: deque[_Round] = deque()  # by send time, oldest first
        self._medians: deque[tuple[float, float]] = deque()  # (time, round median)
        self._deliveries: deque[tuple[float, float]] = deque()  # (time, answers/s) at rounds
        self._base: float | None = None
        self._base_probe_due = math.inf
        self._queueing = False
        self._faulty_until = -math.inf
        self._delay_window = max_in_flight  # what the latency rule lets in flight

    @property
    def base(self) -> float | None:
        """The base round trip: the lowest round median over ``BASE_WINDOW`` s (None before)."""
        return self._base

    @property
    def limit(self) -> int:
        """The most calls in flight the latency rule allows.

        A quarter of its window while a round measures the base: drain the queue, see the base.
        """
        if self._rounds and self._rounds[-1].probe:
            return self._delay_window // 4
        return self._delay_window

    @property
    def best_delivery(self) -> float | None:
        """The most answers per second a round saw over ``DELIVERY_WINDOW`` s (None before)."""
        if not self._deliveries:
            return None
        return max(rate for _, rate in self._deliveries)

    def faulty(self, now: float) -> bool:
        """A recent round's answers were mostly faults: no growth until a round is healthy."""
        return now < self._faulty_until

    def sent(self, sent_at: float, admitted: int, rate: float, srtt: float | None) -> None:
        """A call went at ``sent_at``, with ``admitted`` calls holding a window slot."""
        rounds = self._rounds
        if not rounds or sent_at >= rounds[-1].end:
            self._start(sent_at, rate, srtt)
        current = rounds[-1]
        if admitted > current.admitted_max:
            current.admitted_max = admitted

    def answered(self, sent_at: float, rtt: float | None, fault: bool) -> None:
        """The call sent at ``sent_at`` came back (``rtt`` None: no usable answer)."""
        for round_ in reversed(self._rounds):
            if round_.start <= sent_at:
                if sent_at < round_.end:
                    round_.faults += fault
                    round_.answers += 1
                    if rtt is not None:
                        round_.samples.append(rtt)
                return

    def finished(self, now: float, srtt: float | None, oldest: float | None) -> list[_Round]:
        """Take the rounds every call of which is answered, oldest first, for ``end``.

        ``oldest`` is the send time of the oldest call still in flight; a round that straggles
        well past its end completes without its last answers.
        """
        rounds = self._rounds
        done: list[_Round] = []
        while len(rounds) > 1 or (rounds and now >= rounds[0].end):
            first = rounds[0]
            straggling = now - first.end > 4 * (srtt or 0.0) + 1.0
            if oldest is not None and oldest < first.end and not straggling:
                break
            rounds.popleft()
            done.append(first)
        return done

    def end(
        self,
        now: float,
        round_: _Round,
        *,
        srtt: float | None,
        window: int,
        answers: Sequence[tuple[float, float, bool]],
        rate_limited: bool,
    ) -> Queueing | None:
        """End a complete round: its median, the base, the delivery rate, the latency rule.

        ``window``: the controller's W; ``rate_limited``: a 302 has shown the limit, so the
        window follows the rate alone; ``answers``: the controller's log of (answered, sent,
        accepted).  Returns the queue the round shows when it lowers ``limit``, for the
        controller to report and to lower its rate to.
        """
        samples = round_.samples
        if round_.answers and round_.faults > FAULT_FREEZE * round_.answers:
            self._faulty_until = now + max(1.0, srtt or 0.0)
        if len(samples) < ROUND_SAMPLES // 2:
            return None  # too few to say anything (an idle spell, a pause)
        samples.sort()
        median = samples[len(samples) // 2]
        medians = self._medians
        while medians and medians[0][0] < now - BASE_WINDOW:
            medians.popleft()
        if round_.probe:
            medians.clear()  # the fresh base, measured with the queue drained
        medians.append((now, median))
        self._base = base = min(m for _, m in medians)
        deliveries = self._deliveries
        deliveries.append((now, _delivery_rate(answers, now, srtt)))
        while deliveries[0][0] < now - DELIVERY_WINDOW:
            deliveries.popleft()
        if round_.probe or rate_limited:
            return None  # a 302 has shown the limit: the window follows the rate
        used = max(round_.admitted_max, 1)
        gradient = DELAY_TARGET * base / median
        queueing, self._queueing = self._queueing, gradient < 1.0
        if gradient < 1.0 and queueing:  # two rounds in a row: not one noisy median
            # Queueing: keep in flight what the server delivers over the base round trip, with
            # the target's margin (BBR: cwnd from bandwidth x min RTT).  The delivery is the
            # most seen over a window longer than the base's, so a server that merely got
            # slower (latency up, delivery down by as much) is not read as a queue and starved.
            delivered = max(rate for _, rate in deliveries)
            allowed = max(self._min_window, min(used, math.ceil(DELAY_TARGET * delivered * base)))
            if allowed < self._delay_window:
                self._delay_window = allowed
                if self._base_probe_due == math.inf:
                    self._base_probe_due = now + BASE_WINDOW
                return Queueing(allowed, delivered)
        elif used >= 0.9 * window and self._delay_window < self._max_in_flight:
            grown = math.ceil(used * min(DELAY_GROWTH, gradient))
            self._delay_window = min(self._max_in_flight, max(self._delay_window, grown))
        return None

    def _start(self, sent_at: float, rate: float, srtt: float | None) -> None:
        length = max(ROUND_SAMPLES / rate, 0.05, 0.25 * (srtt or 0.0))
        probe = self._delay_window < self._max_in_flight and sent_at >= self._base_probe_due
        if probe:
            self._base_probe_due = sent_at + BASE_WINDOW
        self._rounds.append(_Round(sent_at, sent_at + length, probe=probe))


def _delivery_rate(
    answers: Sequence[tuple[float, float, bool]], now: float, srtt: float | None
) -> float:
    """Answers per second over the last max(0.5 s, round trip)."""
    span = max(0.5, srtt or 0.0)
    count = 0
    for answered, _, _ in reversed(answers):
        if answered < now - span:
            break
        count += 1
    return count / span
