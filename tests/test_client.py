"""pipeline.client: one call per id, every classification rule, and a token that never leaks.

All HTTP goes through ``httpx.MockTransport``: nothing leaves the process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import gzip
import json
import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest

from pipeline.client import ProfileClient
from pipeline.config import Secret
from pipeline.errors import (
    AccountError,
    EndpointGoneError,
    FetchError,
    PermanentError,
    RateLimitedError,
    StopRun,
    TransientError,
    WrongUserError,
)
from pipeline.ratelimit import RateController
from pipeline.records import CallTrace, FetchedProfile
from pipeline.transport import USER_AGENT, make_transport

TOKEN = "tok-Zq81-SECRET-c0ffee-7731"
USER = "5a901362e8ac2b36c99bce33"
BASE = "https://api.justoneapi.test"
GOLDEN = Path(__file__).parent / "golden"
GOLDEN_SAMPLES = sorted(GOLDEN.glob("*.json"))
E = TypeVar("E", bound=BaseException)
Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


class SpyLimiter(RateController):
    """A real, uncapped controller that also records what the client told it."""

    def __init__(self) -> None:
        super().__init__(None)
        self.acquired = 0
        self.successes = 0
        self.faults = 0  # successes that were transient failures (301, 500, 503)
        self.failed = 0  # calls with no usable answer
        self.limited: list[tuple[float | None, float | None]] = []

    async def acquire(self) -> float:
        self.acquired += 1
        return await super().acquire()

    def on_success(self, *, sent_at: float | None = None, fault: bool = False) -> None:
        self.successes += 1
        self.faults += fault
        super().on_success(sent_at=sent_at, fault=fault)

    def on_failed(self, *, sent_at: float | None = None) -> None:
        self.failed += 1
        super().on_failed(sent_at=sent_at)

    def on_rate_limited(self, retry_after: float | None, *, sent_at: float | None = None) -> None:
        self.limited.append((retry_after, sent_at))
        super().on_rate_limited(retry_after, sent_at=sent_at)


class Outcome:
    def __init__(self, limiter: SpyLimiter, requests: list[httpx.Request]):
        self.limiter = limiter
        self.requests = requests


async def run_fetch(
    handler: Handler, *, user_id: str = USER, version: str = "v4", **kwargs: Any
) -> tuple[FetchedProfile | BaseException, Outcome]:
    requests: list[httpx.Request] = []

    async def recording(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        response = handler(request)
        if not isinstance(response, httpx.Response):
            response = await response
        return response

    limiter = SpyLimiter()
    transport = httpx.MockTransport(recording)
    async with transport:
        client = ProfileClient(
            transport,
            endpoint_url=f"{BASE}/api/xiaohongshu/get-user/{version}",
            token=Secret(TOKEN),
            limiter=limiter,
            **{"timeout": 5.0, **kwargs},
        )
        outcome = Outcome(limiter, requests)
        try:
            return await client.fetch(user_id), outcome
        except (FetchError, StopRun) as exc:
            return exc, outcome


async def fetch_ok(handler: Handler, **kwargs: Any) -> tuple[FetchedProfile, Outcome]:
    result, outcome = await run_fetch(handler, **kwargs)
    assert isinstance(result, FetchedProfile), result
    return result, outcome


async def fetch_error(handler: Handler, expected: type[E], **kwargs: Any) -> tuple[E, Outcome]:
    result, outcome = await run_fetch(handler, **kwargs)
    assert type(result) is expected, repr(result)
    assert isinstance(result, expected)
    assert_token_absent(result)
    return result, outcome


def assert_token_absent(exc: BaseException) -> None:
    """Neither the error nor anything chained to it shows the token."""
    seen: BaseException | None = exc
    while seen is not None:
        for text in (str(seen), repr(seen), repr(seen.args), *traceback.format_exception(seen)):
            assert TOKEN not in text
        seen = seen.__cause__ or seen.__context__


def reply(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers=headers)

    return handler


def envelope(code: Any, **fields: Any) -> dict[str, Any]:
    return {"code": code, "message": fields.pop("message", "ok"), **fields}


def profile_data(**extra: Any) -> dict[str, Any]:
    return {"userid": USER, "nickname": "小顾小小家", "fans": 8456, **extra}


def raising(exc_type: type[httpx.RequestError], text: str) -> Handler:
    """A handler whose transport error message embeds the URL, token included."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type(f"{text} while calling {request.url}", request=request)

    return handler


