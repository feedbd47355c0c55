"""pipeline.events and ``run --log-format json``: the event vocabulary, one JSON object per stderr
line (events, progress, library warnings, the final error), and never the token.

The CLI tests drive ``xhs-profiles run`` in-process (``CliRunner``) and once as a subprocess with
``--debug`` and faults, where the process-wide logging set-up is the CLI's own.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import pipeline.runner
from pipeline.cli import cli
from pipeline.config import Secret
from pipeline.events import LOGGER_NAME, EventLog, JsonFormatter, error_line
from tests.conftest import SandboxFactory
from tests.helpers import make_id, write_ids
from tests.test_hardening import FAST_BACKOFF, REPO, TOKENS, leaks_in_files, leaks_in_text

SNAPSHOT = "2026-11-28"
HEAD = ["ts", "level", "event", "run_id", "dt"]
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


# --- the formatter ---------------------------------------------------------------------------


def record(
    message: str = "%s",
    *args: object,
    level: int = logging.INFO,
    name: str = LOGGER_NAME,
    **extra: Any,
) -> logging.LogRecord:
    made = logging.LogRecord(name, level, __file__, 1, message, args, None)
    made.created = dt.datetime(2026, 11, 28, 3, 4, 5, 678_000, tzinfo=dt.UTC).timestamp()
    made.__dict__.update(extra)
    return made


def bound(secret: str | None = None) -> EventLog:
    events = EventLog("1a2b3c4d")
    events.bind(snapshot_date=dt.date(2026, 11, 28), secret=Secret(secret) if secret else None)
    return events


def test_an_event_is_one_line_with_the_five_head_keys_first_then_its_fields() -> None:
    fields = {"user_id": "ab" * 12, "code": 301, "attempt": 1, "run_id": "forged", "ts": "x"}
    line = JsonFormatter(bound()).format(record(event="id.retry", fields=fields))
    assert "\n" not in line
    assert line == (
        '{"ts":"2026-11-28T03:04:05.678Z","level":"info","event":"id.retry",'
        '"run_id":"1a2b3c4d","dt":"2026-11-28","user_id":"' + "ab" * 12 + '","code":301,'
        '"attempt":1}'
    )  # fields never replace the head's keys


def test_any_other_record_is_event_log_with_its_logger_message_and_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failing = record("could not %s", "parse", level=logging.WARNING, name="aiohttp.client")
        failing.exc_info = sys.exc_info()
    obj = json.loads(JsonFormatter(bound()).format(failing))
    assert list(obj)[:5] == HEAD
    assert (obj["level"], obj["event"], obj["logger"], obj["message"]) == (
        "warning",
        "log",
        "aiohttp.client",
        "could not parse",
    )
    assert obj["exception"].startswith("Traceback") and "ValueError: boom" in obj["exception"]


def test_before_the_run_binds_them_run_id_and_dt_are_null() -> None:
    obj = json.loads(JsonFormatter(EventLog()).format(record("hello")))
    assert (obj["run_id"], obj["dt"]) == (None, None)


@pytest.mark.parametrize("token", [*TOKENS, 'tok"with\\quote'])
def test_the_token_is_masked_in_every_string_even_where_json_would_escape_it(token: str) -> None:
    fields = {
        "message": f"GET /x?token={token}&userId=1 failed for {token}",
        "summary": {"nested": [f"again {token}"]},
    }
    line = JsonFormatter(bound(token)).format(record(event="id.failed", fields=fields))
    decoded = json.loads(line)
    assert leaks_in_text({"line": line, "decoded": repr(decoded)}, token) == []
    assert decoded["message"] == "GET /x?token=***&userId=1 failed for ***"
    assert decoded["summary"] == {"nested": ["again ***"]}


def test_floats_that_are_not_finite_become_null() -> None:
    line = JsonFormatter(bound()).format(
        record(event="progress", fields={"eta_s": float("nan"), "rate": float("inf"), "pct": 1.5})
    )
    obj = json.loads(line)
    assert (obj["eta_s"], obj["rate"], obj["pct"]) == (None, None, 1.5)


def test_the_error_line_carries_the_message_and_the_exit_code() -> None:
    created = dt.datetime(2026, 11, 28, 3, 4, 5, tzinfo=dt.UTC).timestamp()
    assert error_line(bound(), "stopped: x", 3, created=created) == (
        '{"ts":"2026-11-28T03:04:05.000Z","level":"error","event":"error","run_id":"1a2b3c4d",'
        '"dt":"2026-11-28","message":"stopped: x","exit_code":3}'
    )
    assert json.loads(error_line(None, "bad", 2))["run_id"] is None


@pytest.fixture
def event_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger(LOGGER_NAME)
    saved = logger.level
    yield logger
    logger.setLevel(saved)


def test_call_events_are_wanted_only_at_debug_level(event_logger: logging.Logger) -> None:
    events = EventLog()
    event_logger.setLevel(logging.INFO)
    assert (events.wants("call.done"), events.wants("id.retry")) == (False, True)
    event_logger.setLevel(logging.DEBUG)
    assert events.wants("call.done")
    assert not EventLog(enabled=False).wants("id.failed")


def test_in_text_logs_an_event_reads_as_its_name_and_fields(
    event_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    bound("s3cr3t-token").emit(
        "id.retry", {"user_id": "u1", "code": 301, "message": "echo s3cr3t-token"}
    )
    EventLog(enabled=False).emit("id.failed", {"user_id": "u2"})
    assert [r.getMessage() for r in caplog.records] == [
        "id.retry user_id=u1 code=301 message=echo ***"
    ]


# --- run --log-format json, in-process -------------------------------------------------------


def invoke(args: list[str], *, token: str = "sandbox") -> Result:
    env = {"JUSTONEAPI_TOKEN": token, "JUSTONEAPI_BASE_URL": None, "XHS_PROFILES_CRASH_AT": None}
    return CliRunner().invoke(cli, ["run", *args], obj=FAST_BACKOFF, env=env)


def json_run_args(csv_path: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return [
        str(csv_path), "--out", str(out), "--base-url", base_url, "--snapshot-date", SNAPSHOT,
        "--log-format", "json", *extra,
    ]  # fmt: skip


def parse_lines(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line as a JSON object with the five head keys (fails on any other line)."""
    lines = stderr.splitlines()
    assert lines, "nothing on stderr"
    parsed = []
    for line in lines:
        obj = json.loads(line)
        assert list(obj)[:5] == HEAD, line
        assert TS.fullmatch(obj["ts"]), line
        assert obj["level"] in ("debug", "info", "warning", "error"), line
        parsed.append(obj)
    return parsed


