"""What the server accepts, measured from its 302s: rule 4 of ``pipeline.ratelimit``.

An episode runs from a fresh 302 (the controller cuts and opens one) to the estimate of the
server's limit, measured by send time: between the first and the last refused call its bucket
was empty at both ends, so the calls it accepted in between, over that span, are its limit.  The
estimate is taken once every call sent before the last cut has been answered; a probe's short
episode is measured from the previous episode's last refusal instead (``_pair_estimate``).

``LimitEstimator`` owns the open episode, the last estimate (the ceiling) and the previous
episode's last refusal; the controller tells it of every answer and every fresh 302, of a
further cut and of a pause, and asks it after every answer for the estimate, which it cruises
at.  The answer log it reads is the controller's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

CUT: Final = 0.5  # a 302 while cruising (the limit fell): halve what was sent (TCP)
MEASURE_ACCEPTS: Final = 20  # accepted calls in a span for a trusted estimate (~1/sqrt(20))
MEASURE_SPAN: Final = 0.5  # s of send time, at least
CONFIRM_BAND: Final = 0.1  # estimates within 10% confirm each other
PAIR_SPAN_MAX: Final = 30.0  # s between two episodes' refusals, at most, for their estimate


@dataclass(slots=True)
class _Episode:
    """From a fresh 302 to the estimate of what the server accepts."""

    start: float  # send time of the first refused call
    send_rate: float  # what was being sent when it was refused
    cut_at: float  # send time after which calls are fresh (the last cut)
    until: float = math.inf  # calls sent from here on (a pause began) are not measured
    probe: bool = False  # opened by a probe past the known ceiling
    answers: list[tuple[float, bool]] = field(default_factory=list)  # (sent, accepted)
    fresh_ok: int = 0
    fresh_refused: int = 0
    next_check: float = -math.inf


class Estimate(NamedTuple):
    """What an episode measured the server to accept."""

    limit: float  # requests/s
    trusted: bool  # enough accepted calls over a long enough span (or a probe's pair)
    confirmed: bool  # within ``CONFIRM_BAND`` of the previous estimate


class LimitEstimator:
    """Episodes of 302s and the server's limit they measure."""

    def __init__(self) -> None:
        self._episode: _Episode | None = None
        self._ceiling: float | None = None
        self._last_refusal: float | None = None  # send time of the last episode's last 302

    @property
    def ceiling(self) -> float | None:
        """The last estimate of the server's limit, in requests/s (None before the first)."""
        return self._ceiling

    @property
    def measuring(self) -> bool:
        """An episode is open: its estimate is not taken yet."""
        return self._episode is not None

    def open(
        self,
        sent_at: float,
        send_rate: float,
        cut_at: float,
        *,
        probe: bool,
        answers: Iterable[tuple[float, float, bool]],
    ) -> None:
        """A fresh 302 for the call sent at ``sent_at``, while ``send_rate`` was being sent.

        ``cut_at``: the cut it causes; ``probe``: a probe past the ceiling was refused;
        ``answers``: the controller's log of (answered, sent, accepted), this 302 included.
        """
        episode = _Episode(start=sent_at, send_rate=send_rate, cut_at=cut_at, probe=probe)
        episode.answers = [(s, ok) for _, s, ok in answers if s >= sent_at]
        self._episode = episode

    def record(self, sent_at: float, accepted: bool) -> None:
        """An answer (``accepted``: not a 302) for the call sent at ``sent_at``."""
        episode = self._episode
        if episode is not None and episode.start <= sent_at < episode.until:
            episode.answers.append((sent_at, accepted))
            if accepted and sent_at >= episode.cut_at:
                episode.fresh_ok += 1

    def refused(self) -> bool:
        """A fresh 302 while measuring: True when more than half of what was sent since the
        last cut is refused (then the controller cuts again and calls ``cut``)."""
        assert self._episode is not None
        episode = self._episode
        episode.fresh_refused += 1
        fresh = episode.fresh_ok + episode.fresh_refused
        return fresh >= 4 and episode.fresh_refused * 2 > fresh

    def cut(self, now: float) -> None:
        """The controller cut again while measuring: calls sent from ``now`` on are fresh."""
        assert self._episode is not None
        episode = self._episode
        episode.cut_at = now
        episode.fresh_ok = episode.fresh_refused = 0

    def pause(self, now: float) -> None:
        """A pause began: the server refills while nobody sends, so a measurement stops here."""
        self._last_refusal = None
        if self._episode is not None:
            self._episode.until = min(self._episode.until, now)

    def estimate(
        self,
        now: float,
        *,
        srtt: float | None,
        oldest: float | None,
        rate: float,
        answers: Iterable[tuple[float, float, bool]],
        probe_started: float,
    ) -> Estimate | None:
        """Close the episode once every call sent before its last cut has been answered.

        ``oldest``: the send time of the oldest call in flight; ``rate``: the pacing rate now;
        ``answers``: the controller's log of (answered, sent, accepted); ``probe_started``:
        when the probe that may have opened the episode began.
        """
        episode = self._episode
        if episode is None or now < episode.next_check:
            return None
        episode.next_check = now + max(0.02, (srtt or 0.0) / 8)
        frontier = now if oldest is None else oldest  # every call sent before it is answered
        needed = min(episode.until, max(episode.cut_at, episode.start + MEASURE_SPAN))
        if frontier < needed:
            return None
        frontier = min(frontier, episode.until)
        ordered = sorted(a for a in episode.answers if a[0] < frontier)
        last = episode.start
        for sent, ok in ordered:
            if not ok:
                last = sent
        accepted = sum(1 for sent, ok in ordered if ok and sent <= last)
        span = last - episode.start
        trusted = span >= MEASURE_SPAN and accepted >= MEASURE_ACCEPTS
        previous = self._ceiling
        if (
            not trusted
            and episode.fresh_refused
            and episode.until == math.inf
            and now - episode.cut_at < 2 * max(1.0, srtt or 0.0)
        ):
            return None  # still refused at the current rate: the span is growing
        self._episode = None
        pair = self._pair_estimate(episode, previous, answers, probe_started)
        self._last_refusal = last if span > 0 or last > episode.start else episode.start
        if trusted:
            estimate = accepted / span
        elif pair is not None:
            estimate = pair
            trusted = True
        elif span > 0 and accepted > 0:
            # Rough: between what is sent now and what was refused.
            estimate = min(max(accepted / span, rate), episode.send_rate)
        else:
            estimate = max(rate, min(episode.send_rate, rate / CUT))
        confirmed = previous is not None and abs(estimate / previous - 1) <= CONFIRM_BAND
        self._ceiling = estimate
        return Estimate(estimate, trusted, confirmed)

    def _pair_estimate(
        self,
        episode: _Episode,
        previous: float | None,
        answers: Iterable[tuple[float, float, bool]],
        probe_started: float,
    ) -> float | None:
        """A probe's 302 measured from the previous episode's last one.

        The server refused at both, so what it accepted in between, over that time, is its limit:
        exactly, for a token bucket the cruise between them never filled.  A window limiter
        carries no unused capacity over, so there this counts only what was sent, below the
        limit: the accepted rate since the probe began, which over-counts by what was left
        unused, bounds it from above.  Within 5% the pair is the estimate, else their midpoint
        (a window's estimate then closes in probe by probe).  Only near the known ceiling, with
        a gap of at most ``PAIR_SPAN_MAX``, and nothing paused since.
        """
        since = self._last_refusal
        if not episode.probe or previous is None or since is None:
            return None
        end = episode.start
        gap = end - since
        if not MEASURE_SPAN <= gap <= PAIR_SPAN_MAX or episode.send_rate > 2 * previous:
            return None
        probe_from = max(probe_started, since)
        accepted = probed = 0
        for _, sent, ok in answers:
            if ok and since < sent <= end:
                accepted += 1
                probed += sent > probe_from
        if accepted < MEASURE_ACCEPTS:
            return None
        pair = accepted / gap
        upper = probed / (end - probe_from) if end - probe_from >= MEASURE_SPAN else pair
        estimate = pair if upper <= 1.05 * pair else (pair + upper) / 2
        return estimate if 0.5 * previous <= estimate <= episode.send_rate else None
