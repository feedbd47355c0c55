"""pipeline.events: the event vocabulary as JSON lines, and never the token."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.config import Secret
from pipeline.events import LOGGER_NAME, EventLog, JsonFormatter, error_line
from tests.test_hardening import TOKENS, leaks_in_text

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
