"""pipeline.transport: the aiohttp transport's pool, no silent re-sends, proxies read once."""

from __future__ import annotations

import pytest
from httpx_aiohttp import AiohttpTransport

from pipeline.transport import env_proxy, make_transport


async def test_make_transport_pools_keepalive_connections_without_silent_resends() -> None:
    async with make_transport(concurrency=7) as transport:
        assert isinstance(transport, AiohttpTransport)
        session = transport.get_client()
        try:
            assert session.connector is not None and session.connector.limit == 7
            # aiohttp's silent re-send of a GET on a dropped keep-alive connection is off:
            # every call is billed, so only the runner may retry.
            assert session._retry_connection is False
            assert session.trust_env is False  # proxies are read once, by env_proxy
        finally:
            await session.close()


@pytest.mark.parametrize(
    ("env", "url", "expected"),
    [
        ({}, "https://api.example.com", None),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https://api.example.com", "http://proxy:3128"),
        ({"https_proxy": "http://proxy:3128"}, "http://api.example.com", None),
        (
            {"HTTP_PROXY": "http://p:1", "NO_PROXY": "api.example.com"},
            "http://api.example.com",
            None,
        ),
        ({"ALL_PROXY": "socks5://p:1"}, "http://api.example.com", "socks5://p:1"),
        ({"HTTP_PROXY": "http://p:1"}, "http://127.0.0.1:8000", None),
    ],
)
def test_env_proxy_reads_the_proxy_variables_once_like_httpx(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str, expected: str | None
) -> None:
    for name in (
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert env_proxy(url) == expected
