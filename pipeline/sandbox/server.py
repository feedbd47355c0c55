"""The aiohttp server: checks, modes, the ledger, and the thread-hosted ``Sandbox``."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any, Final, TypeVar
from urllib.parse import unquote

import orjson
from aiohttp import web

from pipeline.errors import SandboxListenError, SandboxOptionError
from pipeline.sandbox.config import (
    API_PATH,
    MESSAGES,
    VERSIONS,
    Mode,
    SandboxConfig,
    SandboxStats,
    parse_mode,
)
from pipeline.sandbox.drift import EMPTY_DATA, NOT_FOUND, DriftModel, parse_date
from pipeline.sandbox.profiles import (
    NOT_JSON_PAGE,
    display_count,
    draw,
    giant_desc_json,
    html_page,
    profile_json,
)

_T = TypeVar("_T")
_ID = re.compile(r"[0-9a-fA-F]{24}")
_PROFILE_URL_ID = re.compile(r"/user/profile/([0-9a-fA-F]{24})")
_NESTING: Final = 5000
_BIG_DIGITS: Final = 5000
_JSON = {"Content-Type": "application/json"}
_HTML = {"Content-Type": "text/html; charset=utf-8"}

# --- the server --------------------------------------------------------------------------------

_GONE = parse_mode("gone")
_REJECTIONS: Final = {code: parse_mode(f"code:{code}") for code in (100, 302, 303, 400, 500)}
_OK = parse_mode("ok")
_ABSENT: Final = {name: parse_mode(name) for name in (EMPTY_DATA, NOT_FOUND)}
_NO_DRIFT_PLAN: Final = "this sandbox has no drift plan (--drift): every date answers the same"


class _Bucket:
    """A token bucket: ``limit`` tokens a second (None: no limit), a second's worth of burst,
    full at the start."""

    __slots__ = ("burst", "limit", "refilled_at", "tokens")

    def __init__(self, limit: float | None, now: float) -> None:
        self.limit = limit
        self.burst = max(1.0, limit or 0.0)
        self.tokens = self.burst
        self.refilled_at = now

    def set_limit(self, limit: float | None) -> None:
        if limit != self.limit:
            self.limit, self.burst = limit, max(1.0, limit or 0.0)

    def take(self, now: float) -> bool:
        limit = self.limit
        if limit is None:
            return True
        self.tokens = min(self.burst, self.tokens + (now - self.refilled_at) * limit)
        self.refilled_at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class _ServerState:
    """The ledger, scripts and token bucket of one server; touched only by its event loop."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.scripts: dict[str, tuple[int, tuple[Mode, ...]]] = {
            uid: (0, tuple(map(parse_mode, modes))) for uid, modes in config.scripts.items()
        }
        self.fault_table: list[tuple[float, Mode]] = []
        cumulative = 0.0
        for name, share in config.fault_mix.items():
            cumulative += share
            self.fault_table.append((cumulative, parse_mode(name)))
        self.calls = 0
        self.successes = 0
        self.ledger: dict[str, list[int]] = {}  # id → [calls, successes, calls past the checks]
        self.by_code: dict[int, int] = {}
        self.born = time.monotonic()
        self.valid_tokens = frozenset(config.valid_tokens)
        # One bucket for the server, or one per valid token (``rate_scope="token"``).
        limit = self._limit_at(0.0)
        scopes = config.valid_tokens if config.rate_scope == "token" else ("",)
        self.buckets = {scope: _Bucket(limit, self.born) for scope in scopes}
        self.calls_by_token = dict.fromkeys(config.valid_tokens, 0)
        self.limited_by_token = dict.fromkeys(config.valid_tokens, 0)
        self.in_flight = 0
        self.max_in_flight = 0
        self.arrivals: deque[float] = deque()  # API requests of the last second
        self.max_per_second = 0
        self.latencies: dict[int, int] = {}  # applied latency in ms -> calls
        self.latency_rng = random.Random(config.seed)
        self.slow_delay = max(2 * config.latency[1], 1.0)
        self.retry_after = None if config.retry_after is None else f"{config.retry_after:g}"
        self._prefix = str(uuid.uuid4())[:24].encode()
        self._serial = 0
        self._second = -1
        self._stamp = b""
        self.drift = None if config.drift is None else DriftModel(config.drift, config.seed)
        self._day: int | None = None  # the plan day answered for; None: follow the UTC clock
        if self.drift is not None and config.as_of is not None:
            self._day = self.drift.day(config.as_of)

    def day(self, drift: DriftModel) -> int:
        return self._day if self._day is not None else drift.day_of_clock(time.time())

    def set_date(self, on: date | None) -> None:
        """Answer as of ``on`` from the next request on (None: the UTC date of each request)."""
        if self.drift is None:
            raise SandboxOptionError(_NO_DRIFT_PLAN)
        self._day = None if on is None else self.drift.day(on)

    def date_info(self) -> dict[str, Any]:
        drift = self.drift
        if drift is None:
            return {"drift": False, "date": None}
        day = self.day(drift)
        start, on = drift.plan.start.isoformat(), drift.date_of(day).isoformat()
        return {"drift": True, "date": on, "day": day, "start": start,
                "follows_clock": self._day is None}  # fmt: skip

    def profile(self, user_id: str) -> bytes:
        """The ``data`` bytes ``user_id`` is answered with now (drifted to the date, if any)."""
        drift = self.drift
        if drift is None:
            return profile_json(user_id, self.config.seed)
        return drift.profile_json(user_id, self.day(drift))

    def decide(self, version: str, token: str | None, raw_id: str) -> tuple[str, Mode]:
        """Record the call in the ledger and pick how to answer it."""
        user_id = raw_id
        if version == "v3" and not _ID.fullmatch(raw_id):
            found = _PROFILE_URL_ID.search(unquote(raw_id))
            user_id = found.group(1) if found else raw_id
        entry = self.ledger.get(user_id)
        if entry is None:
            entry = self.ledger[user_id] = [0, 0, 0]
        entry[0] += 1
        self.calls += 1
        now = time.monotonic()
        arrivals = self.arrivals
        arrivals.append(now)
        while arrivals[0] <= now - 1.0:
            arrivals.popleft()
        if len(arrivals) > self.max_per_second:
            self.max_per_second = len(arrivals)
        mode = self._gate(version, token, user_id, now) or self._scheduled(user_id, entry)
        if mode.success:
            entry[1] += 1
            self.successes += 1
        code = mode.ledger_code
        self.by_code[code] = self.by_code.get(code, 0) + 1
        return user_id, mode

    def _gate(self, version: str, token: str | None, user_id: str, now: float) -> Mode | None:
        config = self.config
        if token is not None and token in self.valid_tokens:
            self.calls_by_token[token] += 1
        if version in config.gone_versions or version not in VERSIONS:
            return _GONE
        if token is None or token not in self.valid_tokens:
            return _REJECTIONS[100]
        if config.daily_quota is not None and self.successes >= config.daily_quota:
            return _REJECTIONS[303]
        if not self._take_token(token, now):
            self.limited_by_token[token] += 1
            return _REJECTIONS[302]
        if not _ID.fullmatch(user_id):
            return _REJECTIONS[400]
        return None

    def _take_token(self, token: str, now: float) -> bool:
        """The caller's token bucket (the server's, or its token's): ``limit`` a second (from
        the schedule, if any), a second's burst."""
        bucket = self.buckets[token if self.config.rate_scope == "token" else ""]
        if self.config.rate_schedule:
            bucket.set_limit(self._limit_at(now - self.born))
        return bucket.take(now)

    def _limit_at(self, age: float) -> float | None:
        """Requests/s allowed ``age`` seconds into the server's life (None: no limit)."""
        limit = self.config.rate_limit
        for at, rate in self.config.rate_schedule:
            if age >= at:
                limit = rate
        return limit

    def _scheduled(self, user_id: str, entry: list[int]) -> Mode:
        entry[2] += 1
        script = self.scripts.get(user_id)
        if script is not None:
            start, modes = script
            if 0 <= entry[2] - start - 1 < len(modes):
                return modes[entry[2] - start - 1]
        drift = self.drift
        if drift is not None:  # gone, or not born yet: the account has no profile on this date
            absent = drift.absent(user_id, self.day(drift))
            if absent is not None:
                return _ABSENT[absent]
        seed = self.config.seed
        if self.config.never_succeed and (
            draw(seed, "never", user_id) / 2**64 < self.config.never_succeed
        ):
            return _REJECTIONS[500]
        if entry[2] == 1 and self.fault_table:
            roll = draw(seed, "fault", user_id) / 2**64
            for cumulative, mode in self.fault_table:
                if roll < cumulative:
                    return mode
        return _OK

    def set_script(self, user_id: str, modes: Sequence[str]) -> None:
        """Give ``user_id``'s next calls these modes (replacing any script it had)."""
        parsed = tuple(map(parse_mode, modes))
        entry = self.ledger.get(user_id)
        self.scripts[user_id] = (entry[2] if entry else 0, parsed)

    def latency(self, mode: Mode) -> float:
        """Seconds to answer this call in: drawn, times the queue in capacity mode."""
        if mode.kind == "slow":
            delay = self.slow_delay
        elif self.config.latency[1] > 0:
            delay = self.latency_rng.uniform(*self.config.latency)
        else:
            delay = 0.0
        capacity = self.config.capacity
        if capacity is not None and self.in_flight > capacity:
            delay *= self.in_flight / capacity
        key = round(delay * 1000)
        self.latencies[key] = self.latencies.get(key, 0) + 1
        return delay

    def enter(self) -> None:
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight

    def leave(self) -> None:
        self.in_flight -= 1

    def snapshot(self) -> SandboxStats:
        return SandboxStats(
            calls=self.calls,
            calls_by_id={uid: e[0] for uid, e in self.ledger.items()},
            successes_by_id={uid: e[1] for uid, e in self.ledger.items() if e[1]},
            by_code=dict(self.by_code),
            max_in_flight=self.max_in_flight,
            max_calls_per_second=self.max_per_second,
            latency_median_s=self._latency_quantile(0.5),
            latency_p90_s=self._latency_quantile(0.9),
            in_flight=self.in_flight,
            age_s=round(time.monotonic() - self.born, 3),
            calls_by_token=dict(self.calls_by_token),
            rate_limited_by_token=dict(self.limited_by_token),
        )

    def _latency_quantile(self, share: float) -> float | None:
        total = sum(self.latencies.values())
        if not total:
            return None
        seen = 0
        for key in sorted(self.latencies):
            seen += self.latencies[key]
            if seen >= share * total:
                return key / 1000
        return None  # not reached: the shares add up to the total

    def envelope(self, code: bytes | None, message: str, data: bytes) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)).encode()
        self._serial += 1
        head = b'{"code":' + code + b"," if code is not None else b"{"
        return b"".join((head, b'"message":', orjson.dumps(message), b',"recordTime":"',
                         self._stamp, b'","requestId":"', self._prefix, b"%012x" % self._serial,
                         b'","data":', data, b"}"))  # fmt: skip

    def success_body(self, user_id: str) -> bytes:
        return self.envelope(b"0", "success", self.profile(user_id))


