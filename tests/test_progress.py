"""pipeline.progress and ``run --progress``: where the bar is drawn (a real pseudo-terminal and a
pipe), the bar's text during a 302 pause and the log lines on a simulated clock, and the summary
at the end, whose numbers are those of ``_runs/*.json``."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import pty
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from pipeline.cli import cli
from pipeline.config import RunConfig, Secret
from pipeline.progress import BarProgress, LogProgress, choose_display, summary_rows
from pipeline.records import Tally
from pipeline.run_report import InputSummary, Outcome, RunReport
from tests.conftest import SandboxFactory
from tests.helpers import make_id, write_ids
from tests.test_hardening import FAST_BACKOFF, REPO

SNAPSHOT = "2026-11-28"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# --- where the bar is drawn ------------------------------------------------------------------


@contextlib.contextmanager
def terminal() -> Iterator[TextIO]:
    """A real pseudo-terminal's slave end, as a text stream (its master end drained)."""
    master, slave = os.openpty()
    stream = os.fdopen(slave, "w")
    try:
        yield stream
    finally:
        stream.close()
        os.close(master)


@contextlib.contextmanager
def pipe() -> Iterator[TextIO]:
    read, write = os.pipe()
    stream = os.fdopen(write, "w")
    try:
        yield stream
    finally:
        stream.close()
        os.close(read)


ON_A_TERMINAL = [
    ({}, "bar"),
    ({"TERM": "xterm-256color"}, "bar"),
    ({"NO_COLOR": "1"}, "bar"),  # no colours, still a bar
    ({"TERM": "dumb"}, "log"),
    ({"TERM": "unknown"}, "log"),
    ({"CI": "true"}, "log"),
    ({"CI": "false"}, "bar"),
    ({"CI": "true", "TTY_INTERACTIVE": "1"}, "bar"),
    ({"TTY_INTERACTIVE": "0"}, "log"),
    ({"TTY_COMPATIBLE": "0"}, "log"),
]
ON_A_PIPE = [
    ({}, "log"),
    ({"TERM": "xterm-256color"}, "log"),
    ({"TTY_INTERACTIVE": "1"}, "bar"),
    ({"TTY_COMPATIBLE": "1"}, "bar"),
    ({"FORCE_COLOR": "1"}, "bar"),  # rich takes FORCE_COLOR for a terminal
    ({"FORCE_COLOR": "1", "TERM": "dumb"}, "log"),
    ({"FORCE_COLOR": "1", "CI": "1"}, "log"),
]


@pytest.mark.parametrize(("environ", "expected"), ON_A_TERMINAL, ids=str)
def test_auto_on_a_real_pseudo_terminal_draws_the_bar_unless_the_environment_says_not(
    environ: dict[str, str], expected: str
) -> None:
    with terminal() as stream:
        assert stream.isatty()
        assert choose_display("auto", stream, environ) == expected


@pytest.mark.parametrize(("environ", "expected"), ON_A_PIPE, ids=str)
def test_auto_on_a_pipe_writes_log_lines_unless_the_environment_forces_a_terminal(
    environ: dict[str, str], expected: str
) -> None:
    with pipe() as stream:
        assert not stream.isatty()
        assert choose_display("auto", stream, environ) == expected


@pytest.mark.parametrize("environ", [env for env, _ in ON_A_TERMINAL if "CI" not in env], ids=str)
def test_auto_agrees_with_richs_own_is_interactive_where_ci_is_not_involved(
    environ: dict[str, str],
) -> None:
    for opened in (terminal, pipe):
        with opened() as stream:
            rich_says = Console(file=stream, _environ=environ).is_interactive
            assert (choose_display("auto", stream, environ) == "bar") is rich_says


@pytest.mark.parametrize("mode", ["bar", "log", "none"])
def test_an_explicit_mode_is_taken_as_given_wherever_stderr_goes(mode: str) -> None:
    with terminal() as tty, pipe() as piped:
        assert choose_display(mode, tty, {"CI": "1"}) == mode
        assert choose_display(mode, piped, {}) == mode


# --- figures on a simulated clock ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def utc(self) -> dt.datetime:
        return dt.datetime(2026, 11, 28, 3, 0, 0, tzinfo=dt.UTC) + dt.timedelta(seconds=self.now)


@dataclass
class FakeLimiter:
    rate: float | None = None
    paused_until: float = float("-inf")