# --- success -------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", GOLDEN_SAMPLES, ids=lambda p: p.stem)
async def test_golden_sample_becomes_a_profile_whose_data_equals_the_samples(sample: Path) -> None:
    raw = sample.read_bytes()
    expected = json.loads(raw)["data"]
    profile, outcome = await fetch_ok(reply(raw), user_id=expected["userid"])
    assert profile.user_id == expected["userid"]
    assert orjson.loads(profile.data_json) == expected
    assert profile.data_json == orjson.dumps(expected)
    assert profile.request_id is None
    assert profile.fetched_at.tzinfo is dt.UTC
    assert abs((dt.datetime.now(dt.UTC) - profile.fetched_at).total_seconds()) < 5
    assert len(outcome.requests) == 1
    assert outcome.limiter.acquired == 1
    assert outcome.limiter.successes == 1


async def test_an_answer_whose_userid_differs_only_in_case_is_the_profile_asked() -> None:
    profile, _ = await fetch_ok(reply(envelope(0, data=profile_data(userid=USER.upper()))))
    assert profile.user_id == USER


async def test_an_answer_with_another_users_profile_fails_once_and_keeps_the_body() -> None:
    other = "0123456789abcdef01234567"
    data = profile_data(userid=other)
    error, outcome = await fetch_error(
        reply(envelope(0, data=data, requestId="req-7")), WrongUserError
    )
    assert str(error) == (
        "the answer is the profile of another user (0123456789abcdef01234567), not of the id "
        "asked: not written as its row, kept in the checkpoint"
    )
    assert (error.code, error.returned_id, error.request_id) == (0, other, "req-7")
    assert orjson.loads(error.body) == data
    assert isinstance(error, PermanentError)  # never retried: it was paid for
    assert len(outcome.requests) == 1


async def test_request_id_is_kept_and_a_non_string_one_is_dropped() -> None:
    profile, _ = await fetch_ok(reply(envelope(0, data=profile_data(), requestId="req-42a")))
    assert profile.request_id == "req-42a"
    profile, _ = await fetch_ok(reply(envelope(0, data=profile_data(), requestId=42)))
    assert profile.request_id is None


async def test_token_and_user_id_travel_as_query_params_of_one_get() -> None:
    _, outcome = await fetch_ok(reply(envelope(0, data=profile_data())))
    (request,) = outcome.requests
    assert request.method == "GET"
    assert request.url.host == "api.justoneapi.test"
    assert request.url.path == "/api/xiaohongshu/get-user/v4"
    assert dict(request.url.params) == {"token": TOKEN, "userId": USER}
    assert request.headers["user-agent"] == USER_AGENT
    assert USER_AGENT.startswith("xhs-profiles/")


@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        "5A901362E8AC2B36C99BCE33",
        "5a901362e8ac2b36c99bce3",
        "5a901362e8ac2b36c99bce33 ",
        "5a901362e8ac2b36c99bce33&token=x",
        "../5a901362e8ac2b36c99bce33",
        "5a901362e8ac2b36c99bce3g",
    ],
)
async def test_an_invalid_id_is_never_sent_and_fails_with_400(bad_id: str) -> None:
    def must_not_be_called(_request: httpx.Request) -> httpx.Response:
        pytest.fail("an invalid id reached the transport")

    exc, outcome = await fetch_error(must_not_be_called, PermanentError, user_id=bad_id)
    assert exc.code == 400
    assert outcome.requests == []
    assert outcome.limiter.acquired == 0


async def test_only_calls_started_reach_the_transport_not_ids_refused() -> None:
    limiter = SpyLimiter()
    sent: list[httpx.Request] = []
    answer = reply(envelope(0, data=profile_data()))

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return answer(request)

    transport = httpx.MockTransport(handler)
    async with transport:
        client = ProfileClient(
            transport, endpoint_url=f"{BASE}/x/v4", token=Secret(TOKEN), limiter=limiter
        )
        await client.fetch(USER)
        with pytest.raises(PermanentError):
            await client.fetch("nope")
        await client.fetch(USER)
    assert len(sent) == 2
    assert limiter.acquired == 2
    assert repr(client) == f"ProfileClient(endpoint_url='{BASE}/x/v4')"
    assert TOKEN not in repr(client)


# --- business codes --------------------------------------------------------------------------