_STATE: Final = web.AppKey("xhs_sandbox_state", _ServerState)


def _json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, headers=_JSON)


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:  # linger 0: the peer gets a RST, not a clean end of stream
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


_FIXED_DATA: Final = {
    "data_null": b"null",
    "empty_data": b"{}",
    "no_result": b'{"result":{"success":false,"code":-1,"message":"user not found"}}',
}


def _json_body(state: _ServerState, mode: Mode, uid: str) -> bytes:
    """The body of every mode that sends a whole JSON document."""
    kind = mode.kind
    if kind == "code":
        return state.envelope(b"%d" % mode.code, MESSAGES.get(mode.code, "error"), b"null")
    if kind in _FIXED_DATA:
        return state.envelope(b"0", "success", _FIXED_DATA[kind])
    if kind == "other_user":  # the next id's profile: a mix-up upstream, paid for all the same
        return state.envelope(b"0", "success", state.profile(_next_id(uid)))
    data = state.profile(uid)
    if kind in ("code_string", "no_code"):
        return state.envelope(b'"0"' if kind == "code_string" else None, "success", data)
    if kind == "deep":
        data = data[:-1] + b',"nested":' + b"[" * _NESTING + b"]" * _NESTING + b"}"
    elif kind in ("wrong_types", "display_counts", "huge", "bigint"):
        data = _rewritten(kind, data)
    return state.envelope(b"0", "success", data)


