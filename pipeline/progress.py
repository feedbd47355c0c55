"""How a run shows its progress: a rich bar on a terminal, a log line every few seconds otherwise.

A nightly job's stderr goes to a log file, where a redrawn bar is noise; a person at a terminal
wants the bar.  Both get the same figures from the runner through ``Progress``.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichBar

from pipeline.records import Tally


class Progress(Protocol):
    def start(self, total: int) -> None: ...
    def update(self, tally: Tally) -> None: ...
    def stop(self) -> None: ...


class NoProgress:
    def start(self, total: int) -> None:
        pass

    def update(self, tally: Tally) -> None:
        pass

    def stop(self) -> None:
        pass


def _describe(tally: Tally) -> str:
    rate = f", limiter {tally.rate:.1f}/s" if tally.rate is not None else ""
    return (
        f"ok {tally.fetched:,}  failed {tally.failed:,}  retries {tally.retried:,}"
        f"  302s {tally.rate_limited:,}{rate}"
    )


class BarProgress:
    """A rich progress bar on stderr."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._bar = RichBar(
            TextColumn("[bold]fetching"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream or sys.stderr),
            transient=False,
        )
        self._task: TaskID | None = None

    def start(self, total: int) -> None:
        self._bar.start()
        self._task = self._bar.add_task("fetch", total=total, detail="")

    def update(self, tally: Tally) -> None:
        if self._task is not None:
            self._bar.update(self._task, completed=tally.done, detail=_describe(tally))

    def stop(self) -> None:
        self._bar.stop()


class LogProgress:
    """One line every ``every`` seconds, for logs of unattended runs."""

    def __init__(self, stream: TextIO | None = None, every: float = 15.0) -> None:
        self._stream = stream or sys.stderr
        self._every = every
        self._total = 0
        self._next = 0.0
        self._last: Tally | None = None

    def start(self, total: int) -> None:
        self._total = total
        self._next = time.monotonic() + self._every

    def update(self, tally: Tally) -> None:
        self._last = tally
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._every
            self._emit(tally)

    def stop(self) -> None:
        pass

    def _emit(self, tally: Tally) -> None:
        print(f"progress: {tally.done:,}/{self._total:,}  {_describe(tally)}", file=self._stream)


def make_progress(enabled: bool, stream: TextIO | None = None) -> Progress:
    """The bar on a terminal, periodic lines otherwise, nothing with --no-progress."""
    target = stream or sys.stderr
    if not enabled:
        return NoProgress()
    return BarProgress(target) if target.isatty() else LogProgress(target)