@pytest.mark.parametrize("as_text", [False, True], ids=["int", "string"])
@pytest.mark.parametrize(
    ("code", "expected", "needle"),
    [
        (301, TransientError, "collection failed (code 301): busy"),
        (500, TransientError, "internal server error (code 500): busy"),
        (503, TransientError, "service unavailable (code 503): busy"),
        (100, AccountError, "token invalid or inactive (code 100): check JUSTONEAPI_TOKEN"),
        (303, AccountError, "daily quota exceeded (code 303): rerun after the quota resets"),
        (600, AccountError, "permission denied (code 600): this token may not call get-user/v4"),
        (601, AccountError, "insufficient balance (code 601): top up the account, then rerun"),
        (400, PermanentError, "busy"),
        (404, PermanentError, "no such user"),
        (101, PermanentError, "unexpected business code 101: busy"),
        (202, PermanentError, "unexpected business code 202: busy"),
        (602, PermanentError, "unexpected business code 602: busy"),
        (-7, PermanentError, "unexpected business code -7: busy"),
    ],
)
async def test_each_business_code_maps_to_its_error(
    code: int, expected: type[FetchError], needle: str, as_text: bool
) -> None:
    payload = envelope(str(code) if as_text else code, message="busy", data=None)
    exc, outcome = await fetch_error(reply(payload), expected)
    assert exc.code == code
    assert str(exc).startswith(needle)
    # The API answered without rate limiting: the limiter hears the rate was fine.
    assert outcome.limiter.successes == 1
    assert outcome.limiter.limited == []


async def test_code_400_without_a_message_says_invalid_parameters() -> None:
    exc, _ = await fetch_error(reply({"code": 400}), PermanentError)
    assert (exc.code, str(exc)) == (400, "invalid parameters")


async def test_account_error_for_v3_names_v3() -> None:
    exc, _ = await fetch_error(reply(envelope(600)), AccountError, version="v3")
    assert "get-user/v3" in str(exc)


@pytest.mark.parametrize("code", [0, "0", " 0 "])
async def test_code_zero_as_int_or_numeric_string_is_success(code: Any) -> None:
    profile, _ = await fetch_ok(reply(envelope(code, data=profile_data())))
    assert orjson.loads(profile.data_json)["userid"] == USER


@pytest.mark.parametrize(
    "body",
    [
        {"message": "ok", "data": profile_data()},
        {"code": None, "data": profile_data()},
        {"code": "abc"},
        {"code": "0x0"},
        {"code": True},
        {"code": 0.0},
        {"code": [0]},
        [{"code": 0}],
        "code 0",
        12,
    ],
    ids=["missing", "null", "text", "hex", "bool", "float", "list", "array", "string", "number"],
)
async def test_json_without_a_usable_code_is_transient(body: Any) -> None:
    exc, outcome = await fetch_error(reply(body), TransientError)
    assert (exc.code, str(exc)) == (-1, "response has no business code")
    assert outcome.limiter.successes == 0


# --- code 0 without a profile ---------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [None, {}, [], "", {"userid": ""}, {"userid": None, "nickname": "x"}, {"nickname": "x"}],
    ids=["null", "empty", "list", "string", "blank-userid", "null-userid", "no-userid"],
)
async def test_code_zero_without_userid_is_unavailable(data: Any) -> None:
    exc, _ = await fetch_error(reply(envelope(0, data=data)), PermanentError)
    assert exc.code == 0
    assert str(exc) == (
        "no profile in the answer (data empty: the account may be deleted, banned or private)"
    )


async def test_code_zero_without_data_key_is_unavailable() -> None:
    exc, _ = await fetch_error(reply({"code": 0, "message": "ok"}), PermanentError)
    assert exc.code == 0


async def test_result_success_false_is_unavailable_with_the_results_message() -> None:
    data = profile_data(result={"success": False, "message": "用户不存在\nor banned"})
    exc, _ = await fetch_error(reply(envelope(0, data=data)), PermanentError)
    assert exc.code == 0
    assert str(exc) == "no profile in the answer: 用户不存在 or banned"


# --- 302 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("handler", "told"),
    [
        (reply(envelope(0, data=profile_data())), (1, 0, 0, 0)),
        (reply(envelope(500, data=None)), (1, 1, 0, 0)),  # an answer, and a fault
        (reply(envelope(404, data=None)), (1, 0, 0, 0)),
        (reply(envelope(302, data=None)), (0, 0, 0, 1)),
        (reply(b"<html>bad gateway</html>", status=502), (0, 0, 1, 0)),  # no usable answer
        (reply(envelope(None)), (0, 0, 1, 0)),  # JSON without a business code
        (raising(httpx.ConnectError, "refused"), (0, 0, 1, 0)),
    ],
)
async def test_every_call_tells_the_limiter_exactly_once_so_its_window_slot_is_freed(
    handler: Handler, told: tuple[int, int, int, int]
) -> None:
    _, outcome = await run_fetch(handler)
    limiter = outcome.limiter
    assert (limiter.successes, limiter.faults, limiter.failed, len(limiter.limited)) == told
    assert limiter.acquired == 1 and limiter.in_flight == 0