def report_of(total: int, out: Path = Path("out")) -> RunReport:
    config = RunConfig(
        input_path=Path("ids.csv"),
        out_dir=out,
        token=Secret("t"),
        base_url="http://127.0.0.1:9",
        snapshot_date=dt.date(2026, 11, 28),
    )
    summary = InputSummary(path="ids.csv", encoding="utf-8", column="user_id", sha256="0" * 64)
    return RunReport(
        run_id="1a2b3c4d",
        tool_version="0",
        started_at=dt.datetime(2026, 11, 28, 3, tzinfo=dt.UTC),
        config=config,
        input=summary,
        outcome=Outcome.COMPLETED,
        pending_at_start=total,
    )


def tally(done: int, calls: int, **counts: int) -> Tally:
    return Tally(done=done, fetched=counts.pop("fetched", done), calls=calls, **counts)


def bar_text(bar: BarProgress) -> list[str]:
    console = Console(file=io.StringIO(), width=140, record=True, color_system=None)
    console.print(bar.display.get_renderable())
    return [line.rstrip() for line in console.export_text().splitlines()]


def paused_bar() -> tuple[BarProgress, Clock, FakeLimiter]:
    """1,000 ids; 450 done after 40 s (100 of them by 10 s); the limiter at 10/s, paused."""
    clock, limiter = Clock(), FakeLimiter(rate=10.0)
    quiet = Console(file=io.StringIO(), force_terminal=True, width=140)
    bar = BarProgress(quiet, clock=clock, auto_refresh=False)
    bar.start(report_of(1000), limiter)
    clock.now = 10.0
    bar.update(tally(100, 110))
    clock.now = 40.0
    limiter.paused_until = 44.0
    bar.update(tally(450, 500, retrying=7, failed=3, fetched=447, rate_limited=12))
    return bar, clock, limiter


def test_during_a_302_pause_the_bar_says_when_calls_resume_and_keeps_its_eta() -> None:
    bar, _clock, _limiter = paused_bar()
    # Speed: the lower of 350 ids / 30 s observed and 10 calls/s ÷ 1.11 calls per id = 9 ids/s;
    # 550 ids left → 61.1 s, plus the 4 s left of the pause.
    first, counts, cost = bar_text(bar)
    assert re.fullmatch(r"fetching ━+╸? +45%  450/1000 0:00:40 ETA 1m 05s", first), first
    assert counts == "  ok 447  retrying 7  failed 3  302s 12 · paused after 302, resumes in 4 s"
    assert cost == "  13.0 calls/s, limiter 10.0/s · calls 500, projected 1,111"
    bar.stop()


def test_the_bar_fits_80_columns_during_a_pause() -> None:
    bar, _clock, _limiter = paused_bar()
    console = Console(file=io.StringIO(), width=80, record=True, color_system=None)
    console.print(bar.display.get_renderable())
    lines = console.export_text().splitlines()
    bar.stop()
    assert len(lines) == 3 and all(len(line) <= 80 for line in lines)
    assert lines[0].endswith(" 45%  450/1000 0:00:40 ETA 1m 05s")
    assert lines[1].endswith("· paused after 302, resumes in 4 s")


def test_after_30_s_without_progress_the_eta_is_still_shown_not_blank() -> None:
    bar, clock, limiter = paused_bar()
    limiter.paused_until = 100.0  # a Retry-After of a minute
    clock.now = 80.0  # 40 s since the last id was done
    first, counts, _ = bar_text(bar)
    # Nothing done in the last 30 s: the run's average, 450 ids / 80 s, is the speed (below the
    # limiter's 9 ids/s): 550 ids → 97.8 s, plus the 20 s left of the pause.
    assert first.endswith(" 0:01:20 ETA 1m 58s")
    assert counts.endswith(" · paused after 302, resumes in 20 s")
    clock.now = 101.0
    first, counts, _ = bar_text(bar)
    assert first.endswith(" 0:01:41 ETA 2m 03s")
    assert counts == "  ok 447  retrying 7  failed 3  302s 12"  # the pause is over: no word of it
    bar.stop()