def events_of(lines: list[dict[str, Any]]) -> list[str]:
    return [line["event"] for line in lines]


def run_summary(out: Path) -> dict[str, Any]:
    [path] = (out / "_runs").glob("*.json")
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def test_every_stderr_line_of_a_json_run_is_an_event_and_the_last_one_is_the_summary(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    ids = [make_id(i, "json") for i in range(60)]
    api = sandbox(rate_limit=40, scripts={ids[0]: ["500", "ok"], ids[1]: ["404"]})
    csv_path = write_ids(tmp_path / "ids.csv", ids)
    out = tmp_path / "out"
    result = invoke(json_run_args(csv_path, out, api.base_url, "--rate", "1000"))
    assert result.exit_code == 0, result.output
    lines = parse_lines(result.stderr)
    kinds = events_of(lines)
    assert kinds[0] == "run.started" and kinds[-1] == "run.finished"
    assert {"id.retry", "id.failed", "rate.cut", "progress"} <= set(kinds)
    assert "call.done" not in kinds  # per-call events only with --debug
    run_id = lines[-1]["summary"]["run_id"]
    assert {(line["run_id"], line["dt"]) for line in lines} == {(run_id, SNAPSHOT)}
    started = lines[0]
    assert (started["ids"], started["out"], started["concurrency"]) == (60, str(out), 512)
    retry = next(line for line in lines if line["event"] == "id.retry")
    assert (retry["user_id"], retry["code"], retry["attempt"]) == (ids[0], 500, 1)
    failed = next(line for line in lines if line["event"] == "id.failed")
    assert (failed["user_id"], failed["code"], failed["retryable"]) == (ids[1], 404, False)
    cut = next(line for line in lines if line["event"] == "rate.cut")
    assert cut["rate"] < cut["previous_rate"] and cut["level"] == "warning"
    finished = lines[-1]
    assert finished["summary"] == run_summary(out)
    assert (finished["outcome"], finished["exit_code"]) == ("completed", 0)
    # stdout keeps its three closing lines; no table, no plain line on stderr.
    assert [line.split(" ", 1)[0] for line in result.stdout.splitlines()] == [
        "snapshot",
        "this",
        "output:",
    ]


def test_a_failing_json_run_ends_with_an_error_event_and_never_shows_the_token(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    token = TOKENS[1]
    ids = sorted(make_id(i, "json-fail") for i in range(8))
    api = sandbox(token=token, scripts={ids[0]: ["reset", "html502"], ids[5]: ["601"]})
    csv_path = write_ids(tmp_path / "ids.csv", ids)
    out = tmp_path / "out"
    args = json_run_args(csv_path, out, api.base_url, "--concurrency", "1", "--progress", "none")
    result = invoke(args, token=token)
    assert result.exit_code == 3, result.output
    lines = parse_lines(result.stderr)
    assert events_of(lines)[-2:] == ["run.finished", "error"]
    assert "progress" not in events_of(lines)
    error = lines[-1]
    assert error["message"] == (
        "stopped: insufficient balance (code 601): top up the account, then rerun; progress is kept"
    )
    assert (error["exit_code"], error["level"]) == (3, "error")
    assert error["run_id"] == lines[0]["run_id"] == run_summary(out)["run_id"]
    assert lines[-2]["summary"]["stopped_by"]["code"] == 601
    assert leaks_in_text({"stderr": result.stderr, "stdout": result.stdout}, token) == []
    assert leaks_in_files(out, token) == []


@pytest.mark.parametrize(
    ("extra", "exit_code", "message"),
    [
        (
            ["--concurrency", "0"],
            2,
            "Invalid value for '--concurrency' / '--max-concurrency': 0 is not in the range "
            "1<=x<=1024. "
            "(see xhs-profiles run --help)",
        ),
        (
            ["--progress", "bar"],
            2,
            "--progress bar cannot go with --log-format json (a bar is not JSON): "
            "use --progress log or none",
        ),
        (["--snapshot-date", "28/11/2026"], 2, None),
    ],
)
def test_a_usage_error_in_json_mode_is_one_error_event(
    tmp_path: Path, extra: list[str], exit_code: int, message: str | None
) -> None:
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(1)])
    # The option comes after the bad one: --log-format is read first all the same.
    args = [str(csv_path), "--out", str(tmp_path / "out"), *extra, "--log-format", "json"]
    result = invoke(args)
    assert (result.exit_code, result.stdout) == (exit_code, "")
    [error] = parse_lines(result.stderr)
    assert (error["event"], error["exit_code"]) == ("error", exit_code)
    expected = message or "--snapshot-date must be a date as YYYY-MM-DD, got '28/11/2026'"
    assert error["message"] == expected