async def test_302_tells_the_limiter_and_raises_rate_limited_without_retry_after() -> None:
    exc, outcome = await fetch_error(reply(envelope(302, message="slow down")), RateLimitedError)
    assert exc.code == 302
    assert exc.retry_after is None
    assert str(exc) == "rate limited (code 302): slow down"
    ((retry_after, sent_at),) = outcome.limiter.limited
    assert retry_after is None
    assert sent_at is not None
    assert outcome.limiter.successes == 0
    assert outcome.limiter.rate is not None  # the first 302 ended "uncapped"


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("2.5", 2.5), ("-3", 0.0), ("100000", 300.0), ("soon", None), ("nan", None)],
)
async def test_302_passes_retry_after_seconds_to_the_limiter(
    header: str, expected: float | None
) -> None:
    handler = reply(envelope("302"), status=429, headers={"Retry-After": header})
    exc, outcome = await fetch_error(handler, RateLimitedError)
    assert exc.retry_after == expected
    assert outcome.limiter.limited[0][0] == expected


async def test_302_retry_after_as_http_date_becomes_seconds_from_now() -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    header = email.utils.format_datetime(when, usegmt=True)
    exc, _ = await fetch_error(
        reply(envelope(302), headers={"Retry-After": header}), RateLimitedError
    )
    assert exc.retry_after is not None
    assert 25 <= exc.retry_after <= 30


# --- HTTP status with a JSON body ------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 500, 503])
async def test_the_body_code_decides_whatever_the_http_status(status: int) -> None:
    profile, _ = await fetch_ok(reply(envelope(0, data=profile_data()), status=status))
    assert profile.user_id == USER
    exc, _ = await fetch_error(reply(envelope(500), status=status), TransientError)
    assert exc.code == 500


async def test_http_404_with_a_json_404_code_is_no_such_user_not_a_gone_endpoint() -> None:
    exc, _ = await fetch_error(reply(envelope(404), status=404), PermanentError)
    assert (exc.code, str(exc)) == (404, "no such user")


# --- bodies that are not JSON ---------------------------------------------------------------

HTML = b"<html><body><h1>502 Bad Gateway</h1></body></html>"


@pytest.mark.parametrize("status", [200, 429, 500, 502, 503, 504])
async def test_non_json_body_with_retryable_status_is_transient(status: int) -> None:
    exc, _ = await fetch_error(reply(HTML, status=status), TransientError)
    assert (exc.code, str(exc)) == (-1, f"HTTP {status} with a non-JSON body")


@pytest.mark.parametrize("status", [201, 400, 401, 403, 418])
async def test_non_json_body_with_other_status_is_permanent(status: int) -> None:
    exc, _ = await fetch_error(reply(HTML, status=status), PermanentError)
    assert (exc.code, str(exc)) == (-1, f"HTTP {status} with a non-JSON body")


async def test_a_redirect_is_not_followed_and_points_at_base_url() -> None:
    handler = reply(b"", status=301, headers={"Location": "https://elsewhere.test/"})
    exc, outcome = await fetch_error(handler, PermanentError)
    assert len(outcome.requests) == 1
    assert "check --base-url" in str(exc)


async def test_html_404_means_the_endpoint_is_gone_and_suggests_v3() -> None:
    exc, _ = await fetch_error(reply(b"<h1>Not Found</h1>", status=404), EndpointGoneError)
    assert str(exc) == (
        "the get-user/v4 endpoint answered HTTP 404: it may have been removed; try --api-version v3"
    )


async def test_html_404_on_v3_suggests_v4() -> None:
    exc, _ = await fetch_error(reply(b"", status=404), EndpointGoneError, version="v3")
    assert str(exc).endswith("try --api-version v4")


async def test_json_404_without_business_code_also_means_the_endpoint_is_gone() -> None:
    await fetch_error(reply({"detail": "Not Found"}, status=404), EndpointGoneError)


