"""Structured run events on stderr: one vocabulary, written as text log records or JSON lines.

The fetch loop, the rate controller and the runner report what happens through ``EventLog.emit``
(handed to them as a plain callback); the CLI decides where records go.  With
``--log-format json`` every stderr line is one JSON object (``JsonFormatter`` on the root
handler renders events and any other log record alike; ``error_line`` renders the CLI's final
error), so a scheduler that keeps only stderr can parse all of it.

Every line starts with the same keys, in this order::

    {"ts": "2026-11-28T03:04:05.678Z", "level": "info", "event": "id.retry",
     "run_id": "1a2b3c4d", "dt": "2026-11-28", ...the event's fields}

=================  ========  =================================================================
event              level     fields
=================  ========  =================================================================
``run.started``    info      ids, requeued_failures, out, input, endpoint, sandbox, concurrency,
                             rate, max_calls, dry_run, tool_version
``call.done``      debug     user_id, attempt, code, http_status, latency_ms, outcome (only
                             with ``--debug``: one per call)
``id.retry``       info      user_id, code, attempt, retry_in_s, message
``id.failed``      warning   user_id, code, attempt, retryable, message
``rate.cut``       warning   reason (startup, probe, cruise, measure, latency), rate,
                             previous_rate, ceiling_estimate, in_flight_limit, cuts
``rate.pause``     warning   pause_s, rate (a Retry-After pause starts)
``progress``       info      done, total, pct, fetched, retrying, failed, retried, rate_limited,
                             calls, projected_calls, calls_per_s, limiter_rate, in_flight,
                             in_flight_limit, round_trip_s, eta_s, paused_s, elapsed_s, final
``run.finished``   info      outcome, exit_code, summary (the ``_runs/*.json`` object)
``error``          error     message, exit_code (the CLI's last line; traceback with --debug)
``log``            any       logger, message (any other record: libraries, warnings)
=================  ========  =================================================================

Rules: ``ts`` is the record's creation time, RFC 3339 in UTC with milliseconds and ``Z``;
``run_id`` and ``dt`` are null until the run binds them; the event's fields never replace these
five keys; every string value is masked (``redaction.mask``, with the run's token once bound)
before it is serialized, so no line can carry the token, escaped or not; floats that are not
finite become null (JSON has no NaN).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Mapping
from typing import Any, Final

from pipeline.config import Secret
from pipeline.redaction import mask
from pipeline.timestamps import iso_utc

LOGGER_NAME: Final = "pipeline.events"
EVENT_LEVELS: Final = {
    "run.started": logging.INFO,
    "call.done": logging.DEBUG,
    "id.retry": logging.INFO,
    "id.failed": logging.WARNING,
    "rate.cut": logging.WARNING,
    "rate.pause": logging.WARNING,
    "progress": logging.INFO,
    "run.finished": logging.INFO,
    "error": logging.ERROR,
    "log": logging.INFO,
}
_HEAD: Final = ("ts", "level", "event", "run_id", "dt")


class EventLog:
    """Emits events as records of the ``pipeline.events`` logger, carrying the run's context.

    ``run_id`` is known from the start (the CLI draws it before anything is printed); the
    snapshot date and the token are bound once the configuration is validated.  An EventLog
    made with ``enabled=False`` drops everything (a library caller that configured nothing).
    """

    def __init__(self, run_id: str | None = None, *, enabled: bool = True) -> None:
        self.run_id = run_id
        self.snapshot_date: dt.date | None = None
        self.secret: Secret | None = None
        self._logger = logging.getLogger(LOGGER_NAME)
        self._enabled = enabled

    def bind(self, *, snapshot_date: dt.date, secret: Secret | None = None) -> None:
        self.snapshot_date = snapshot_date
        if secret is not None:
            self.secret = secret

    def wants(self, event: str) -> bool:
        """Whether ``event`` would be written (``call.done`` only at debug level)."""
        return self._enabled and self._logger.isEnabledFor(EVENT_LEVELS[event])

    def emit(self, event: str, fields: Mapping[str, Any] | None = None) -> None:
        level = EVENT_LEVELS[event]
        if self._enabled and self._logger.isEnabledFor(level):
            described = _Described(event, fields or {}, self.secret)
            self._logger.log(level, "%s", described, extra={"event": event, "fields": fields})

    def log(self, message: str) -> None:
        """A notice in words (event ``log``): the sandbox banner, for instance."""
        if self._enabled and self._logger.isEnabledFor(logging.INFO):
            self._logger.info("%s", message, extra={"event": "log"})

    def head(self, level: str, event: str, created: float) -> dict[str, Any]:
        return {
            "ts": iso_utc(dt.datetime.fromtimestamp(created, dt.UTC)),
            "level": level,
            "event": event,
            "run_id": self.run_id,
            "dt": None if self.snapshot_date is None else self.snapshot_date.isoformat(),
        }

    def render(self, head: dict[str, Any], fields: Mapping[str, Any]) -> str:
        """One JSON line: ``head`` then ``fields`` (never over the head's keys), masked."""
        body = dict(head)
        for key, value in fields.items():
            if key not in _HEAD:
                body[key] = value
        secret = self.secret.reveal() if self.secret is not None else None
        return json.dumps(
            _clean(body, secret), ensure_ascii=False, separators=(",", ":"), default=str
        )


class JsonFormatter(logging.Formatter):
    """Any log record as one JSON line; records that are not events become event ``log``."""

    def __init__(self, events: EventLog) -> None:
        super().__init__()
        self._events = events

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "event", None)
        fields: Mapping[str, Any] | None = getattr(record, "fields", None)
        head = self._events.head(record.levelname.lower(), event or "log", record.created)
        extra: dict[str, Any] = {}
        if event in (None, "log"):
            extra = {"logger": record.name, "message": record.getMessage()}
        elif fields:
            extra = dict(fields)
        if record.exc_info:
            extra["exception"] = self.formatException(record.exc_info)
        return self._events.render(head, extra)


def error_line(
    events: EventLog | None,
    message: str,
    exit_code: int,
    *,
    traceback: str | None = None,
    created: float | None = None,
) -> str:
    """The CLI's final error as a JSON line (``event: error``)."""
    events = events or EventLog()
    when = created if created is not None else dt.datetime.now(dt.UTC).timestamp()
    fields: dict[str, Any] = {"message": message, "exit_code": exit_code}
    if traceback is not None:
        fields["traceback"] = traceback
    return events.render(events.head("error", "error", when), fields)


class _Described:
    """An event's text form for text-mode logs (``--debug``): ``id.retry user_id=... code=301``.

    Rendered only when a text handler formats the record.
    """

    __slots__ = ("event", "fields", "secret")

    def __init__(self, event: str, fields: Mapping[str, Any], secret: Secret | None) -> None:
        self.event = event
        self.fields = fields
        self.secret = secret

    def __str__(self) -> str:
        parts = [self.event]
        for key, value in self.fields.items():
            if isinstance(value, Mapping):
                text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
            else:
                text = str(value)
            parts.append(f"{key}={text}")
        return mask(" ".join(parts), self.secret.reveal() if self.secret is not None else None)


def _clean(value: Any, secret: str | None) -> Any:
    """Strings masked, non-finite floats null, containers walked (keys are ours: left alone)."""
    if isinstance(value, str):
        return mask(value, secret)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v, secret) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v, secret) for v in value]
    if value is None or isinstance(value, bool | int):
        return value
    return mask(str(value), secret)
