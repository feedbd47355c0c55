"""Masking the API token in any text that leaves the process.

``mask`` is the one rule, used for the CLI's messages and ``--debug`` tracebacks, the API's own
messages and transport errors the client echoes, and httpx's and httpcore's log records:

- the token itself, when the caller knows it, becomes ``***`` wherever it stands;
- ``token=<value>`` (any case, up to ``&``, whitespace or a quote) becomes ``token=***``, so a
  URL is masked even where the token is not known (a log record, a traceback).

``install_log_redaction`` puts the filter on httpx's and httpcore's loggers.
"""

from __future__ import annotations

import logging
import re
from typing import Final

_TOKEN_IN_TEXT: Final = re.compile(r"(token=)[^&\s\"']*", re.IGNORECASE)
_REDACTED_LOGGERS: Final = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


def mask(text: str, secret: str | None = None) -> str:
    """``text`` with ``secret`` (when given) and every ``token=<value>`` masked as ``***``."""
    if secret:
        text = text.replace(secret, "***")
    return _TOKEN_IN_TEXT.sub(r"\1***", text)


class _RedactTokenFilter(logging.Filter):
    """Rewrites the formatted message before any handler sees the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # a malformed record: logging reports it; nothing to redact reliably
        redacted = mask(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def install_log_redaction() -> None:
    """Mask the token in httpx's and httpcore's log records (idempotent).

    A logger's filters only see records created on that logger, not its children's, so each
    httpcore child logger gets the filter too.
    """
    for name in _REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactTokenFilter) for f in logger.filters):
            logger.addFilter(_RedactTokenFilter())
