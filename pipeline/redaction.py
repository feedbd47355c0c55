"""Masking the API token (and the object store's secrets) in any text that leaves the process.

``mask`` is the one rule, used for the CLI's messages and ``--debug`` tracebacks, the API's own
messages and transport errors the client echoes, the object store's errors, and httpx's and
httpcore's log records:

- the token itself, when the caller knows it, becomes ``***`` wherever it stands;
- ``token=<value>`` (any case, up to ``&``, whitespace or a quote) becomes ``token=***``, so a
  URL is masked even where the token is not known (a log record, a traceback);
- the values of the secret AWS variables (``SECRET_ENV``: the secret key and session token
  that s3fs and botocore read from the environment), wherever they stand, and the value after
  a secret's name (``aws_secret_access_key = ...``, ``X-Amz-Security-Token: ...``), as a
  config file or a request's headers would show it.

``install_log_redaction`` puts the filter on httpx's and httpcore's loggers.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Final

SECRET_ENV: Final = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
# Shorter values are not masked: replacing a 3-letter word everywhere would garble messages, and
# no real secret key or session token is that short.
_MIN_SECRET_CHARS: Final = 8
_TOKEN_IN_TEXT: Final = re.compile(r"(token=)[^&\s\"']*", re.IGNORECASE)
_AWS_SECRET_IN_TEXT: Final = re.compile(
    r"((?:aws_secret_access_key|secret_access_key|secretaccesskey|aws_session_token|"
    r"sessiontoken|x-amz-security-token)[\"']?\s*[=:]\s*[\"']?)[^\s\"',;&}]+",
    re.IGNORECASE,
)
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
    """``text`` with ``secret`` (when given), the secret AWS variables' values and every
    ``token=<value>`` masked as ``***``."""
    if secret:
        text = text.replace(secret, "***")
    for name in SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= _MIN_SECRET_CHARS and value in text:
            text = text.replace(value, "***")
    text = _TOKEN_IN_TEXT.sub(r"\1***", text)
    return _AWS_SECRET_IN_TEXT.sub(r"\1***", text)


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
