"""How a run shows its progress: a live rich bar, log lines (text or JSON events), or nothing;
and, at the end, a summary rendered from the ``RunReport``.

A nightly job's stderr goes to a log file, where a redrawn bar is noise; a person at a terminal
wants the bar.  Both are built from the same ``Figures`` (one ``Meter`` over the fetch loop's
``Tally``, which carries the rate controller's in-flight window and round trip, and the
controller's read-only ``rate`` and ``paused_until``).

Rules:
1. ``--progress auto`` draws the bar only where rich would redraw one (``is_interactive``): a
   terminal (``isatty``, or ``TTY_COMPATIBLE=1`` / ``FORCE_COLOR`` set), not ``TERM=dumb`` or
   ``unknown``, ``TTY_INTERACTIVE=0/1`` overriding both; and not on CI (``CI`` set to anything
   but ``0``/``false``/``no``), whose log viewers keep every redraw, unless
   ``TTY_INTERACTIVE=1``.  ``NO_COLOR`` keeps the bar and drops its colours (rich reads it).
   Everywhere else: log lines.  ``choose_display`` takes the stream and the environment, so
   tests pass a real pseudo-terminal and a pipe.
2. The ETA is ``remaining ids ÷ speed + what is left of a 302 pause``, where speed is the lower
   of the completion rate observed over the last 30 s (the run's average when that window saw
   none, as in a long pause) and the limiter's rate ÷ calls per id so far.  It stays shown
   during a pause, with "paused after 302, resumes in N s" (rich's own ``TimeRemainingColumn``
   goes blank after 30 s without progress).  Projected calls are calls so far ÷ ids done × ids
   in the run: every call is billed.
3. Log lines: one at the start, then one every 15 s or every 10% of the ids, whichever comes
   first, and one at the end; each starts with a UTC timestamp.  In JSON mode they are
   ``progress`` events (the start and the end of the run are the runner's ``run.started`` and
   ``run.finished``).  Time comes from the injected ``clock`` (and ``utcnow``).
4. The summary at the end (bar: a rich table; text log lines: plain lines; JSON and none:
   nothing, ``run.finished`` carries it) is rendered by ``summary_rows`` from the report, so its
   numbers are those of ``_runs/*.json``.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, TextIO

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichBar
from rich.table import Column, Table
from rich.text import Text

from pipeline.records import Tally
from pipeline.run_report import Outcome, RunReport
from pipeline.timestamps import iso_utc, utcnow

Display = Literal["bar", "log", "none"]
PROGRESS_MODES: Final = ("auto", "bar", "log", "none")
WINDOW_S: Final = 30.0  # seconds over which the completion and call rates are observed
SAMPLE_EVERY_S: Final = 0.5
LOG_EVERY_S: Final = 15.0
LOG_STEP: Final = 0.10  # a log line at every 10% of the ids
PAUSE_SHOWN_S: Final = 0.5  # shorter pauses (one interval after a cut) are not worth a word
_FALSE: Final = ("", "0", "false", "no")


# --- where to draw ---------------------------------------------------------------------------


def on_ci(environ: Mapping[str, str]) -> bool:
    return environ.get("CI", "").strip().lower() not in _FALSE


def is_interactive(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Whether a redrawn bar on ``stream`` reaches a person (rule 1)."""
    if environ.get("TTY_INTERACTIVE") not in ("0", "1") and on_ci(environ):
        return False
    # rich's own decision, on the same stream and environment.
    return Console(file=stream, _environ=environ).is_interactive


