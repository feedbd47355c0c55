"""pipeline.redaction: the one masking rule, and the filter on httpx's and httpcore's loggers."""

from __future__ import annotations

import logging

import httpx
import pytest

from pipeline.redaction import install_log_redaction, mask

TOKEN = "tok-Zq81-SECRET-c0ffee-7731"
USER = "5a901362e8ac2b36c99bce33"
BASE = "https://api.justoneapi.test"


def test_mask_masks_the_token_up_to_ampersand_space_or_quote() -> None:
    assert mask(f"GET {BASE}/v4?token={TOKEN}&userId={USER}") == (
        f"GET {BASE}/v4?token=***&userId={USER}"
    )
    assert (
        mask(f'"https://h/x?userId=1&token={TOKEN}" 200') == '"https://h/x?userId=1&token=***" 200'
    )
    assert mask(f"token={TOKEN} next") == "token=*** next"
    assert mask(f"Token={TOKEN}'") == "Token=***'"
    assert mask("no secret here") == "no secret here"
    assert mask(f"echo {TOKEN}!", TOKEN) == "echo ***!"  # the literal token, when it is known


async def test_an_httpx_log_line_shows_the_token_masked(caplog: pytest.LogCaptureFixture) -> None:
    """ProfileClient sends through the transport, which logs no URL; an AsyncClient used
    alongside (or a future change) would log one at INFO: the filter masks it."""
    install_log_redaction()
    install_log_redaction()  # idempotent
    assert (
        sum(type(f).__name__ == "_RedactTokenFilter" for f in logging.getLogger("httpx").filters)
        == 1
    )
    caplog.set_level(logging.INFO, logger="httpx")
    transport = httpx.MockTransport(lambda _request: httpx.Response(200, json={"code": 0}))
    async with httpx.AsyncClient(transport=transport) as http:
        await http.get(f"{BASE}/v4", params={"token": TOKEN, "userId": USER})
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert len(lines) == 1
    assert "HTTP Request: GET" in lines[0]
    assert "token=***" in lines[0]
    assert f"userId={USER}" in lines[0]
    assert TOKEN not in caplog.text


async def test_httpcore_child_loggers_are_filtered_too() -> None:
    install_log_redaction()
    for name in ("httpcore", "httpcore.http11", "httpcore.connection", "httpcore.http2"):
        assert any(
            type(f).__name__ == "_RedactTokenFilter" for f in logging.getLogger(name).filters
        )
