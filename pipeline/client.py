"""One call to Just One API's get-user endpoint for one id, classified into a profile or an error.

``ProfileClient.fetch`` makes exactly one HTTP call (after taking its turn from the shared
``RateController``) and never retries: retry scheduling and back-off live in the fetch loop
(``pipeline.fetcher``), whose not-before heap keeps a waiting id from holding a concurrency
slot.  That is why tenacity and stamina (which retry in-line, holding the slot) are not used.

How an answer is classified (first matching row wins):

=====================================================  ========================================
what came back                                         result
=====================================================  ========================================
id not 24 lowercase hex (``config.ID_PATTERN``)        PermanentError(400), nothing is sent
any ``httpx.TimeoutException``                         TransientError(-1) "timed out after Ns
                                                       (read|connect|write|pool)"
no complete answer within ``total_timeout``            TransientError(-1) (a drip-fed body)
other transport fault (connect error, reset,           TransientError(-1), short description,
truncated body or chunked read, bad encoding)          no URL
body over ``max_body_bytes`` (decoded)                 PermanentError(-1) "response body larger
                                                       than 5 MB"; reading stops there
JSON nested too deep for any parser                    PermanentError(-1): a retry would get
                                                       the same answer
body not JSON (HTML page, truncated, invalid) and
HTTP 404                                               EndpointGoneError: try the other
                                                       ``--api-version``
... and HTTP 200, 429 or >= 500                        TransientError(-1) "HTTP 502 with a
                                                       non-JSON body"
... any other HTTP status (redirects included)         PermanentError(-1)
JSON without a usable ``code`` and HTTP 404            EndpointGoneError
JSON that is not an object, or ``code`` missing or     TransientError(-1) "response has no
not an Int64 / numeric string                          business code"
code 0, ``data.result.success`` is false               PermanentError(0) with result.message
code 0, ``data.userid`` is another id (case aside)     WrongUserError(0) carrying the body
code 0, ``data`` has a non-empty string ``userid``     FetchedProfile
code 0, anything else (``data`` null, empty, ...)      PermanentError(0) "no profile ..."
code 302                                               limiter.on_rate_limited(Retry-After
                                                       seconds, capped at 300), then
                                                       RateLimitedError(retry_after)
code 301, 500, 503                                     TransientError(code)
code 100, 303, 600, 601                                AccountError(code) saying what to do
code 400                                               PermanentError(400), the API's message
code 404                                               PermanentError(404) "no such user"
any other code                                         PermanentError(code) "unexpected
                                                       business code N: <message>"
=====================================================  ========================================

The HTTP status never decides when the body is JSON: the vendor sends 4xx/5xx with the same
envelope.  Every JSON answer other than 302 tells the limiter the rate was accepted
(``on_success``), whatever its code; a call with no usable answer (a transport fault, a
timeout, a body that is not JSON or has no business code) tells it ``on_failed``.  Each call
tells it exactly one of the three, with the send time ``acquire`` returned, so the limiter frees
the call's slot in its window, tells stale 302s from fresh ones and measures the round trip.

Rules:
- The token travels only in the query (URL-encoded once, when the client is built).  It never
  goes into a message: httpx exceptions (whose text and ``request`` carry the URL) are
  replaced, not chained (raised outside the ``except`` block, so neither ``__cause__`` nor
  ``__context__`` holds them); the API's own ``message`` is echoed on one line, at most 200
  characters, masked by ``pipeline.redaction.mask``.
- Bodies are parsed by ``pipeline.jsonparse`` (orjson, else the stdlib parser, keeping every
  digit of big integers), with NaN/Infinity as null.
- ``FetchedProfile.data_json`` is the ``data`` object re-serialized compactly as UTF-8 JSON
  (``jsonparse.dumps``): what the API sent, digit for digit.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Final
from urllib.parse import urlencode

import httpx

from pipeline.config import ID_PATTERN, Secret
from pipeline.errors import (
    CODE_INVALID_INPUT,
    CODE_NO_RESPONSE,
    CODE_UNAVAILABLE,
    AccountError,
    EndpointGoneError,
    FetchError,
    PermanentError,
    RateLimitedError,
    TransientError,
    WrongUserError,
)
from pipeline.jsonparse import dumps, loads
from pipeline.ratelimit import RateController
from pipeline.records import CallTrace, FetchedProfile
from pipeline.redaction import mask
from pipeline.timestamps import utcnow
from pipeline.transport import (
    REQUEST_HEADERS,
    is_cut_off_body,
    is_disguised_disconnect,
    read_capped,
    retry_after_seconds,
)

MAX_RETRY_AFTER: Final = 300.0  # seconds; a longer Retry-After would stall every worker
MAX_API_MESSAGE: Final = 200
_URL_IN_TEXT: Final = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_NUMERIC_CODE: Final = re.compile(r"-?[0-9]{1,9}")
_TRANSIENT_CODES: Final = {
    301: "collection failed",
    500: "internal server error",
    503: "service unavailable",
}
_ACCOUNT_CODES: Final = {
    100: "token invalid or inactive (code 100): check JUSTONEAPI_TOKEN",
    303: "daily quota exceeded (code 303): rerun after the quota resets; progress is kept",
    600: "permission denied (code 600): this token may not call get-user/{version}",
    601: "insufficient balance (code 601): top up the account, then rerun; progress is kept",
}
log = logging.getLogger(__name__)


class ProfileClient:
    """Fetches one profile per call."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        endpoint_url: str,
        token: Secret,
        limiter: RateController,
        timeout: float = 60.0,
        max_body_bytes: int = 5 * 1024 * 1024,
        total_timeout: float | None = None,
    ) -> None:
        """``timeout`` bounds connect, each read, each write and the wait for a pooled
        connection; ``total_timeout`` caps a whole call (default: twice ``timeout``), since a
        body dripped a byte at a time would never hit a per-read timeout.  Redirects are not
        followed: the API never redirects, so a redirect means a wrong ``--base-url``.
        """
        self._transport = transport
        self._timeout = timeout
        self._extensions = {
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        }
        self._url = endpoint_url
        # The query is built as text once: httpx parses and validates a URL character by
        # character, and parsing it once per call instead of twice (URL, then merged params)
        # is a fifth of the client's CPU.  ``user_id`` is 24 hex characters, safe as it is.
        self._url_prefix = f"{endpoint_url}?{urlencode({'token': token.reveal()})}&userId="
        self._token = token
        self._limiter = limiter
        self._max_body_bytes = max_body_bytes
        self._total_timeout = total_timeout if total_timeout is not None else 2 * timeout
        self._version = endpoint_url.rstrip("/").rsplit("/", 1)[-1]

    def __repr__(self) -> str:
        return f"ProfileClient(endpoint_url={self._url!r})"

    async def fetch(self, user_id: str, *, trace: CallTrace | None = None) -> FetchedProfile:
        """One call for ``user_id``: a profile, or a ``FetchError``/``StopRun`` subclass.

        ``trace``, when given, receives the HTTP status and the exchange's duration.
        """
        if not ID_PATTERN.fullmatch(user_id):
            raise PermanentError(
                "not a valid user id (24 lowercase hex characters): never sent",
                code=CODE_INVALID_INPUT,
            )
        sent_at = await self._limiter.acquire()
        try:
            if trace is None:
                status, retry_after, body = await self._exchange(user_id)
            else:
                started = time.perf_counter()
                try:
                    status, retry_after, body = await self._exchange(user_id)
                finally:
                    trace.latency_s = time.perf_counter() - started
                trace.http_status = status
            envelope, via_stdlib = self._parse(body, status)
        except BaseException:
            self._limiter.on_failed(sent_at=sent_at)  # no usable answer: the slot is free
            raise
        code = _business_code(envelope.get("code")) if isinstance(envelope, dict) else None
        if code is None or not isinstance(envelope, dict):
            self._limiter.on_failed(sent_at=sent_at)
            if status == 404:
                raise self._endpoint_gone()
            raise TransientError("response has no business code", code=CODE_NO_RESPONSE)
        message = self._api_message(envelope.get("message"))
        if code == 302:
            seconds = retry_after_seconds(retry_after, cap=MAX_RETRY_AFTER)
            self._limiter.on_rate_limited(seconds, sent_at=sent_at)
            raise RateLimitedError(
                _with(f"rate limited (code {code})", message), retry_after=seconds
            )
        self._limiter.on_success(sent_at=sent_at, fault=code in _TRANSIENT_CODES)
        if code == 0:
            return self._profile(user_id, envelope, via_stdlib)
        raise self._business_error(code, message)

    def _parse(self, body: bytes, status: int) -> tuple[object, bool]:
        failure: FetchError | EndpointGoneError
        try:
            # NaN and Infinity become null: raw_json must be JSON that any reader takes.
            return loads(body, mark_big_ints=True, parse_constant=lambda _name: None)
        except RecursionError:
            # The same answer would come back: record it rather than pay for it again.
            failure = PermanentError(
                "the answer is JSON nested too deep to parse", code=CODE_NO_RESPONSE
            )
        except ValueError:
            failure = self._non_json_error(status)
        raise failure from None

    async def _exchange(self, user_id: str) -> tuple[int, str | None, bytes]:
        """Send the request; return (HTTP status, Retry-After header, body)."""
        failure: FetchError
        try:
            async with asyncio.timeout(self._total_timeout):
                request = httpx.Request(
                    "GET",
                    self._url_prefix + user_id,
                    headers=REQUEST_HEADERS,
                    extensions=self._extensions,
                )
                response = await self._transport.handle_async_request(request)
                try:
                    body = await read_capped(response, self._max_body_bytes)
                finally:
                    await response.aclose()
                if body is None:
                    raise PermanentError(
                        f"response body larger than {_size(self._max_body_bytes)}",
                        code=CODE_NO_RESPONSE,
                    )
                log.debug("GET %s?userId=%s: HTTP %d", self._url, user_id, response.status_code)
                return response.status_code, response.headers.get("retry-after"), body
        except httpx.TimeoutException as exc:
            if is_disguised_disconnect(exc):
                failure = TransientError(
                    "connection closed by the API before a complete answer",
                    code=CODE_NO_RESPONSE,
                )
            else:
                failure = TransientError(self._timeout_message(exc), code=CODE_NO_RESPONSE)
        except TimeoutError:
            failure = TransientError(
                f"no complete answer within {self._total_timeout:g}s", code=CODE_NO_RESPONSE
            )
        except httpx.RequestError as exc:
            failure = TransientError(self._transport_message(exc), code=CODE_NO_RESPONSE)
        # Raised here, outside the except blocks, so the httpx error (whose message and
        # request hold the URL with the token) is neither __cause__ nor __context__.
        raise failure from None

    def _profile(
        self, user_id: str, envelope: dict[str, object], via_stdlib: bool
    ) -> FetchedProfile:
        data = envelope.get("data")
        if isinstance(data, dict):
            result = data.get("result")
            if isinstance(result, dict) and result.get("success") is False:
                reason = self._api_message(result.get("message")) or "result.success is false"
                raise PermanentError(f"no profile in the answer: {reason}", code=CODE_UNAVAILABLE)
            userid = data.get("userid")
            if isinstance(userid, str) and userid.strip():
                serialized = dumps(data, via_stdlib=via_stdlib)
                if serialized is None:
                    raise PermanentError(
                        "the profile is nested too deep to store", code=CODE_NO_RESPONSE
                    )
                request_id = envelope.get("requestId")
                request = request_id if isinstance(request_id, str) else None
                returned = userid.strip()
                if returned.lower() != user_id:
                    shown = self._api_message(returned)[:40]
                    raise WrongUserError(
                        f"the answer is the profile of another user ({shown}), not of the id "
                        "asked: not written as its row, kept in the checkpoint",
                        returned_id=returned,
                        body=serialized,
                        request_id=request,
                    )
                return FetchedProfile(user_id, serialized, request, utcnow())
        raise PermanentError(
            "no profile in the answer (data empty: the account may be deleted, banned or private)",
            code=CODE_UNAVAILABLE,
        )

    def _business_error(self, code: int, message: str) -> FetchError | AccountError:
        if code in _TRANSIENT_CODES:
            return TransientError(
                _with(f"{_TRANSIENT_CODES[code]} (code {code})", message), code=code
            )
        if code in _ACCOUNT_CODES:
            return AccountError(code, _ACCOUNT_CODES[code].format(version=self._version))
        if code == 400:
            return PermanentError(message or "invalid parameters", code=400)
        if code == 404:
            return PermanentError("no such user", code=404)
        return PermanentError(_with(f"unexpected business code {code}", message), code=code)

    def _non_json_error(self, status: int) -> FetchError | EndpointGoneError:
        if status == 404:
            return self._endpoint_gone()
        text = f"HTTP {status} with a non-JSON body"
        if status in (200, 429) or status >= 500:
            return TransientError(text, code=CODE_NO_RESPONSE)
        if 300 <= status < 400:
            text += " (a redirect, which is not followed: check --base-url)"
        return PermanentError(text, code=CODE_NO_RESPONSE)

    def _endpoint_gone(self) -> EndpointGoneError:
        alternative = {"v4": "v3", "v3": "v4"}.get(self._version)
        hint = f"try --api-version {alternative}" if alternative else "check --base-url"
        return EndpointGoneError(
            f"the get-user/{self._version} endpoint answered HTTP 404: "
            f"it may have been removed; {hint}"
        )

    def _api_message(self, value: object) -> str:
        """The API's own text, safe to echo: one line, at most 200 characters, no token."""
        if not isinstance(value, str):
            return ""
        text = mask(" ".join(value.split()), self._token.reveal())
        if len(text) > MAX_API_MESSAGE:
            text = text[: MAX_API_MESSAGE - 1] + "…"
        return text

    def _timeout_message(self, exc: httpx.TimeoutException) -> str:
        phases: dict[type[httpx.TimeoutException], str] = {
            httpx.ConnectTimeout: "connect",
            httpx.ReadTimeout: "read",
            httpx.WriteTimeout: "write",
            httpx.PoolTimeout: "pool",
        }
        phase = next((p for cls, p in phases.items() if isinstance(exc, cls)), "read")
        return f"timed out after {self._timeout:g}s ({phase})"

    def _transport_message(self, exc: httpx.RequestError) -> str:
        kinds: tuple[tuple[type[httpx.RequestError], str], ...] = (
            (httpx.ConnectError, "could not connect to the API"),
            (httpx.ReadError, "connection broken while reading the answer"),
            (httpx.WriteError, "connection broken while sending the request"),
            (httpx.RemoteProtocolError, "connection closed mid-answer (truncated or malformed)"),
            (httpx.LocalProtocolError, "could not send a valid HTTP request"),
            (httpx.ProxyError, "proxy error"),
            (httpx.DecodingError, "could not decode the compressed body"),
        )
        if is_cut_off_body(exc):
            # aiohttp's text for a cut-off body is long and quotes a status that looks like a code.
            return "connection closed mid-answer (truncated or malformed)"
        what = next((text for cls, text in kinds if isinstance(exc, cls)), "transport error")
        detail = mask(" ".join(str(exc).split()), self._token.reveal())
        detail = _URL_IN_TEXT.sub("<url>", detail)[:120]
        return f"{what}: {detail}" if detail else what


def _business_code(code: object) -> int | None:
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        # The state keeps a code as a SQLite INTEGER, which is an Int64.
        return code if -(2**63) <= code < 2**63 else None
    if isinstance(code, str) and _NUMERIC_CODE.fullmatch(code.strip()):
        return int(code.strip())
    return None


def _with(summary: str, message: str) -> str:
    return f"{summary}: {message}" if message else summary


def _size(limit: int) -> str:
    mib = 1024 * 1024
    return f"{limit // mib} MB" if limit % mib == 0 else f"{limit} bytes"