def choose_display(
    mode: str, stream: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> Display:
    """``--progress auto|bar|log|none`` → what to show on ``stream`` (default stderr)."""
    fixed: dict[str, Display] = {"bar": "bar", "log": "log", "none": "none"}
    if mode in fixed:
        return fixed[mode]
    if mode != "auto":
        raise ValueError(f"progress mode must be one of {', '.join(PROGRESS_MODES)}, got {mode!r}")
    target = stream if stream is not None else sys.stderr
    return "bar" if is_interactive(target, os.environ if environ is None else environ) else "log"


# --- the figures -----------------------------------------------------------------------------


class LimiterView(Protocol):
    """What progress reads from the rate controller (read-only)."""

    @property
    def rate(self) -> float | None: ...
    @property
    def paused_until(self) -> float: ...


class _NoLimiter:
    rate: float | None = None
    paused_until: float = -math.inf


@dataclass(frozen=True, slots=True)
class Figures:
    """Where a run stands at one moment."""

    elapsed_s: float
    total: int
    done: int
    fetched: int
    retrying: int
    failed: int
    retried: int
    rate_limited: int
    calls: int
    calls_per_s: float | None  # observed over the last WINDOW_S
    limiter_rate: float | None
    eta_s: float | None  # None: nothing to estimate from yet
    paused_s: float  # what is left of the limiter's pause
    in_flight: int = 0  # calls sent and not yet answered
    in_flight_limit: int | None = None  # the controller's window (None: not known)
    round_trip_s: float | None = None  # the controller's smoothed round trip

    @property
    def pct(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0

    @property
    def projected_calls(self) -> int | None:
        """Calls so far ÷ ids done × ids in the run (every call is billed)."""
        if self.done == 0:
            return None
        return round(self.calls / self.done * self.total)

    def to_json(self, *, final: bool = False) -> dict[str, Any]:
        return {
            "done": self.done,
            "total": self.total,
            "pct": round(self.pct, 1),
            "fetched": self.fetched,
            "retrying": self.retrying,
            "failed": self.failed,
            "retried": self.retried,
            "rate_limited": self.rate_limited,
            "calls": self.calls,
            "projected_calls": self.projected_calls,
            "calls_per_s": _round(self.calls_per_s, 1),
            "limiter_rate": _round(self.limiter_rate, 3),
            "in_flight": self.in_flight,
            "in_flight_limit": self.in_flight_limit,
            "round_trip_s": _round(self.round_trip_s, 3),
            "eta_s": _round(self.eta_s, 1),
            "paused_s": round(self.paused_s, 1),
            "elapsed_s": round(self.elapsed_s, 1),
            "final": final,
        }


class Meter:
    """Samples the tally (at most every SAMPLE_EVERY_S) and turns it into ``Figures``.

    ``observe`` runs in the fetch loop, ``figures`` also in rich's refresh thread: the samples
    are shared under a lock (taken twice a second, not per call).
    """

    def __init__(
        self, total: int, limiter: LimiterView, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total = total
        self._limiter = limiter
        self._clock = clock
        self.started = clock()
        self._samples: deque[tuple[float, int, int]] = deque([(self.started, 0, 0)])
        self._next_sample = self.started + SAMPLE_EVERY_S
        self._lock = threading.Lock()
        self.tally = Tally()

    def observe(self, tally: Tally, now: float | None = None) -> None:
        self.tally = tally
        now = self._clock() if now is None else now
        if now >= self._next_sample:
            self._next_sample = now + SAMPLE_EVERY_S
            with self._lock:
                self._samples.append((now, tally.done, tally.calls))
                while len(self._samples) > 1 and self._samples[1][0] <= now - WINDOW_S:
                    self._samples.popleft()

    def figures(self, now: float | None = None) -> Figures:
        now = self._clock() if now is None else now
        tally = self.tally
        cutoff = now - WINDOW_S
        with self._lock:  # from the last sample at least WINDOW_S old, else the oldest one
            since, done_then, calls_then = self._samples[0]
            for sample in self._samples:
                if sample[0] > cutoff:
                    break
                since, done_then, calls_then = sample
        elapsed = max(0.0, now - self.started)
        span = now - since
        calls_per_s = (tally.calls - calls_then) / span if span >= 1.0 else None
        completion = (tally.done - done_then) / span if span >= 1.0 else None
        if not completion and tally.done and elapsed >= 1.0:
            completion = tally.done / elapsed  # nothing done in the window: the run's average
        limiter_rate = self._limiter.rate
        paused = max(0.0, self._limiter.paused_until - now)
        remaining = max(0, self.total - tally.done)
        speeds = [s for s in (completion, _limiter_ids_per_s(limiter_rate, tally)) if s]
        if remaining == 0:
            eta: float | None = 0.0
        elif speeds:
            eta = remaining / min(speeds) + paused
        else:
            eta = None
        return Figures(
            elapsed_s=elapsed,
            total=self.total,
            done=tally.done,
            fetched=tally.fetched,
            retrying=tally.retrying,
            failed=tally.failed,
            retried=tally.retried,
            rate_limited=tally.rate_limited,
            calls=tally.calls,
            calls_per_s=calls_per_s,
            limiter_rate=limiter_rate,
            eta_s=eta,
            paused_s=paused,
            in_flight=tally.in_flight,
            in_flight_limit=tally.window,
            round_trip_s=tally.round_trip_s,
        )


def _limiter_ids_per_s(rate: float | None, tally: Tally) -> float | None:
    """The ids/s the limiter allows, at the calls per id seen so far (at least one)."""
    if rate is None:
        return None
    calls_per_id = tally.calls / tally.done if tally.done else 1.0
    return rate / max(1.0, calls_per_id)


# --- the words -------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """``9 s``, ``4m 05s``, ``2h 03m``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def counts_text(f: Figures) -> str:
    return (
        f"ok {f.fetched:,}  retrying {f.retrying:,}  failed {f.failed:,}  302s {f.rate_limited:,}"
    )


def speed_text(f: Figures) -> str:
    """``13.0 calls/s, limiter 10.0/s``, then the window and round trip when known:
    ``, in flight 5/24, rtt 0.10 s``."""
    calls = "-- calls/s" if f.calls_per_s is None else f"{f.calls_per_s:,.1f} calls/s"
    limiter = "no limit" if f.limiter_rate is None else f"{f.limiter_rate:,.1f}/s"
    window = ""
    if f.in_flight_limit is not None:
        window = f", in flight {f.in_flight:,}/{f.in_flight_limit:,}"
    if f.round_trip_s is not None:
        window += f", rtt {f.round_trip_s:.2f} s"
    return f"{calls}, limiter {limiter}{window}"


def cost_text(f: Figures) -> str:
    projected = f.projected_calls
    return f"calls {f.calls:,}, projected {'--' if projected is None else f'{projected:,}'}"


def eta_text(f: Figures) -> str:
    """``ETA 1m 20s``; during a 302 pause ``paused after 302, resumes in 4 s, ETA 1m 24s``."""
    pause = pause_text(f)
    return f"{pause}, {eta_only(f)}" if pause else eta_only(f)


def eta_only(f: Figures) -> str:
    return "ETA estimating" if f.eta_s is None else f"ETA {duration(f.eta_s)}"


def pause_text(f: Figures) -> str:
    """``paused after 302, resumes in 4 s`` during a pause worth a word, else empty."""
    if f.paused_s >= PAUSE_SHOWN_S:
        return f"paused after 302, resumes in {math.ceil(f.paused_s)} s"
    return ""


def progress_line(f: Figures, moment: dt.datetime, word: str = "progress") -> str:
    tail = f"in {duration(f.elapsed_s)}" if word == "finished" else eta_text(f)
    return (
        f"{iso_utc(moment, 'seconds')} {word} {f.pct:.1f}% {f.done:,}/{f.total:,} | "
        f"{counts_text(f)} | {speed_text(f)} | {cost_text(f)} | {tail}"
    )


def start_line(report: RunReport, moment: dt.datetime) -> str:
    return (
        f"{iso_utc(moment, 'seconds')} started run {report.run_id}: "
        f"{report.pending_at_start:,} ids to call, snapshot {report.snapshot_date.isoformat()}, "
        f"output {report.out}"
    )


# --- the summary -----------------------------------------------------------------------------


def summary_rows(report: RunReport) -> list[tuple[str, str]]:
    """The end-of-run summary as (label, value) rows, every number from the report."""
    snap, req = report.snapshot, report.requests
    by_code = ", ".join(f"{code} ×{n:,}" for code, n in sorted(snap.failures_by_code.items()))
    per_profile = f"{req.calls / req.fetched:.2f}" if req.fetched else "--"
    tables = ", ".join(f"{name} {len(paths)}" for name, paths in report.files.items())
    rows = [
        ("outcome", f"{report.outcome} (exit {report.exit_code})"),
        (
            "snapshot",
            f"{report.snapshot_date.isoformat()}: {snap.written:,} profiles, "
            f"{snap.failed:,} failed, {snap.rejected:,} rejected, {snap.pending:,} pending",
        ),
        ("failures by code", by_code or "none"),
        ("calls", f"{req.calls:,}"),
        ("calls per profile", per_profile),
        ("fetched", f"{req.fetched:,}"),
        ("retried", f"{req.retried:,}"),
        ("302s", f"{req.rate_limited:,}"),
        ("duration", f"{report.duration_s:.1f} s"),
        ("files", f"{report.out} (parts: {tables})" if tables else report.out),
        (
            "failures.csv",
            f"{report.where(report.failures_file)} ({report.failures_rows:,} "
            f"row{'s' * (report.failures_rows != 1)})",
        ),
    ]
    if report.summary_file:
        rows.append(("run summary", report.where(report.summary_file)))
    rows.append(("next step", next_step(report)))
    return rows


def next_step(report: RunReport) -> str:
    snap = report.snapshot
    pending = f"{snap.pending:,} ids pending"
    rows = f"{report.failures_rows:,} row{'s' * (report.failures_rows != 1)}"
    if report.stopped_by is not None and report.outcome is Outcome.BUDGET:
        return f"rerun the same command to go on ({pending})"
    if report.stopped_by is not None:
        return f"fix what the error below says, then rerun the same command ({pending})"
    if report.interrupted or not report.complete:
        return f"rerun the same command to resume ({pending})"
    if report.failure_check is not None and report.failure_check.exceeded:
        return f"look at {report.failures_file} ({rows}): more ids failed than the limit allows"
    if snap.failed_transient:
        return (
            f"rerun the same command to try the {snap.failed_transient:,} transient failures "
            f"again (see {report.failures_file})"
        )
    if report.failures_rows:
        return (
            f"none: the snapshot is complete; {report.failures_file} lists {rows} that a rerun "
            "would not change"
        )
    return "none: the snapshot is complete"


# --- the displays ----------------------------------------------------------------------------


class Progress(Protocol):
    def start(self, report: RunReport, limiter: LimiterView) -> None: ...
    def update(self, tally: Tally) -> None: ...
    def stop(self) -> None: ...
    def finish(self, report: RunReport) -> None: ...


class NoProgress:
    def start(self, report: RunReport, limiter: LimiterView) -> None:
        pass

    def update(self, tally: Tally) -> None:
        pass

    def stop(self) -> None:
        pass

    def finish(self, report: RunReport) -> None:
        pass


class LogProgress:
    """Log lines (rule 3): text on ``stream``, or ``progress`` events through ``emit``."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        emit: Callable[[str, dict[str, Any]], None] | None = None,
        every: float = LOG_EVERY_S,
        step: float = LOG_STEP,
        clock: Callable[[], float] = time.monotonic,
        utcnow: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._stream = stream
        self._emit = emit
        self._every = every
        self._step = step
        self._clock = clock
        self._utcnow = utcnow
        self._meter = Meter(0, _NoLimiter(), clock)
        self._next_time = math.inf
        self._next_done = math.inf
        self._started = False

    def start(self, report: RunReport, limiter: LimiterView) -> None:
        self._meter = Meter(report.pending_at_start, limiter, self._clock)
        self._started = True
        self._next_time = self._meter.started + self._every
        self._next_done = self._mark_after(0)
        if self._emit is None:
            self._write(start_line(report, self._utcnow()))

    def update(self, tally: Tally) -> None:
        now = self._clock()
        self._meter.observe(tally, now)
        if now >= self._next_time or tally.done >= self._next_done:
            self._line(now)

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        figures = self._meter.figures()
        if self._emit is not None:
            self._emit("progress", figures.to_json(final=True))
        else:
            self._write(progress_line(figures, self._utcnow(), "finished"))

    def finish(self, report: RunReport) -> None:
        if self._emit is None:
            rows = summary_rows(report)
            width = max(len(label) for label, _ in rows)
            self._write(f"summary of run {report.run_id}:")
            for label, value in rows:
                self._write(f"  {label:<{width}}  {value}")

    def _line(self, now: float) -> None:
        self._next_time = now + self._every
        figures = self._meter.figures(now)
        self._next_done = self._mark_after(figures.done)
        if self._emit is not None:
            self._emit("progress", figures.to_json())
        else:
            self._write(progress_line(figures, self._utcnow()))

    def _mark_after(self, done: int) -> float:
        """The next 10% mark above ``done`` (the end line covers 100%)."""
        total = self._meter.total
        if total <= 0 or self._step <= 0:
            return math.inf
        chunk = total * self._step
        mark = math.ceil((math.floor(done / chunk) + 1) * chunk - 1e-9)
        return mark if mark < total else math.inf

    def _write(self, line: str) -> None:
        print(line, file=self._stream or sys.stderr, flush=True)


class BarProgress:
    """A live rich bar on stderr, three lines that fit 80 columns::

    fetching ━━━━━━━━━━━━━━━━━━━━━━━━━━━━  45%  450/1000 0:00:40 ETA 1m 05s
      ok 447  retrying 7  failed 3  302s 12 · paused after 302, resumes in 4 s
      13.0 calls/s, limiter 10.0/s · calls 500, projected 1,111
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        auto_refresh: bool = True,
    ) -> None:
        self.console = console or Console(
            file=sys.stderr, force_terminal=True, force_interactive=True
        )
        self._clock = clock
        self._meter = Meter(0, _NoLimiter(), clock)
        self.display = _Bar(
            self._meter_now,
            TextColumn("[bold]fetching"),
            BarColumn(bar_width=None),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            _EtaColumn(self._meter_now),
            console=self.console,
            expand=True,
            transient=True,
            auto_refresh=auto_refresh,
            get_time=clock,
        )
        self._task: TaskID | None = None

    def _meter_now(self) -> Figures:
        return self._meter.figures()

    def start(self, report: RunReport, limiter: LimiterView) -> None:
        self._meter = Meter(report.pending_at_start, limiter, self._clock)
        self.display.start()
        self._task = self.display.add_task("fetch", total=report.pending_at_start)

    def update(self, tally: Tally) -> None:
        # Only the meter, per call; rich reads it when it redraws (10 times a second).
        self._meter.observe(tally)

    def stop(self) -> None:
        if self._task is None:
            return
        self.display.stop()  # a last redraw, from the final tally
        self._task = None

    def finish(self, report: RunReport) -> None:
        table = Table(title=f"run {report.run_id}", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        for label, value in summary_rows(report):
            table.add_row(label, value)
        self.console.print(table)


class _Bar(RichBar):
    """rich's Progress with two more lines: the counts (and the pause), the speeds and the cost."""

    def __init__(self, figures: Callable[[], Figures], *columns: Any, **options: Any) -> None:
        self._figures = figures  # before rich's __init__, which may render already
        super().__init__(*columns, **options)

    def get_renderables(self) -> Iterable[RenderableType]:
        f = self._figures()
        for task in self.tasks:
            self.update(task.id, completed=f.done)
        yield self.make_tasks_table(self.tasks)
        counts = Text(f"  {counts_text(f)}", no_wrap=True, overflow="ellipsis")
        if pause := pause_text(f):
            counts.append(" · ").append(pause, style="yellow")
        yield counts
        yield Text(f"  {speed_text(f)} · {cost_text(f)}", no_wrap=True, overflow="ellipsis")


class _EtaColumn(ProgressColumn):
    """The ETA of rule 2, never blank (the pause it includes is told on the next line)."""

    def __init__(self, figures: Callable[[], Figures]) -> None:
        super().__init__(table_column=Column(no_wrap=True))
        self._figures = figures

    def render(self, task: Task) -> Text:
        return Text(eta_only(self._figures()), style="cyan")


def make_progress(
    display: Display,
    *,
    stream: TextIO | None = None,
    emit: Callable[[str, dict[str, Any]], None] | None = None,
) -> Progress:
    """The display chosen by ``choose_display``; ``emit`` (JSON mode) makes log lines events."""
    if display == "bar":
        target = stream if stream is not None else sys.stderr
        return BarProgress(Console(file=target, force_terminal=True, force_interactive=True))
    if display == "log":
        return LogProgress(stream, emit=emit)
    return NoProgress()


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
