"""A realistic fake of Just One API's ``GET /api/xiaohongshu/get-user/v4`` (and ``/v3``).

It serves ``make run`` without a token, every end-to-end test and the benchmark, on loopback.

Rules it follows:

- A request passes these checks in order; the first that fires answers it: the version is in
  ``gone_versions`` (HTTP 404 HTML) → the token is not ``config.token`` (code 100) → the daily
  quota is used up (code 303) → the token bucket (``rate_limit`` a second, burst of one
  second's worth) is empty (code 302, HTTP 200) → ``userId`` is not 24 hex characters (code
  400) → the id's script, then ``never_succeed`` (code 500 for ever), then ``fault_mix`` (the
  id's first answered call only) → success.  v3 also accepts a profile URL as ``userId``.
  Every code-302 answer, limiter or scripted, carries ``Retry-After`` when ``retry_after`` is
  set.  Latency is slept after the decision, so a client that gives up still paid for its call.
- The ledger is exact and written before any wait: every API request counts in ``calls`` and
  ``calls_by_id`` (what the vendor would bill); ``successes_by_id`` counts the answers a correct
  client stores as a profile (modes ``ok``, ``slow``, ``display_counts``, ``code_string``), and
  those are what the daily quota counts.  ``by_code`` keys are the body's business code, the HTTP
  status for non-JSON answers (and ``no_code``), or -1 when no complete answer was sent.
- A script's modes apply to the id's next calls that get past the checks above, from the moment
  it is set; after the list the id behaves normally.  Fault and ``never_succeed`` draws are
  deterministic: a BLAKE2 hash of (seed, purpose, id), never ``hash()``, which changes between
  processes.
- Profiles are deterministic per (id, seed) and built from the real seed sample (a copy lives in
  ``pipeline/sandbox_data``): counters vary but keep the facts real samples show
  (interaction count == liked + collected, fans/follows equal their interactions entries,
  ``ndiscovery == note_num_stat.posted``); tags, privacy, optional keys and locations vary.
- The hot path is cheap: a profile's ``data`` bytes are generated once and kept in an LRU cache,
  the envelope is joined as bytes, ``recordTime`` is formatted once a second, access log is off.
  ``build_profile`` gives the same data to tests that want profiles without a server.
- Messages never echo the token.

Modes (for ``scripts``, ``fault_mix`` and ``POST /_sandbox/script``):

=================  ==========================================================================
mode               answer
=================  ==========================================================================
``ok``             HTTP 200, code 0, the id's profile
``code:N``         HTTP 200, JSON ``{"code": N, "message": ..., "data": null}``;
                   ``301``, ``500``, ``503``, ... are aliases
``status:S:N``     HTTP S with the same JSON body (as newer vendor specs declare)
``htmlS``          HTTP S, ``text/html`` error page as a proxy sends; ``html502``, ``html503``;
                   ``502`` is an alias of ``html502``
``gone``           HTTP 404 ``text/html``: the endpoint itself is removed
``reset``          the connection is closed (RST) without any response
``reset_mid``      headers and half the body, then the connection is aborted
``truncated``      ``Content-Length`` of the whole body, part of it, then a clean close
``drip``           headers, then the body one byte a second (past any sane read timeout)
``huge``           a valid success body of about 8 MB (a giant ``desc``)
``deep``           success, ``data.nested`` is an array nested 5000 levels deep
``bigint``         success, ``data.fans`` is an integer of 5000 digits
``wrong_types``    success, ``fans: "abc"``, ``tags: {}``, ``interactions: null``, ``level: "7"``
``code_string``    success with ``"code": "0"`` (as older specs declared)
``data_null``      code 0, ``data: null``
``empty_data``     code 0, ``data: {}``
``no_result``      code 0, ``data: {"result": {"success": false, "code": -1, ...}}``
``no_code``        the success envelope without ``code``
``not_json``       HTTP 200, ``text/html`` page
``display_counts``  success, ``interactions[].count`` as display strings (``"1.2万"``, ``"10万+"``)
``slow``           success after max(2 × the latency's maximum, 1 s)
=================  ==========================================================================

``GET /_sandbox/stats`` returns the ledger as JSON; ``POST /_sandbox/script`` takes
``{user_id: [modes]}``, so a test can drive a sandbox running in another process.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import random
import re
import socket
import string
import struct
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any, Final, TypeVar
from urllib.parse import unquote

import orjson
from aiohttp import web

from pipeline.errors import UsageError

API_PATH: Final = "/api/xiaohongshu/get-user/{version}"
VERSIONS: Final = frozenset({"v3", "v4"})
NO_RESPONSE: Final = -1
_T = TypeVar("_T")
_ID = re.compile(r"[0-9a-fA-F]{24}")
_PROFILE_URL_ID = re.compile(r"/user/profile/([0-9a-fA-F]{24})")
_SAMPLE_ID: Final = b"5a901362e8ac2b36c99bce33"
_PROFILE_CACHE_SIZE: Final = 4096  # about 25 MB of bodies; retries of an id come soon after
_HUGE_BYTES: Final = 8 * 1024 * 1024
_NESTING: Final = 5000
_BIG_DIGITS: Final = 5000
_JSON = {"Content-Type": "application/json"}
_HTML = {"Content-Type": "text/html; charset=utf-8"}
MESSAGES: Final = {
    0: "success",
    100: "token invalid or inactive",
    301: "collection failed, please retry",
    302: "rate limit exceeded",
    303: "daily quota exceeded",
    400: "invalid parameters",
    404: "not found",
    500: "internal server error",
    503: "service unavailable",
    600: "permission denied",
    601: "insufficient balance",
}
_PAGE_TITLES: Final = {
    404: "Not Found",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}
TOAST_FOLLOWS: Final = "该用户已设置关注列表不可见"
TOAST_FANS: Final = "该用户已设置粉丝列表不可见"


class SandboxOptionError(UsageError, ValueError):
    """A sandbox option is malformed (a ValueError too, for callers that catch that)."""


class SandboxListenError(UsageError, OSError):
    """The sandbox cannot listen on the requested address (an OSError too)."""


# --- modes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mode:
    """One way of answering: ``kind`` picks the writer, ``ledger_code`` is its ``by_code`` key."""

    name: str
    kind: str
    status: int = 200
    code: int = 0
    success: bool = False

    @property
    def ledger_code(self) -> int:
        if self.kind in ("reset", "reset_mid", "truncated", "drip"):
            return NO_RESPONSE
        if self.kind in ("html", "not_json", "no_code"):
            return self.status
        return self.code


_SUCCESS_KINDS: Final = frozenset({"ok", "slow", "display_counts", "code_string"})
_SIMPLE_KINDS: Final = frozenset({
    "ok", "slow", "display_counts", "code_string", "reset", "reset_mid", "truncated", "drip",
    "huge", "deep", "bigint", "wrong_types", "data_null", "empty_data", "no_result", "no_code",
    "not_json",
})  # fmt: skip


def parse_mode(text: str) -> Mode:
    """The mode named by ``text`` (aliases resolved), or SandboxOptionError."""
    name = text.strip().lower()
    if name == "502":
        name = "html502"
    elif name.isdigit():
        name = f"code:{name}"
    if name in _SIMPLE_KINDS:
        return Mode(name, name, success=name in _SUCCESS_KINDS)
    if name == "gone":
        return Mode(name, "html", status=404)
    parts = name.split(":")
    try:
        if parts[0] == "code" and len(parts) == 2:
            return Mode(name, "code", code=int(parts[1]))
        if parts[0] == "status" and len(parts) == 3 and 200 <= int(parts[1]) <= 599:
            return Mode(name, "code", status=int(parts[1]), code=int(parts[2]))
        if name.startswith("html") and 400 <= int(name[4:]) <= 599:
            return Mode(name, "html", status=int(name[4:]))
    except ValueError:
        pass
    known = ", ".join(sorted(_SIMPLE_KINDS | {"code:N", "status:S:N", "htmlS", "gone"}))
    raise SandboxOptionError(f"unknown sandbox mode {text!r}; use one of: {known}")


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SandboxConfig:
    """How the fake API behaves; immutable, validated on construction (mode names canonical)."""

    token: str = field(default="sandbox", repr=False)
    latency: tuple[float, float] = (0.0, 0.0)
    rate_limit: float | None = None
    retry_after: float | None = None
    daily_quota: int | None = None
    fault_mix: Mapping[str, float] = field(default_factory=dict)
    never_succeed: float = 0.0
    scripts: Mapping[str, Sequence[str]] = field(default_factory=dict)
    gone_versions: frozenset[str] = frozenset()
    seed: int = 0

    def __post_init__(self) -> None:
        lo, hi = float(self.latency[0]), float(self.latency[1])
        if not 0 <= lo <= hi:
            raise SandboxOptionError(f"latency must be 0 <= MIN <= MAX seconds, got {lo}..{hi}")
        if not self.token:
            raise SandboxOptionError("the sandbox token must not be empty")
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise SandboxOptionError(f"rate_limit must be > 0 requests/s, got {self.rate_limit}")
        for name in ("retry_after", "daily_quota"):
            value = getattr(self, name)
            if value is not None and not value >= 0:  # written so that NaN fails too
                raise SandboxOptionError(f"{name} must be >= 0, got {value}")
        if not 0 <= self.never_succeed <= 1:
            raise SandboxOptionError("never_succeed must be a share between 0 and 1")
        fault_mix = {parse_mode(m).name: float(p) for m, p in self.fault_mix.items()}
        if any(not 0 <= p <= 1 for p in fault_mix.values()) or sum(fault_mix.values()) > 1:
            raise SandboxOptionError("fault_mix probabilities must be in 0..1 and sum to <= 1")
        scripts = {uid: tuple(parse_mode(m).name for m in ms) for uid, ms in self.scripts.items()}
        if not self.gone_versions <= VERSIONS:
            raise SandboxOptionError(f"gone_versions must be among {sorted(VERSIONS)}")
        object.__setattr__(self, "latency", (lo, hi))
        object.__setattr__(self, "fault_mix", MappingProxyType(fault_mix))
        object.__setattr__(self, "scripts", MappingProxyType(scripts))
        object.__setattr__(self, "gone_versions", frozenset(self.gone_versions))

    @classmethod
    def from_options(cls, **kwargs: Any) -> SandboxConfig:
        """Build from loose option values: strings are parsed, ``None`` means the default.

        ``latency``: a number, ``(min, max)``, ``"MIN:MAX"``, ``"MIN-MAX"`` or ``"MIN,MAX"``;
        ``fault_mix``: ``"301:0.05,reset:0.02"``; ``scripts``: ``"ID=mode,mode;ID2=mode"``;
        ``gone_versions``: ``"v4"`` or ``"v3,v4"`` or any iterable.
        """
        unknown = set(kwargs) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown sandbox option(s): {', '.join(sorted(unknown))}")
        values = {k: v for k, v in kwargs.items() if v is not None}
        try:
            if "latency" in values:
                values["latency"] = _parse_latency(values["latency"])
            if isinstance(values.get("fault_mix"), str):
                values["fault_mix"] = _parse_fault_mix(values["fault_mix"])
            if isinstance(values.get("scripts"), str):
                values["scripts"] = _parse_scripts(values["scripts"])
            if "gone_versions" in values:
                gone = values["gone_versions"]
                items = gone.split(",") if isinstance(gone, str) else gone
                values["gone_versions"] = frozenset(v.strip() for v in items if v.strip())
            for name in ("rate_limit", "retry_after", "never_succeed", "daily_quota", "seed"):
                if name in values:
                    values[name] = (int if name in ("daily_quota", "seed") else float)(values[name])
            return cls(**values)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, SandboxOptionError):
                raise
            raise SandboxOptionError(f"bad sandbox option: {exc}") from None


def _parse_latency(value: object) -> tuple[float, float]:
    if isinstance(value, int | float):
        return (float(value), float(value))
    parts = re.split(r"[:,]|(?<=\d)-", value.strip()) if isinstance(value, str) else value
    if isinstance(parts, Sequence) and len(parts) in (1, 2):
        return (float(parts[0]), float(parts[-1]))
    raise SandboxOptionError(f"latency must be MIN or MIN:MAX seconds, got {value!r}")


def _parse_fault_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        mode, sep, share = item.rpartition(":")
        if not sep or not mode:
            raise SandboxOptionError(f"fault mix item {item!r} is not MODE:PROBABILITY")
        mix[parse_mode(mode).name] = float(share)
    return mix


def _parse_scripts(text: str) -> dict[str, list[str]]:
    scripts: dict[str, list[str]] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        user_id, sep, modes = item.partition("=")
        if not sep or not user_id.strip():
            raise SandboxOptionError(f"script item {item!r} is not ID=MODE,MODE")
        scripts[user_id.strip()] = [m for m in modes.split(",") if m.strip()]
    return scripts


@dataclass(frozen=True)
class SandboxStats:
    """A snapshot of the ledger."""

    calls: int
    calls_by_id: dict[str, int]
    successes_by_id: dict[str, int]
    by_code: dict[int, int]

    @property
    def successes(self) -> int:
        return sum(self.successes_by_id.values())

    def to_json(self) -> bytes:
        return orjson.dumps(self, option=orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_json(cls, body: bytes | str) -> SandboxStats:
        raw = orjson.loads(body)
        by_code = {int(code): int(n) for code, n in raw["by_code"].items()}
        return cls(
            int(raw["calls"]), dict(raw["calls_by_id"]), dict(raw["successes_by_id"]), by_code
        )


# --- profiles ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Template:
    data_text: bytes  # the seed sample's data, with _SAMPLE_ID where the id goes
    vocab: dict[str, Any]


@cache
def _template() -> _Template:
    folder = resources.files("pipeline") / "sandbox_data"
    sample = orjson.loads((folder / "seed-get-user-v4-response.json").read_bytes())
    vocab = orjson.loads((folder / "vocab.json").read_bytes())
    return _Template(orjson.dumps(sample["data"]), vocab)


def _draw(seed: int, purpose: str, user_id: str) -> int:
    digest = hashlib.blake2b(f"{seed}\0{purpose}\0{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def display_count(n: int, style: str = "wan") -> str:
    """``n`` as the app shows it: ``8456``, ``7.6万``, ``1.5亿``; ``plus`` style: ``10万+``."""
    if style == "plus" and n >= 10_000:
        return f"{n // 100_000 * 10 or n // 10_000}万+"
    if style == "thousand" and 1_000 <= n < 10_000:
        return f"{n // 1_000}千+"
    if n < 10_000:
        return str(n)
    value, unit = (n / 10_000, "万") if n < 100_000_000 else (n / 100_000_000, "亿")
    return f"{value:.1f}".removesuffix(".0") + unit


_OPTIONAL_KEYS: Final = (
    "brand_account_info", "buyer_info", "banner_info", "zhong_tong_bar_info", "red_club_info",
    "avatar_pendant", "hula_tabs", "recommend_info_icon", "real_name_info", "identity_deeplink",
    "share_info_v2",
)  # fmt: skip


def build_profile(user_id: str, seed: int = 0) -> dict[str, Any]:
    """The ``data`` object the sandbox answers for ``user_id`` (same id and seed, same data)."""
    return dict(orjson.loads(_profile_json(user_id, seed)))


@lru_cache(maxsize=_PROFILE_CACHE_SIZE)
def _profile_json(user_id: str, seed: int) -> bytes:
    rng = random.Random(_draw(seed, "profile", user_id))
    tpl = _template()
    words = tpl.vocab
    data: dict[str, Any] = orjson.loads(tpl.data_text.replace(_SAMPLE_ID, user_id.encode()))
    head, core, tail = (
        rng.choice(words[k]) for k in ("nickname_heads", "nickname_cores", "nickname_tails")
    )
    nickname = f"{head}{core}{tail}"
    desc = "\n".join(rng.sample(words["desc_lines"], rng.choice((0, 1, 2, 2, 3, 4))))
    gender = rng.randint(0, 1)
    fans = 0 if rng.random() < 0.03 else int(10 ** rng.uniform(0, 7))
    follows = 0 if rng.random() < 0.05 else int(10 ** rng.uniform(0, 3.7))
    liked = int(fans * rng.uniform(0.2, 12)) + rng.randint(0, 50)
    collected = int(liked * rng.uniform(0.05, 0.8))
    posted = 0 if rng.random() < 0.05 else int(10 ** rng.uniform(0, 3.5))
    province, city = rng.choice(words["places"])
    roll = rng.random()
    ip_location = "" if roll < 0.08 else rng.choice(words["abroad"]) if roll < 0.14 else province
    location = "" if rng.random() < 0.25 else f"中国 {province} {city}"
    verified = rng.random() < 0.05
    avatar = f"{rng.getrandbits(96):024x}"
    xsec = "YB" + base64.urlsafe_b64encode(rng.randbytes(30)).decode() + "="
    data.update(
        nickname=nickname,
        desc=desc,
        gender=gender,
        fans=fans,
        follows=follows,
        liked=liked,
        collected=collected,
        ndiscovery=posted,
        ip_location=ip_location,
        location=location,
        note_num_stat={"posted": posted, "liked": liked, "collected": collected},
        red_id=(
            str(rng.randint(10**8, 10**10))
            if rng.random() < 0.4
            else "".join(rng.choices(string.ascii_lowercase + string.digits, k=10))
        ),
        location_jump=bool(location),
        red_official_verified=verified,
        red_official_verify_type=rng.choice((1, 2)) if verified else 0,
        red_official_verify_content=rng.choice(words["verify_contents"]) if verified else "",
        level={"image_link": "", "number": rng.choice((0, 0, 0, 1, 2, 3, 5, 8))},
        images=f"https://sns-avatar-qc.xhscdn.com/avatar/{avatar}.jpg?imageView2/2/w/360/format/webp",
        imageb=f"https://sns-avatar-qc.xhscdn.com/avatar/{avatar}.jpg?imageView2/2/w/540/format/webp",
        share_link=f"https://www.xiaohongshu.com/user/profile/{user_id}?xsec_token={xsec}"
        "&xsec_source=app_share",
        user_role_type=rng.choice((0, 0, 6)),
        nboards=rng.choice((0, 0, 1, 3)),
        tags=_tags(rng, words, gender, province + city if location else ""),
        interactions=_interactions(rng, follows, fans, liked + collected),
    )
    data["user_desc_info"].update(desc=desc, desc_with_placeholder=desc)
    data["share_info"] = {"title": nickname, "content": desc}
    data["share_info_v2"].update(
        title=f"@{nickname}的个人主页",
        content=f"粉丝: {display_count(fans)}\n获赞与收藏: {display_count(liked + collected)}",
        ecom_title=f"{nickname}的橱窗",
        ecom_content=f"{nickname}为你推荐了{rng.randint(1, 99)}件宝藏好物!"
        f"已有{rng.randint(0, 999)}人买过了!",
    )
    for key in _OPTIONAL_KEYS:
        if rng.random() < 0.3:
            del data[key]
    if "buyer_info" not in data and "share_info_v2" in data:
        for key in ("ecom_title", "ecom_content", "ecom_share_link"):
            del data["share_info_v2"][key]
    if rng.random() < 0.3:
        data["seller_info"] = words["seller_info"]
    return orjson.dumps(data)


def _tags(rng: random.Random, words: dict[str, Any], gender: int, place: str) -> list[Any]:
    info: dict[str, str] = {
        "icon": "http://ci.xiaohongshu.com/icons/user/gender-"
        f"{'female' if gender else 'male'}-v1.png"
    }
    if rng.random() < 0.4:
        info["name"] = f"{rng.randint(18, 45)}岁"
    info["tag_type"] = "info"
    tags: list[Any] = [info]
    if place:
        tags.append({"name": place, "tag_type": "location"})
    tags += (
        {"name": p, "tag_type": "profession"}
        for p in rng.sample(words["professions"], rng.choice((0, 1, 1, 2, 3)))
    )
    if rng.random() < 0.2:
        tags.append({"name": rng.choice(words["colleges"]), "tag_type": "college"})
    return tags[: rng.choice((0, 1, 2, 3, 4, 5))]


def _interactions(rng: random.Random, follows: int, fans: int, interaction: int) -> list[Any]:
    hide_follows, hide_fans = rng.random() < 0.15, rng.random() < 0.1
    entries = [
        {"type": "follows", "name": "关注", "count": follows, "is_private": hide_follows,
         "toast": TOAST_FOLLOWS if hide_follows else ""},
        {"type": "fans", "name": "粉丝", "count": fans, "is_private": hide_fans,
         "toast": TOAST_FANS if hide_fans else ""},
        {"type": "interaction", "name": "获赞与收藏", "count": interaction, "is_private": False,
         "toast": ""},
    ]  # fmt: skip
    rng.shuffle(entries)
    if rng.random() < 0.5:  # key order differs between real accounts too
        entries = [
            {k: e[k] for k in ("is_private", "toast", "type", "name", "count")} for e in entries
        ]
    return entries


@cache
def _giant_desc_json() -> bytes:
    line = "这是一段非常非常长的个人简介，用来测试客户端对超大响应体的处理。\n"
    return orjson.dumps(line * (_HUGE_BYTES // len(line.encode())))


@cache
def _html_page(status: int) -> bytes:
    title = f"{status} {_PAGE_TITLES.get(status, 'Error')}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}"
        "</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    ).encode()


_NOT_JSON_PAGE: Final = (
    "<html><head><title>Just One API</title></head><body><p>系统维护中，"
    "请稍后再试</p></body></html>"
).encode()

# --- the server --------------------------------------------------------------------------------

_GONE = parse_mode("gone")
_REJECTIONS: Final = {code: parse_mode(f"code:{code}") for code in (100, 302, 303, 400, 500)}
_OK = parse_mode("ok")


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
        self.burst = max(1.0, config.rate_limit or 0.0)
        self.tokens = self.burst
        self.refilled_at = time.monotonic()
        self.latency_rng = random.Random(config.seed)
        self.slow_delay = max(2 * config.latency[1], 1.0)
        self.retry_after = None if config.retry_after is None else f"{config.retry_after:g}"
        self._prefix = str(uuid.uuid4())[:24].encode()
        self._serial = 0
        self._second = -1
        self._stamp = b""

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
        mode = self._gate(version, token, user_id) or self._scheduled(user_id, entry)
        if mode.success:
            entry[1] += 1
            self.successes += 1
        code = mode.ledger_code
        self.by_code[code] = self.by_code.get(code, 0) + 1
        return user_id, mode

    def _gate(self, version: str, token: str | None, user_id: str) -> Mode | None:
        config = self.config
        if version in config.gone_versions or version not in VERSIONS:
            return _GONE
        if token != config.token:
            return _REJECTIONS[100]
        if config.daily_quota is not None and self.successes >= config.daily_quota:
            return _REJECTIONS[303]
        if config.rate_limit is not None and not self._take_token(config.rate_limit):
            return _REJECTIONS[302]
        if not _ID.fullmatch(user_id):
            return _REJECTIONS[400]
        return None

    def _take_token(self, rate: float) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.refilled_at) * rate)
        self.refilled_at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def _scheduled(self, user_id: str, entry: list[int]) -> Mode:
        entry[2] += 1
        script = self.scripts.get(user_id)
        if script is not None:
            start, modes = script
            if 0 <= entry[2] - start - 1 < len(modes):
                return modes[entry[2] - start - 1]
        seed = self.config.seed
        if self.config.never_succeed and (
            _draw(seed, "never", user_id) / 2**64 < self.config.never_succeed
        ):
            return _REJECTIONS[500]
        if entry[2] == 1 and self.fault_table:
            draw = _draw(seed, "fault", user_id) / 2**64
            for cumulative, mode in self.fault_table:
                if draw < cumulative:
                    return mode
        return _OK

    def set_script(self, user_id: str, modes: Sequence[str]) -> None:
        """Give ``user_id``'s next calls these modes (replacing any script it had)."""
        parsed = tuple(map(parse_mode, modes))
        entry = self.ledger.get(user_id)
        self.scripts[user_id] = (entry[2] if entry else 0, parsed)

    def snapshot(self) -> SandboxStats:
        return SandboxStats(
            calls=self.calls,
            calls_by_id={uid: e[0] for uid, e in self.ledger.items()},
            successes_by_id={uid: e[1] for uid, e in self.ledger.items() if e[1]},
            by_code=dict(self.by_code),
        )

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
        return self.envelope(b"0", "success", _profile_json(user_id, self.config.seed))


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
    data = _profile_json(uid, state.config.seed)
    if kind in ("code_string", "no_code"):
        return state.envelope(b'"0"' if kind == "code_string" else None, "success", data)
    if kind == "deep":
        data = data[:-1] + b',"nested":' + b"[" * _NESTING + b"]" * _NESTING + b"}"
    elif kind in ("wrong_types", "display_counts", "huge", "bigint"):
        data = _rewritten(kind, data)
    return state.envelope(b"0", "success", data)


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
    filler = _giant_desc_json() if kind == "huge" else b"1234567890" * (_BIG_DIGITS // 10)
    return orjson.dumps(profile).replace(b'"\\u0000"', filler)


async def _answer(
    state: _ServerState, request: web.Request, mode: Mode, uid: str
) -> web.StreamResponse:
    kind = mode.kind
    if kind == "html":
        return web.Response(body=_html_page(mode.status), status=mode.status, headers=_HTML)
    if kind == "not_json":
        return web.Response(body=_NOT_JSON_PAGE, headers=_HTML)
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
    if mode.kind == "slow":
        await asyncio.sleep(state.slow_delay)
    elif state.config.latency[1] > 0:
        await asyncio.sleep(state.latency_rng.uniform(*state.config.latency))
    if mode is _OK:  # the hot path
        return web.Response(body=state.success_body(uid), headers=_JSON)
    return await _answer(state, request, mode, uid)


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


def make_app(config: SandboxConfig) -> web.Application:
    """The sandbox as an aiohttp application (its ledger lives in the app)."""
    app = web.Application()
    app[_STATE] = _ServerState(config)
    app.router.add_get(API_PATH, _handle_api)
    app.router.add_get("/_sandbox/stats", _handle_stats)
    app.router.add_post("/_sandbox/script", _handle_script)
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
        raise SandboxListenError(exc.errno or 0, reason) from exc
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

    def _in_loop(self, action: Callable[[], _T]) -> _T:
        loop = self._loop
        if loop is None or not loop.is_running():
            return action()

        async def call() -> _T:
            return action()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=10)
