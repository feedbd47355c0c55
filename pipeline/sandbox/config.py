"""The sandbox's modes, configuration and ledger snapshot (no server code here)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

import orjson

from pipeline.errors import SandboxOptionError
from pipeline.sandbox.drift import DriftPlan, parse_date

API_PATH: Final = "/api/xiaohongshu/get-user/{version}"
RateScope = Literal["server", "token"]
RATE_SCOPES: Final[tuple[RateScope, ...]] = ("server", "token")
VERSIONS: Final = frozenset({"v3", "v4"})
NO_RESPONSE: Final = -1
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
    "not_json", "other_user",
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
    # More valid tokens besides ``token``: one per account of a sharded run.
    tokens: tuple[str, ...] = field(default=(), repr=False)
    latency: tuple[float, float] = (0.0, 0.0)
    rate_limit: float | None = None
    # "server": one token bucket for every caller; "token": each valid token has its own
    # (``rate_limit``, its burst and ``rate_schedule`` alike), as each real account does.
    rate_scope: RateScope = "server"
    # (second of the server's life, requests/s from then on): the limit changes during a run;
    # before the first entry ``rate_limit`` applies.
    rate_schedule: tuple[tuple[float, float], ...] = ()
    # Calls in flight the server serves at full speed: past it each answer takes the latency
    # times (calls in flight at arrival / capacity), as a queueing server does.
    capacity: int | None = None
    retry_after: float | None = None
    daily_quota: int | None = None
    fault_mix: Mapping[str, float] = field(default_factory=dict)
    never_succeed: float = 0.0
    scripts: Mapping[str, Sequence[str]] = field(default_factory=dict)
    gone_versions: frozenset[str] = frozenset()
    seed: int = 0
    drift: DriftPlan | None = None  # profiles change with the date (pipeline.sandbox.drift)
    as_of: date | None = None  # the date answered for; None: the UTC date at each request

    def __post_init__(self) -> None:
        lo, hi = float(self.latency[0]), float(self.latency[1])
        if not 0 <= lo <= hi:
            raise SandboxOptionError(f"latency must be 0 <= MIN <= MAX seconds, got {lo}..{hi}")
        if isinstance(self.tokens, str):  # type: ignore[unreachable]  # for untyped callers
            raise SandboxOptionError("tokens must be a tuple of strings, not one string")
        tokens = tuple(self.tokens)
        if not self.token or not all(isinstance(t, str) and t for t in tokens):
            raise SandboxOptionError("the sandbox token must not be empty")
        if self.rate_scope not in RATE_SCOPES:
            raise SandboxOptionError(
                f"rate_scope must be one of {', '.join(RATE_SCOPES)}, got {self.rate_scope!r}"
            )
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise SandboxOptionError(f"rate_limit must be > 0 requests/s, got {self.rate_limit}")
        schedule = tuple((float(at), float(rate)) for at, rate in self.rate_schedule)
        times = [at for at, _ in schedule]
        if any(not at >= 0 for at in times) or times != sorted(set(times)):
            raise SandboxOptionError("rate_schedule times must be >= 0 seconds and increasing")
        if any(not rate > 0 for _, rate in schedule):
            raise SandboxOptionError("rate_schedule rates must be > 0 requests/s")
        if self.capacity is not None and not self.capacity >= 1:
            raise SandboxOptionError(f"capacity must be >= 1 call in flight, got {self.capacity}")
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
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "rate_schedule", schedule)
        object.__setattr__(self, "fault_mix", MappingProxyType(fault_mix))
        object.__setattr__(self, "scripts", MappingProxyType(scripts))
        object.__setattr__(self, "gone_versions", frozenset(self.gone_versions))
        if self.drift is not None and not isinstance(self.drift, DriftPlan):
            raise SandboxOptionError(f"drift must be a DriftPlan, got {self.drift!r}")
        if self.as_of is not None:
            if self.drift is None:
                raise SandboxOptionError(_NO_DRIFT)
            object.__setattr__(self, "as_of", parse_date(self.as_of, "as_of"))

    @property
    def valid_tokens(self) -> tuple[str, ...]:
        """``token`` then ``tokens``, each once: the tokens the server accepts."""
        return tuple(dict.fromkeys((self.token, *self.tokens)))

    @classmethod
    def from_options(cls, **kwargs: Any) -> SandboxConfig:
        """Build from loose option values: strings are parsed, ``None`` means the default.

        ``latency``: a number, ``(min, max)``, ``"MIN:MAX"``, ``"MIN-MAX"`` or ``"MIN,MAX"``;
        ``fault_mix``: ``"301:0.05,reset:0.02"``; ``scripts``: ``"ID=mode,mode;ID2=mode"``;
        ``gone_versions``: ``"v4"`` or ``"v3,v4"`` or any iterable; ``drift``: a ``DriftPlan``
        or the path of its JSON file; ``as_of``: a date or ``"YYYY-MM-DD"``; ``rate_schedule``:
        ``"50@0,10@20,80@40"`` (requests/s from that second of the server's life on);
        ``tokens``: ``"a,b,c"`` or any iterable; ``rate_scope``: ``"server"`` or ``"token"``.
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
            if "tokens" in values:
                given = values["tokens"]
                items = given.split(",") if isinstance(given, str) else given
                values["tokens"] = tuple(t.strip() for t in items if t.strip())
            if isinstance(values.get("rate_schedule"), str):
                values["rate_schedule"] = _parse_schedule(values["rate_schedule"])
            if "gone_versions" in values:
                gone = values["gone_versions"]
                items = gone.split(",") if isinstance(gone, str) else gone
                values["gone_versions"] = frozenset(v.strip() for v in items if v.strip())
            if isinstance(values.get("drift"), str | Path):
                values["drift"] = DriftPlan.load(Path(values["drift"]))
            if "as_of" in values:
                values["as_of"] = parse_date(values["as_of"], "as_of")
            integers = ("daily_quota", "seed", "capacity")
            for name in ("rate_limit", "retry_after", "never_succeed", *integers):
                if name in values:
                    values[name] = (int if name in integers else float)(values[name])
            return cls(**values)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, SandboxOptionError):
                raise
            raise SandboxOptionError(f"bad sandbox option: {exc}") from None