def test_text_mode_keeps_the_plain_error_line(tmp_path: Path) -> None:
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(1)])
    result = invoke([str(csv_path), "--out", str(tmp_path / "out"), "--no-progress",
                     "--progress", "log"])  # fmt: skip
    assert (result.exit_code, result.stderr) == (
        2,
        "xhs-profiles: give --progress log or --no-progress, not both\n",
    )


def test_library_warnings_and_the_sandbox_notice_are_json_lines_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_flatten = pipeline.runner.flatten

    def warning_flatten(*args: Any, **kwargs: Any) -> Any:
        warnings.warn("a library is unhappy", UserWarning, stacklevel=1)
        return real_flatten(*args, **kwargs)

    monkeypatch.setattr(pipeline.runner, "flatten", warning_flatten)
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(i) for i in range(3)])
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        result = invoke(
            [str(csv_path), "--out", str(tmp_path / "out"), "--sandbox", "--log-format", "json"]
        )
    assert result.exit_code == 0, result.output
    lines = parse_lines(result.stderr)
    notice = lines[0]
    assert (notice["event"], notice["logger"]) == ("log", LOGGER_NAME)
    assert notice["message"].startswith(f"Sandbox mode: running {csv_path} against the built-in")
    warned = [line for line in lines if line.get("logger") == "py.warnings"]
    assert warned and warned[0]["level"] == "warning"
    assert "UserWarning: a library is unhappy" in warned[0]["message"]