@pytest.mark.parametrize(
    "body",
    [b"", b'{"code": 0, "data": {"userid": "5a90', b"\xff\xfe{}", b"{'code': 0}"],
    ids=["empty", "truncated", "binary", "python-repr"],
)
async def test_invalid_json_with_status_200_is_transient(body: bytes) -> None:
    exc, _ = await fetch_error(reply(body), TransientError)
    assert str(exc) == "HTTP 200 with a non-JSON body"


async def test_json_nested_beyond_any_parser_is_a_permanent_failure_not_a_crash() -> None:
    """The same answer would come back on a retry: it is recorded once, not paid for again."""
    deep = b'{"code":0,"data":{"userid":"' + USER.encode() + b'","x":'
    deep += b"[" * 100_000 + b"]" * 100_000 + b"}}"
    exc, _ = await fetch_error(reply(deep), PermanentError)
    assert (str(exc), exc.code) == ("the answer is JSON nested too deep to parse", -1)


# --- numbers and text that orjson cannot keep -------------------------------------------------


async def test_nan_and_infinity_become_null() -> None:
    body = b'{"code":0,"data":{"userid":"' + USER.encode() + b'","a":NaN,"b":-Infinity}}'
    profile, _ = await fetch_ok(reply(body))
    assert json.loads(profile.data_json) == {"userid": USER, "a": None, "b": None}


async def test_a_profile_no_serializer_can_write_fails_permanently(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def too_deep(*_args: Any, **_kwargs: Any) -> str:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(json, "dumps", too_deep)
    body = b'{"code":0,"data":{"userid":"' + USER.encode() + b'","a":NaN}}'  # stdlib path
    exc, _ = await fetch_error(reply(body), PermanentError)
    assert (exc.code, str(exc)) == (-1, "the profile is nested too deep to store")


# --- transport faults ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc_type", "phase"),
    [
        (httpx.ReadTimeout, "read"),
        (httpx.ConnectTimeout, "connect"),
        (httpx.WriteTimeout, "write"),
        (httpx.PoolTimeout, "pool"),
    ],
)
async def test_a_timeout_is_transient_and_names_its_phase(
    exc_type: type[httpx.TimeoutException], phase: str
) -> None:
    exc, outcome = await fetch_error(raising(exc_type, "timed out"), TransientError)
    assert (exc.code, str(exc)) == (-1, f"timed out after 5s ({phase})")
    assert len(outcome.requests) == 1
    assert outcome.limiter.successes == 0


@pytest.mark.parametrize(
    ("exc_type", "start"),
    [
        (httpx.ConnectError, "could not connect to the API: [Errno 111] Connection refused"),
        (httpx.ReadError, "connection broken while reading the answer"),
        (httpx.RemoteProtocolError, "connection closed mid-answer"),
        (httpx.ProxyError, "proxy error"),
        (httpx.DecodingError, "could not decode the compressed body"),
    ],
)
async def test_a_transport_fault_is_transient_without_the_url(
    exc_type: type[httpx.RequestError], start: str
) -> None:
    exc, _ = await fetch_error(raising(exc_type, "[Errno 111] Connection refused"), TransientError)
    assert exc.code == -1
    assert str(exc).startswith(start)
    assert BASE not in str(exc)
    assert "<url>" in str(exc)
    # Replaced, not chained: the httpx error (and its request) is unreachable from ours.
    assert exc.__cause__ is None
    assert exc.__context__ is None


async def _stream_then_fail(exc: Exception) -> AsyncIterator[bytes]:
    yield b'{"code":0,"data":{"userid":"'
    raise exc


async def test_a_body_cut_off_mid_stream_is_transient() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        failure = httpx.RemoteProtocolError(
            f"peer closed connection without sending complete message body: "
            f"incomplete chunked read ({request.url})"
        )
        return httpx.Response(200, content=_stream_then_fail(failure))

    exc, _ = await fetch_error(handler, TransientError)
    assert str(exc).startswith("connection closed mid-answer (truncated or malformed)")


async def test_a_read_timeout_mid_body_is_transient() -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=_stream_then_fail(httpx.ReadTimeout("slow")))

    exc, _ = await fetch_error(handler, TransientError)
    assert str(exc) == "timed out after 5s (read)"


@pytest.mark.slow
async def test_a_body_that_never_ends_is_cut_by_the_whole_call_deadline() -> None:
    async def drip() -> AsyncIterator[bytes]:
        while True:
            await asyncio.sleep(0.02)
            yield b" "

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=drip())

    exc, _ = await fetch_error(handler, TransientError, total_timeout=0.2)
    assert (exc.code, str(exc)) == (-1, "no complete answer within 0.2s")