def test_log_lines_come_at_the_start_every_10_percent_or_15_s_and_at_the_end() -> None:
    clock, stream = Clock(), io.StringIO()
    progress = LogProgress(stream, clock=clock, utcnow=clock.utc)
    progress.start(report_of(100), FakeLimiter())
    for now, done in [(1, 5), (2, 10), (10, 12), (16.5, 12), (17, 12), (18, 20), (19, 95),
                      (20, 100)]:  # fmt: skip
        clock.now = now
        progress.update(tally(done, done + 2))
    clock.now = 21.0
    progress.stop()
    counts = "ok {0}  retrying 0  failed 0  302s 0"
    assert stream.getvalue().splitlines() == [
        "2026-11-28T03:00:00Z started run 1a2b3c4d: 100 ids to call, snapshot 2026-11-28, "
        "output out",
        "2026-11-28T03:00:02Z progress 10.0% 10/100 | " + counts.format(10) + " | 6.0 calls/s, "
        "limiter no limit | calls 12, projected 120 | ETA 18 s",
        # 15 s after the last line, though no 10% mark was passed
        "2026-11-28T03:00:17Z progress 12.0% 12/100 | " + counts.format(12) + " | 0.8 calls/s, "
        "limiter no limit | calls 14, projected 117 | ETA 2m 05s",
        "2026-11-28T03:00:18Z progress 20.0% 20/100 | " + counts.format(20) + " | 1.2 calls/s, "
        "limiter no limit | calls 22, projected 110 | ETA 1m 12s",
        "2026-11-28T03:00:19Z progress 95.0% 95/100 | " + counts.format(95) + " | 5.1 calls/s, "
        "limiter no limit | calls 97, projected 102 | ETA 1 s",
        "2026-11-28T03:00:21Z finished 100.0% 100/100 | " + counts.format(100) + " | 4.9 calls/s, "
        "limiter no limit | calls 102, projected 102 | in 21 s",
    ]


def test_json_log_lines_are_progress_events_with_the_same_figures() -> None:
    clock = Clock()
    seen: list[tuple[str, dict[str, Any]]] = []
    progress = LogProgress(emit=lambda event, fields: seen.append((event, fields)), clock=clock)
    progress.start(report_of(10), FakeLimiter(rate=2.0, paused_until=5.0))
    clock.now = 2.0
    progress.update(tally(1, 1))
    clock.now = 3.0
    progress.stop()
    assert seen == [
        ("progress", {"done": 1, "total": 10, "pct": 10.0, "fetched": 1, "retrying": 0,
                      "failed": 0, "retried": 0, "rate_limited": 0, "calls": 1,
                      "projected_calls": 10, "calls_per_s": 0.5, "limiter_rate": 2.0,
                      "in_flight": 0, "in_flight_limit": None, "round_trip_s": None,
                      "eta_s": 21.0, "paused_s": 3.0, "elapsed_s": 2.0, "final": False}),
        ("progress", {"done": 1, "total": 10, "pct": 10.0, "fetched": 1, "retrying": 0,
                      "failed": 0, "retried": 0, "rate_limited": 0, "calls": 1,
                      "projected_calls": 10, "calls_per_s": 0.3, "limiter_rate": 2.0,
                      "in_flight": 0, "in_flight_limit": None, "round_trip_s": None,
                      "eta_s": 29.0, "paused_s": 2.0, "elapsed_s": 3.0, "final": True}),
    ]  # fmt: skip


# --- the summary at the end ------------------------------------------------------------------


def invoke(args: list[str], env: dict[str, str | None] | None = None) -> Result:
    environment = {"JUSTONEAPI_TOKEN": "sandbox", "JUSTONEAPI_BASE_URL": None, **(env or {})}
    return CliRunner().invoke(cli, ["run", *args], obj=FAST_BACKOFF, env=environment)


def failing_run(sandbox: SandboxFactory, tmp_path: Path, *extra: str) -> tuple[Result, Path]:
    tmp_path.mkdir(exist_ok=True)
    ids = [make_id(i, "summary") for i in range(12)]
    api = sandbox(scripts={ids[0]: ["404"], ids[1]: ["500"] * 3, ids[2]: ["301", "ok"]})
    csv_path = write_ids(tmp_path / "ids.csv", [*ids, "not-an-id"])
    out = tmp_path / "out"
    args = [str(csv_path), "--out", str(out), "--base-url", api.base_url,
            "--snapshot-date", SNAPSHOT, "--max-attempts", "3", *extra]  # fmt: skip
    return invoke(args), out


def summary_lines(stderr: str) -> dict[str, str]:
    lines = stderr.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("summary of run ")))
    rows = {}
    for line in lines[start + 1 :]:
        label, value = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        rows[label] = value
    return rows