def _next_id(uid: str) -> str:
    try:
        return f"{(int(uid, 16) + 1) % 16**24:024x}"
    except ValueError:  # v3 also takes profile URLs; any other id will do
        return "0" * 24 if uid != "0" * 24 else "1" * 24


def _rewritten(kind: str, data: bytes) -> bytes:
    """Profile data made hostile; JSON libraries refuse to write what huge and bigint need."""
    profile = orjson.loads(data)
    if kind == "wrong_types":
        profile.update(fans="abc", tags={}, interactions=None, level="7")
    elif kind == "display_counts":
        styles = {"follows": "thousand", "fans": "wan", "interaction": "plus"}
        for entry in profile["interactions"]:
            entry["count"] = display_count(entry["count"], styles[entry["type"]])
    else:
        profile["desc" if kind == "huge" else "fans"] = "\0"
    filler = giant_desc_json() if kind == "huge" else b"1234567890" * (_BIG_DIGITS // 10)
    return orjson.dumps(profile).replace(b'"\\u0000"', filler)


async def _answer(
    state: _ServerState, request: web.Request, mode: Mode, uid: str
) -> web.StreamResponse:
    kind = mode.kind
    if kind == "html":
        return web.Response(body=html_page(mode.status), status=mode.status, headers=_HTML)
    if kind == "not_json":
        return web.Response(body=NOT_JSON_PAGE, headers=_HTML)
    if kind == "reset":
        _abort(request)
        return web.Response()
    if kind not in ("reset_mid", "truncated", "drip"):
        whole = _json_response(_json_body(state, mode, uid), mode.status)
        if mode.code == 302 and state.retry_after is not None:
            whole.headers["Retry-After"] = state.retry_after
        return whole
    body = state.success_body(uid)
    response = web.StreamResponse(headers=_JSON)
    response.content_length = len(body)
    await response.prepare(request)
    transport = request.transport
    if kind == "drip":
        try:
            for i in range(len(body)):
                await asyncio.sleep(1.0)
                if transport is None or transport.is_closing():
                    break
                await response.write(body[i : i + 1])
        except ConnectionError:
            pass  # the client gave up, as it should
    elif kind == "reset_mid":
        await response.write(body[: len(body) // 2])
        _abort(request)
    else:
        await response.write(body[: len(body) * 2 // 3])
        if transport is not None:
            transport.close()  # a clean FIN after a short body
    return response


async def _handle_api(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    query = request.query
    version, token = request.match_info["version"], query.get("token")
    uid, mode = state.decide(version, token, query.get("userId", ""))
    state.enter()
    try:
        delay = state.latency(mode)
        if delay > 0:
            await asyncio.sleep(delay)
        if mode is _OK:  # the hot path
            return web.Response(body=state.success_body(uid), headers=_JSON)
        return await _answer(state, request, mode, uid)
    finally:
        state.leave()


async def _handle_stats(request: web.Request) -> web.Response:
    return _json_response(request.app[_STATE].snapshot().to_json())


async def _handle_script(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    try:
        scripts = orjson.loads(await request.read())
        if not isinstance(scripts, dict) or not all(
            isinstance(modes, list) and all(isinstance(m, str) for m in modes)
            for modes in scripts.values()
        ):
            raise SandboxOptionError('expected a JSON object {"user_id": ["mode", ...]}')
        parsed = {uid: [parse_mode(m).name for m in modes] for uid, modes in scripts.items()}
    except (orjson.JSONDecodeError, SandboxOptionError) as exc:
        return _json_response(orjson.dumps({"ok": False, "error": str(exc)}), 400)
    for uid, modes in parsed.items():
        state.set_script(uid, modes)
    return _json_response(orjson.dumps({"ok": True, "scripted": sorted(parsed)}))


async def _handle_date(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    if request.method == "POST":
        try:
            body = orjson.loads(await request.read())
            if not isinstance(body, dict) or set(body) != {"date"}:
                raise SandboxOptionError('expected a JSON object {"date": "YYYY-MM-DD"}')
            state.set_date(None if body["date"] is None else parse_date(body["date"]))
        except (orjson.JSONDecodeError, SandboxOptionError) as exc:
            return _json_response(orjson.dumps({"ok": False, "error": str(exc)}), 400)
    return _json_response(orjson.dumps({"ok": True, **state.date_info()}))


def make_app(config: SandboxConfig) -> web.Application:
    """The sandbox as an aiohttp application (its ledger lives in the app)."""
    app = web.Application()
    app[_STATE] = _ServerState(config)
    app.router.add_get(API_PATH, _handle_api)
    app.router.add_get("/_sandbox/stats", _handle_stats)
    app.router.add_post("/_sandbox/script", _handle_script)
    app.router.add_get("/_sandbox/date", _handle_date)
    app.router.add_post("/_sandbox/date", _handle_date)
    return app


async def _listen(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    # A short shutdown timeout: stopping must not wait for drip answers to finish.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        reason = f"{exc.strerror or exc}; choose another port"
        raise SandboxListenError(exc.errno or 0, reason, address=f"{host}:{port}") from exc
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return runner, f"http://{shown}:{bound_port}"


async def serve(
    config: SandboxConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until cancelled; prints nothing (``on_ready`` gets the base URL once listening)."""
    runner, base_url = await _listen(make_app(config), host, port)
    try:
        if on_ready is not None:
            on_ready(base_url)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


class Sandbox:
    """The sandbox in a background thread with its own event loop (for tests and ``--sandbox``).

    Starting again after ``stop`` gives a fresh ledger; ``stats()`` still works after ``stop``.
    """

    def __init__(
        self, config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config if config is not None else SandboxConfig()
        self.host = host
        self.port = port
        self.base_url = ""
        self._state: _ServerState | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def start(self) -> str:
        """Listen and return the base URL, e.g. ``http://127.0.0.1:54321``."""
        if self._thread is not None:
            return self.base_url
        ready = threading.Event()
        failures: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._main(ready))
            except BaseException as exc:  # reported to start()'s caller below
                failures.append(exc)
                ready.set()

        thread = threading.Thread(target=run, name="xhs-profiles-sandbox", daemon=True)
        thread.start()
        ready.wait()
        if failures:
            thread.join()
            raise failures[0]
        self._thread = thread
        return self.base_url

    async def _main(self, ready: threading.Event) -> None:
        app = make_app(self.config)
        self._state = app[_STATE]
        runner, self.base_url = await _listen(app, self.host, self.port)
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    def stop(self) -> None:
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=10)
        self._thread = self._loop = self._stopping = None

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> SandboxStats:
        state = self._state
        if state is None:
            return SandboxStats(0, {}, {}, {})
        return self._in_loop(state.snapshot)

    def script(self, user_id: str, modes: Sequence[str]) -> None:
        """Give ``user_id``'s next calls these modes; thread-safe, in effect when it returns."""
        names = [parse_mode(m).name for m in modes]  # fail here, in the caller's thread
        state = self._state
        if state is None:
            scripts = {**self.config.scripts, user_id: names}
            self.config = dataclasses.replace(self.config, scripts=scripts)
            return
        self._in_loop(lambda: state.set_script(user_id, names))

    def set_date(self, on: date | None) -> None:
        """Answer as of ``on`` (None: the UTC date of each request); thread-safe, in effect when
        it returns, and kept by a restart.  Without a drift plan: ``SandboxOptionError``."""
        self.config = dataclasses.replace(self.config, as_of=on)  # validates, in this thread
        state = self._state
        if state is not None:
            self._in_loop(lambda: state.set_date(on))

    def _in_loop(self, action: Callable[[], _T]) -> _T:
        loop = self._loop
        if loop is None or not loop.is_running():
            return action()

        async def call() -> _T:
            return action()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=10)