async def test_the_default_whole_call_deadline_is_twice_the_timeout() -> None:
    async with make_transport(concurrency=1) as transport:
        client = ProfileClient(
            transport,
            endpoint_url=f"{BASE}/v4",
            token=Secret(TOKEN),
            limiter=RateController(None),
            timeout=60.0,
        )
        assert client._total_timeout == 120.0


# --- oversized bodies ------------------------------------------------------------------------

CHUNK = 64 * 1024
SIX_MB = 6 * 1024 * 1024


async def test_a_6mb_body_is_refused_without_reading_it_all() -> None:
    sent = 0

    async def six_megabytes() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(SIX_MB // CHUNK):
            sent += 1
            yield b" " * CHUNK

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=six_megabytes())

    exc, _ = await fetch_error(handler, PermanentError)
    assert (exc.code, str(exc)) == (-1, "response body larger than 5 MB")
    assert sent == 5 * 1024 * 1024 // CHUNK + 1  # stopped at the first chunk past the cap


async def test_a_declared_oversized_body_is_refused_before_reading() -> None:
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        sent += 1
        yield b"{}"

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body(), headers={"Content-Length": str(SIX_MB)})

    exc, _ = await fetch_error(handler, PermanentError)
    assert str(exc) == "response body larger than 5 MB"
    assert sent == 0


async def test_the_cap_applies_to_decoded_bytes_of_a_gzip_bomb() -> None:
    bomb = gzip.compress(b" " * SIX_MB)
    assert len(bomb) < 100_000
    handler = reply(bomb, headers={"Content-Encoding": "gzip"})
    exc, _ = await fetch_error(handler, PermanentError)
    assert str(exc) == "response body larger than 5 MB"


async def test_the_cap_follows_max_body_bytes() -> None:
    exc, _ = await fetch_error(
        reply(envelope(0, data=profile_data())), PermanentError, max_body_bytes=10
    )
    assert str(exc) == "response body larger than 10 bytes"


# --- the API's own message -------------------------------------------------------------------


async def test_the_apis_message_is_one_line_at_most_200_chars_and_masks_the_token() -> None:
    message = f"bad\nrequest  token={TOKEN}&userId=1 echo {TOKEN} " + "x" * 500
    exc, _ = await fetch_error(reply(envelope(202, message=message)), PermanentError)
    text = str(exc)
    echoed = text.removeprefix("unexpected business code 202: ")
    assert "\n" not in text
    assert len(echoed) == 200
    assert echoed.startswith("bad request token=***&userId=1 echo *** xxx")
    assert echoed.endswith("…")


# --- the token never leaks -------------------------------------------------------------------


async def test_the_debug_log_line_of_a_call_never_holds_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    await fetch_ok(reply(envelope(0, data=profile_data())))
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.client"]
    assert lines == [f"GET {BASE}/api/xiaohongshu/get-user/v4?userId={USER}: HTTP 200"]
    assert TOKEN not in caplog.text


# --- helpers: the request the client builds ----------------------------------------------------


async def test_requests_carry_the_timeouts_and_headers_and_redirects_are_not_followed() -> None:
    def redirect(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "http://elsewhere.invalid/"})

    exc, outcome = await run_fetch(redirect, timeout=12.5)
    assert isinstance(exc, PermanentError) and "check --base-url" in str(exc)
    [request] = outcome.requests
    assert request.extensions["timeout"] == dict.fromkeys(
        ("connect", "read", "write", "pool"), 12.5
    )
    assert request.headers["user-agent"] == USER_AGENT
    assert request.headers["accept-encoding"] == "gzip, deflate"


# --- the call trace (--debug call events) ----------------------------------------------------


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


@pytest.mark.parametrize(
    ("handler", "status"),
    [
        (reply({"code": 500, "message": "busy", "data": None}, status=503), 503),
        (reply(b"<html>bad gateway</html>", status=502), 502),
        (refuse, None),  # no answer: no status, but still a time
    ],
)
async def test_a_trace_gets_the_http_status_and_the_exchange_time(
    handler: Handler, status: int | None
) -> None:
    trace = CallTrace()
    async with httpx.MockTransport(handler) as transport:
        client = ProfileClient(
            transport,
            endpoint_url=f"{BASE}/api/xiaohongshu/get-user/v4",
            token=Secret(TOKEN),
            limiter=RateController(None),
        )
        with pytest.raises(TransientError):
            await client.fetch(USER, trace=trace)
    assert trace.http_status == status
    assert trace.latency_s is not None and 0 <= trace.latency_s < 5