def test_the_summary_lines_show_the_numbers_of_the_runs_json(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    result, out = failing_run(sandbox, tmp_path, "--progress", "log")
    assert result.exit_code == 0, result.output
    [path] = (out / "_runs").glob("*.json")
    summary = json.loads(path.read_text())
    rows = summary_lines(result.stderr)
    req, snap = summary["requests"], summary["snapshot"]
    assert rows["outcome"] == f"{summary['outcome']} (exit {summary['exit_code']})"
    assert rows["calls"] == f"{req['calls']:,}"
    assert rows["calls per profile"] == f"{req['calls'] / req['fetched']:.2f}"
    assert rows["302s"] == f"{req['rate_limited']:,}"
    assert rows["retried"] == f"{req['retried']:,}"
    assert rows["duration"] == f"{summary['duration_s']:.1f} s"
    by_code = ", ".join(f"{c} ×{n}" for c, n in sorted(snap["failures_by_code"].items()))
    assert rows["failures by code"] == by_code == "400 ×1, 404 ×1, 500 ×1"
    assert rows["snapshot"] == (
        f"{SNAPSHOT}: {snap['written']} profiles, {snap['failed']} failed, "
        f"{snap['rejected']} rejected, {snap['pending']} pending"
    )
    assert rows["failures.csv"] == f"{out / summary['failures_file']} (3 rows)"
    assert rows["run summary"] == str(path)
    assert rows["next step"] == (
        "rerun the same command to try the 1 transient failures again "
        f"(see failures/dt={SNAPSHOT}/failures.csv)"
    )
    # The closing lines on stdout are those of a run without progress.
    assert result.stdout.splitlines()[0] == f"snapshot {SNAPSHOT}: 10 profiles, 3 failed, 0 pending"


def test_the_bar_mode_table_holds_the_same_rows(sandbox: SandboxFactory, tmp_path: Path) -> None:
    result, out = failing_run(sandbox, tmp_path, "--progress", "bar")
    assert result.exit_code == 0, result.output
    assert "\x1b[?25l" in result.stderr  # the live bar drew (cursor hidden while it runs)
    text = ANSI.sub("", result.stderr)
    assert "started run" not in text
    [path] = (out / "_runs").glob("*.json")
    summary = json.loads(path.read_text())
    assert f"│ calls             │ {summary['requests']['calls']}" in text
    assert "│ failures by code  │ 400 ×1, 404 ×1, 500 ×1" in text
    assert f"│ outcome           │ completed (exit {summary['exit_code']})" in text


def test_summary_rows_come_from_the_report() -> None:
    rows = dict(summary_rows(report_of(0)))
    assert rows["calls per profile"] == "--"  # no profile fetched: no division by zero
    assert rows["next step"] == "rerun the same command to resume (0 ids pending)"


def test_auto_in_a_pipe_writes_lines_and_none_writes_nothing(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    auto, _ = failing_run(sandbox, tmp_path / "a")
    assert auto.exit_code == 0, auto.output
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ started run [0-9a-f]{8}: 12 ids to call, "
                    rf"snapshot {SNAPSHOT}, output ", auto.stderr)  # fmt: skip
    none, _ = failing_run(sandbox, tmp_path / "n", "--progress", "none")
    assert (none.exit_code, none.stderr) == (0, "")


def test_tty_interactive_1_makes_auto_draw_the_bar_in_a_pipe(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    ids = [make_id(i) for i in range(5)]
    api = sandbox()
    csv_path = write_ids(tmp_path / "ids.csv", ids)
    args = [str(csv_path), "--out", str(tmp_path / "out"), "--base-url", api.base_url]
    result = invoke(args, env={"TTY_INTERACTIVE": "1", "CI": None})
    assert result.exit_code == 0, result.output
    assert "\x1b[?25l" in result.stderr and "started run" not in result.stderr


# --- a real process on a real pseudo-terminal ------------------------------------------------


def run_on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """``xhs-profiles run ARGS`` with stderr on a pseudo-terminal; what the terminal got."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    code = proc.wait(timeout=90)
    reader.join(timeout=10)
    os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_a_run_on_a_real_terminal_draws_the_bar_then_the_table_and_term_dumb_writes_lines(
    tmp_path: Path,
) -> None:
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(i, "pty") for i in range(40)])
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TTY_INTERACTIVE")}
    env = {**env, "TERM": "xterm-256color", "COLUMNS": "120"}
    args = [str(csv_path), "--sandbox", "--snapshot-date", SNAPSHOT]
    code, seen = run_on_a_terminal([*args, "--out", str(tmp_path / "bar")], env)
    assert code == 0, seen
    text = ANSI.sub("", seen)
    assert "\x1b[?25l" in seen and "fetching" in text and " 40/40 " in text
    assert "│ outcome           │ completed (exit 0)" in text
    assert "started run" not in text
    code, seen = run_on_a_terminal(
        [*args, "--out", str(tmp_path / "dumb")], {**env, "TERM": "dumb"}
    )
    assert code == 0, seen
    assert "\x1b[" not in seen
    assert " started run " in seen and " finished 100.0% 40/40 " in seen