def test_an_unexpected_error_with_debug_puts_the_masked_traceback_in_the_error_event(
    sandbox: SandboxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = TOKENS[0]
    api = sandbox(token=token)

    def broken_flatten(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(f"cannot flatten GET {api.base_url}/x?token={token}&userId=1")

    monkeypatch.setattr(pipeline.runner, "flatten", broken_flatten)
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(1)])
    out = tmp_path / "out"
    result = invoke(json_run_args(csv_path, out, api.base_url, "--debug"), token=token)
    assert result.exit_code == 1
    error = parse_lines(result.stderr)[-1]
    assert error["event"] == "error"
    assert error["message"].startswith("unexpected error: RuntimeError: cannot flatten GET ")
    assert "Traceback (most recent call last)" in error["traceback"]
    assert "token=***" in error["traceback"]
    assert leaks_in_text({"stderr": result.stderr}, token) == []


# --- run --log-format json --debug, a real process -------------------------------------------


@pytest.mark.slow
def test_a_debug_json_subprocess_writes_only_json_lines_with_call_events_and_no_token(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    token = TOKENS[1]
    ids = sorted(make_id(i, "json-sub") for i in range(40))
    api = sandbox(
        token=token,
        rate_limit=20,
        scripts={ids[0]: ["reset", "ok"], ids[1]: ["html502", "500", "ok"], ids[2]: ["404"]},
    )
    csv_path = write_ids(tmp_path / "ids.csv", ids)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUSTONEAPI_", "XHS_"))}
    env["JUSTONEAPI_TOKEN"] = token
    args = json_run_args(csv_path, out, api.base_url, "--debug", "--rate", "500")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = parse_lines(proc.stderr)
    kinds = set(events_of(lines))
    assert {"run.started", "call.done", "id.retry", "id.failed", "rate.cut", "run.finished"} <= (
        kinds
    )
    calls = [line for line in lines if line["event"] == "call.done"]
    assert len(calls) == run_summary(out)["requests"]["calls"]
    assert all(line["level"] == "debug" for line in calls)
    no_answer = next(c for c in calls if c["user_id"] == ids[0] and c["outcome"] == "retry")
    assert (no_answer["http_status"], no_answer["code"]) == (None, -1)
    html = next(c for c in calls if c["user_id"] == ids[1] and c["code"] == -1)
    assert html["http_status"] == 502 and html["latency_ms"] >= 0
    # The client's own --debug request lines come through as JSON too, without the token.
    assert any(line["event"] == "log" and "?userId=" in line["message"] for line in lines), (
        "no request line logged"
    )
    assert lines[-1]["summary"] == run_summary(out)
    assert leaks_in_text({"stdout": proc.stdout, "stderr": proc.stderr}, token) == []
    assert leaks_in_files(out, token) == []