_NO_DRIFT: Final = "a sandbox date needs a drift plan: without one every date answers the same"


def drift_config_for(
    snapshot_date: date, ids: Iterable[str], *, start: date, **options: Any
) -> SandboxConfig:
    """A sandbox that answers as of ``snapshot_date`` in a history of ``ids`` begun at ``start``.

    The plan is ``DriftPlan.demo(ids, start, seed)``: day 0 (``start``) answers the plain
    profiles, the scripted events fall on days 3–6.  Every run of one series must pass the same
    ``start``, ids and seed, or its snapshots see different histories.  ``options`` are
    ``from_options``'s (``latency``, ``fault_mix``, ``seed``, ...).
    """
    config = SandboxConfig.from_options(**options)
    plan = DriftPlan.demo(ids, parse_date(start, "start"), config.seed)
    return dataclasses.replace(config, drift=plan, as_of=parse_date(snapshot_date, "the date"))


def _parse_latency(value: object) -> tuple[float, float]:
    if isinstance(value, int | float):
        return (float(value), float(value))
    parts = re.split(r"[:,]|(?<=\d)-", value.strip()) if isinstance(value, str) else value
    if isinstance(parts, Sequence) and len(parts) in (1, 2):
        return (float(parts[0]), float(parts[-1]))
    raise SandboxOptionError(f"latency must be MIN or MIN:MAX seconds, got {value!r}")


def _parse_schedule(text: str) -> tuple[tuple[float, float], ...]:
    schedule = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        rate, sep, at = item.partition("@")
        if not sep:
            raise SandboxOptionError(f"rate schedule item {item!r} is not RATE@SECOND")
        schedule.append((float(at), float(rate)))
    return tuple(schedule)


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
    """A snapshot of the ledger.

    ``max_in_flight``: the most requests the server held at once; ``max_calls_per_second``: the
    most API requests that arrived within any one second (a sliding window); ``latency_median_s``
    and ``latency_p90_s``: of the latencies it applied (to the millisecond), None before any;
    ``in_flight`` and ``age_s``: the requests held and the server's age at the snapshot;
    ``calls_by_token``: the API requests that carried each valid token (every one listed, from
    0; a call with any other token is in ``by_code[100]`` only, so the ledger never repeats an
    unknown token), and ``rate_limited_by_token`` the code-302 answers of its token bucket.
    """

    calls: int
    calls_by_id: dict[str, int]
    successes_by_id: dict[str, int]
    by_code: dict[int, int]
    max_in_flight: int = 0
    max_calls_per_second: int = 0
    latency_median_s: float | None = None
    latency_p90_s: float | None = None
    in_flight: int = 0  # requests held now
    age_s: float = 0.0  # seconds since the server started (the clock of ``rate_schedule``)
    calls_by_token: dict[str, int] = field(default_factory=dict)
    rate_limited_by_token: dict[str, int] = field(default_factory=dict)

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
            int(raw["calls"]),
            dict(raw["calls_by_id"]),
            dict(raw["successes_by_id"]),
            by_code,
            int(raw.get("max_in_flight", 0)),
            int(raw.get("max_calls_per_second", 0)),
            raw.get("latency_median_s"),
            raw.get("latency_p90_s"),
            int(raw.get("in_flight", 0)),
            float(raw.get("age_s", 0.0)),
            {str(t): int(n) for t, n in raw.get("calls_by_token", {}).items()},
            {str(t): int(n) for t, n in raw.get("rate_limited_by_token", {}).items()},
        )
