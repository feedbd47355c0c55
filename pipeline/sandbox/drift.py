"""Drift: sandbox profiles that change with the date, the same way in every process.

A ``DriftPlan`` is a start date and scripted events.  The profile of an id on date D is a
function of (seed, id, D, plan) only, so two runs of a week of snapshots see the same history:

- Day 0 (the start) is the plain sandbox profile; days before it answer day 0's counters.
- Organic change: each creator's rates come from a BLAKE2 hash of (seed, id), as every sandbox
  draw does (``hash()`` is salted per process, so it decides nothing here).  About 6% are flat,
  8% shrink slightly (followers −0.05 to −0.3%/day, no new notes), the rest grow: followers
  0.1–2%/day, log-uniform so most grow slowly, likes and saves at 0.5–1.5× that rate, follows
  up to 0.3%/day, a note every 1 to 14 days or none.  A rate applies to the *day-0* value and
  the cumulated growth is floored, so counters stay exact integers, move one way, and a
  year-long plan cannot overflow an Int64 column as compound growth at 2%/day would.
- An event replaces that day's organic change of the counters it touches, so comparing D with
  D−1 shows exactly its amount (a spike is +50,000, not +50,000 plus growth); the counter then
  grows on from there, one day of growth behind the eventless creator.  Events persist.
- Every date keeps the facts the sandbox promises: the interaction count is liked + collected,
  the fans/follows entries equal ``fans``/``follows``, ``ndiscovery`` is
  ``note_num_stat.posted``, ``note_num_stat.liked/collected`` are ``liked``/``collected``, and
  ``share_info_v2``'s display counts follow the counters.

How the server learns the date: it is server state, never part of a request.  The real API has
no date parameter (it answers "now"), so a client that sent one would carry test plumbing into
production code.  ``SandboxConfig.as_of`` pins it (``run --sandbox`` builds its sandbox for its
snapshot date with ``drift_config_for``); ``POST /_sandbox/date`` and ``Sandbox.set_date`` move
a running server, so one process, with one ledger, serves a whole week; with neither, each
request is answered for its UTC date, as the vendor would.

Cost: a drifted profile is the plain profile's dict, patched, then serialized once and cached
per (id, day) in ``DriftModel`` (seed and plan are fixed per model).  Measured (paired, on the
development machine): a cached answer through the server's decision and envelope takes 3.4 µs
against 3.0 µs plain; the first answer of an id on a date builds in 47 µs against 41 µs plain
(the rates draw, five counters and the patch); an HTTP round trip of a first answer takes
0.7–0.9 ms either way, the difference lost in the noise.

Events (``params`` and their defaults; each from its date on):

======================  ==========================================================================
kind                    effect
======================  ==========================================================================
``spike``               ``fans`` +``followers`` (50,000)
``round_jump``          ``fans`` +``followers`` (10,000: a round number, exactly)
``purge``               ``fans`` −``percent`` % (30) of the day before's value, floored
``follows_spike``       ``follows`` +``follows`` (2,000)
``rename``              a new ``nickname`` (default: drawn from the vocabulary), share titles too
``bio``                 a new ``desc`` (default: drawn), also in ``user_desc_info``, ``share_info``
``notes_deleted``       notes posted −``notes`` (5), never below 0
``gone``                code 0 with ``data: {}``; with ``code: 404``, HTTP 200 code 404
``born``                code 404 "not found" before its date; the normal profile from it
``fans_no_engagement``  ``fans`` +``followers`` (20,000); liked and collected flat that day
======================  ==========================================================================
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import orjson

from pipeline.errors import SandboxOptionError
from pipeline.sandbox.profiles import display_count, draw, profile_data, vocabulary

_ID: Final = re.compile(r"[0-9a-f]{24}")
_ISO_DATE: Final = re.compile(r"\d{4}-\d\d-\d\d")
_PPM: Final = 1_000_000
_CACHE_SIZE: Final = 4096  # as profiles.profile_json's: one week of a 600-id demo, or retries
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
# The server's answers for an id that has no profile on a date (names of config.parse_mode).
EMPTY_DATA: Final = "empty_data"
NOT_FOUND: Final = "code:404"

# kind -> {param: default}; an empty-string default is drawn when the profile is built.
EVENT_KINDS: Final[Mapping[str, Mapping[str, int | str]]] = MappingProxyType({
    "spike": {"followers": 50_000},
    "round_jump": {"followers": 10_000},
    "purge": {"percent": 30},
    "follows_spike": {"follows": 2_000},
    "rename": {"nickname": ""},
    "bio": {"desc": ""},
    "notes_deleted": {"notes": 5},
    "gone": {"code": 0},
    "born": {},
    "fans_no_engagement": {"followers": 20_000},
})  # fmt: skip


def parse_date(value: object, what: str = "date") -> date:
    """``value`` as a date: a ``date`` (a datetime's date), or text ``YYYY-MM-DD`` exactly."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str) and _ISO_DATE.fullmatch(value.strip()):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise SandboxOptionError(f"{what} must be a date YYYY-MM-DD, got {value!r}")


# --- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftEvent:
    """From ``date`` on, ``kind`` happens to ``user_id`` (``params`` override the defaults)."""

    user_id: str
    date: date
    kind: str
    params: Mapping[str, int | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        user_id = self.user_id.strip().lower() if isinstance(self.user_id, str) else ""
        if not _ID.fullmatch(user_id):
            raise SandboxOptionError(f"drift event user_id must be 24 hex, got {self.user_id!r}")
        spec = EVENT_KINDS.get(self.kind)
        if spec is None:
            known = ", ".join(EVENT_KINDS)
            raise SandboxOptionError(f"unknown drift event {self.kind!r}; use one of: {known}")
        if not isinstance(self.params, Mapping):
            raise SandboxOptionError(f"{self.kind} params must be an object")
        for name, value in self.params.items():
            if name not in spec:
                allowed = ", ".join(spec) or "none"
                raise SandboxOptionError(f"{self.kind} has no param {name!r} (params: {allowed})")
            if type(value) is not type(spec[name]) or not _param_ok(self.kind, name, value):
                raise SandboxOptionError(f"{self.kind} param {name} cannot be {value!r}")
        object.__setattr__(self, "user_id", user_id)
        object.__setattr__(self, "date", parse_date(self.date, f"{self.kind} event date"))
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def __hash__(self) -> int:  # the params mapping is not hashable; its items are
        return hash((self.user_id, self.date, self.kind, tuple(sorted(self.params.items()))))

    def param(self, name: str) -> Any:
        return self.params.get(name, EVENT_KINDS[self.kind][name])


def _param_ok(kind: str, name: str, value: int | str) -> bool:
    if name == "code":
        return value in (0, 404)
    if name == "percent":
        return isinstance(value, int) and 0 <= value <= 100
    if isinstance(value, int):
        return value >= 0
    return bool(value.strip())  # a rename or bio to nothing would not be a change


# (kind, day, params, (field, minimum) the id's day-0 profile needs to show the event in full)
_DEMO: Final[tuple[tuple[str, int, dict[str, int | str], tuple[str, int]], ...]] = (
    # The spike comes last, so a daily series has five earlier changes to judge it against.
    ("spike", 6, {}, ("fans", 0)),
    ("round_jump", 4, {}, ("fans", 0)),
    ("purge", 5, {}, ("fans", 1_000)),
    ("fans_no_engagement", 3, {}, ("fans", 0)),
    ("follows_spike", 3, {}, ("fans", 0)),
    ("rename", 4, {}, ("fans", 0)),
    ("bio", 5, {}, ("fans", 0)),
    ("notes_deleted", 6, {}, ("ndiscovery", 5)),
    ("gone", 5, {}, ("fans", 0)),
    ("gone", 6, {"code": 404}, ("fans", 0)),
    ("born", 4, {}, ("fans", 0)),
)


@dataclass(frozen=True)
class DriftPlan:
    """Day 0 and the scripted events; build with ``demo``, ``load`` or the constructor."""

    start: date
    events: tuple[DriftEvent, ...] = ()

    def __post_init__(self) -> None:
        start = parse_date(self.start, "the drift plan's start")
        events = tuple(self.events)
        for event in events:
            if not isinstance(event, DriftEvent):
                raise SandboxOptionError(f"drift plan events must be DriftEvents, got {event!r}")
            if event.date < start:
                raise SandboxOptionError(
                    f"{event.kind} event for {event.user_id} on {event.date} is before the "
                    f"plan's start {start}"
                )
        for kind in ("born", "gone"):
            ids = [e.user_id for e in events if e.kind == kind]
            twice = sorted({uid for uid in ids if ids.count(uid) > 1})
            if twice:
                raise SandboxOptionError(f"more than one {kind} event for {', '.join(twice)}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "events", events)

    @classmethod
    def demo(cls, ids: Iterable[str], start: date, seed: int = 0) -> DriftPlan:
        """The default week: one event each on days 3–6 for up to 11 of ``ids``.

        The valid ids (24 hex, deduplicated) are sorted by a BLAKE2 hash of (seed, id), so the
        choice does not depend on their order in the file; events then go, in this order, to
        the first id not yet given one that can show it (``purge`` needs 1,000 followers and
        ``notes_deleted`` 5 notes at day 0; if none can, the first id left): spike day 6,
        round_jump day 4, purge day 5, fans_no_engagement day 3, follows_spike day 3, rename
        day 4, bio day 5, notes_deleted day 6, gone (data {}) day 5, gone (code 404) day 6,
        born day 4.  ``describe()`` lists the result.
        """
        unique = {uid.strip().lower() for uid in ids}
        queue = sorted((uid for uid in unique if _ID.fullmatch(uid)),
                       key=lambda uid: (draw(seed, "demo", uid), uid))  # fmt: skip
        start = parse_date(start, "the drift plan's start")
        events: list[DriftEvent] = []
        for kind, day, params, (needed, minimum) in _DEMO:
            if not queue:
                break
            can_show = (u for u in queue if profile_data(u, seed)[needed] >= minimum)
            chosen = next(can_show, queue[0])
            queue.remove(chosen)
            on = date.fromordinal(start.toordinal() + day)
            events.append(DriftEvent(chosen, on, kind, params))
        return cls(start, tuple(events))

    def describe(self) -> list[str]:
        """One line per event: ``2026-12-04 (day 3)  <id>  spike followers=50000``."""
        lines = []
        for e in sorted(self.events, key=lambda e: (e.date, e.kind, e.user_id)):
            params = " ".join(f"{k}={e.param(k)}" for k in EVENT_KINDS[e.kind] if e.param(k) != "")
            day = e.date.toordinal() - self.start.toordinal()
            lines.append(f"{e.date} (day {day})  {e.user_id}  {e.kind} {params}".rstrip())
        return lines

    def to_json(self) -> bytes:
        return orjson.dumps({
            "start": self.start.isoformat(),
            "events": [{"user_id": e.user_id, "date": e.date.isoformat(), "kind": e.kind,
                        "params": dict(e.params)} for e in self.events],
        }, option=orjson.OPT_INDENT_2) + b"\n"  # fmt: skip

    @classmethod
    def from_json(cls, text: bytes | str) -> DriftPlan:
        """``{"start": "YYYY-MM-DD", "events": [{"user_id", "date", "kind", "params"?}]}``."""
        try:
            raw = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise SandboxOptionError(f"a drift plan must be JSON: {exc}") from None
        if not isinstance(raw, dict) or set(raw) - {"start", "events"} or "start" not in raw:
            raise SandboxOptionError('a drift plan is {"start": "YYYY-MM-DD", "events": [...]}')
        items = raw.get("events", [])
        keys = {"user_id", "date", "kind", "params"}
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and {"user_id", "date", "kind"} <= set(i) <= keys for i in items
        ):
            raise SandboxOptionError(
                'drift plan events are [{"user_id": ..., "date": ..., "kind": ..., "params": {}}]'
            )
        events = tuple(
            DriftEvent(i["user_id"], parse_date(i["date"], f"{i['kind']} event date"), i["kind"],
                       i.get("params", {}))
            for i in items
        )  # fmt: skip
        return cls(parse_date(raw["start"], "the drift plan's start"), events)

    @classmethod
    def load(cls, path: Path) -> DriftPlan:
        try:
            text = Path(path).read_bytes()
        except OSError as exc:
            raise SandboxOptionError(f"cannot read drift plan {path}: {exc.strerror}") from None
        try:
            return cls.from_json(text)
        except SandboxOptionError as exc:
            raise SandboxOptionError(f"drift plan {path}: {exc}") from None

    def dump(self, path: Path) -> None:
        Path(path).write_bytes(self.to_json())


# --- organic growth ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Growth:
    """One creator's organic change per day, in millionths of the day-0 value (notes: per day)."""

    kind: str  # "flat", "shrinking" or "growing"
    fans_ppm: int
    follows_ppm: int
    engagement_ppm: int  # liked and collected alike
    notes_ppm: int  # notes a day × 10⁶: 333,333 is one note every three days


_NOTE_EVERY: Final = (1, 2, 2, 3, 3, 3, 4, 5, 7, 7, 7, 10, 14, 14, 0, 0)  # days a note; 0: none


@lru_cache(maxsize=_CACHE_SIZE)
def growth(seed: int, user_id: str) -> Growth:
    """The creator's rates, cut from the bits of one BLAKE2 draw (no ``random.Random``: seeding
    one costs 4 µs, more than the rest of a drifted profile's patch)."""
    bits = draw(seed, "drift", user_id)
    roll, bits = bits % 1000, bits // 1000  # per mille: 6% flat, 8% shrinking, the rest grows
    rate, bits = bits % 65_536 / 65_536, bits // 65_536  # a share in [0, 1) for the fans rate
    follows, bits = bits % 3_001, bits // 3_001
    engagement, bits = bits % 1_001, bits // 1_001
    every = _NOTE_EVERY[bits % len(_NOTE_EVERY)]
    if roll < 60:
        return Growth("flat", 0, 0, 0, 0)
    if roll < 140:
        return Growth("shrinking", -(500 + round(rate * 2_500)), 0, engagement * 3 // 10, 0)
    fans = round(1_000 * 20**rate)  # 0.1% to 2% a day, log-uniform: most grow slowly
    return Growth(
        "growing",
        fans,
        follows,
        fans * (500 + engagement) // 1_000,  # 0.5 to 1.5 times the fans rate
        _PPM // every if every else 0,
    )


# A change to a counter on a day: (day, op, amount); op "+" adds, "-" subtracts, "%" removes
# amount percent.  "+" with 0 only pauses that day's organic change.
_Change = tuple[int, str, int]


def _counter(base: int, scale: int, ppm: int, day: int, changes: tuple[_Change, ...]) -> int:
    """``base`` at ``day``: ``scale × ppm / 10⁶`` a day on every day without a change, cumulated
    then floored (so the result is exact and moves one way), and each change on its day."""
    rate = scale * ppm
    if not changes:  # most ids: no event
        return max(0, base + rate * day // _PPM)
    value, organic, done = base, 0, 0
    for on, op, amount in changes:
        if on > day:
            break
        grown = organic + max(0, on - 1 - done)
        value += rate * grown // _PPM - rate * organic // _PPM
        organic, done = grown, max(done, on)
        if op == "%":
            value -= max(value, 0) * amount // 100
        else:
            value += amount if op == "+" else -amount
        value = max(value, 0)
    grown = organic + max(0, day - done)
    return max(0, value + rate * grown // _PPM - rate * organic // _PPM)


# --- the model the server asks -----------------------------------------------------------------


@dataclass(frozen=True)
class _Creator:
    """One id's events, compiled: counter changes, renames and bios by day, born and gone."""

    changes: Mapping[str, tuple[_Change, ...]]
    renames: tuple[tuple[int, str], ...]
    bios: tuple[tuple[int, str], ...]
    born: int | None
    gone: tuple[int, str] | None


_NO_EVENTS: Final = _Creator({}, (), (), None, None)
# kind -> [(counter, op, the param that gives the amount, or None for 0)]
_TOUCHES: Final[Mapping[str, tuple[tuple[str, str, str | None], ...]]] = {
    "spike": (("fans", "+", "followers"),),
    "round_jump": (("fans", "+", "followers"),),
    "fans_no_engagement": (("fans", "+", "followers"), ("engagement", "+", None)),
    "purge": (("fans", "%", "percent"),),
    "follows_spike": (("follows", "+", "follows"),),
    "notes_deleted": (("posted", "-", "notes"),),
}


class DriftModel:
    """A plan and a seed, ready to answer: ``absent`` and ``profile_json`` by (id, day)."""

    def __init__(self, plan: DriftPlan, seed: int = 0) -> None:
        self.plan = plan
        self.seed = seed
        self.start_ordinal = plan.start.toordinal()
        by_id: dict[str, list[DriftEvent]] = {}
        for event in sorted(plan.events, key=lambda e: e.date):
            by_id.setdefault(event.user_id, []).append(event)
        self._creators = {uid: self._compile(events) for uid, events in by_id.items()}
        # Only ids that can be absent are in here: the hot path pays one failed dict lookup.
        self._absence = {u: c for u, c in self._creators.items() if c.born is not None or c.gone}
        self._cached: Callable[[str, int], bytes] = lru_cache(maxsize=_CACHE_SIZE)(self._build)

    def _compile(self, events: list[DriftEvent]) -> _Creator:
        changes: dict[str, list[_Change]] = {}
        renames: list[tuple[int, str]] = []
        bios: list[tuple[int, str]] = []
        born: int | None = None
        gone: tuple[int, str] | None = None
        for event in events:
            day = event.date.toordinal() - self.start_ordinal
            for counter, op, param in _TOUCHES.get(event.kind, ()):
                amount = int(event.param(param)) if param else 0
                changes.setdefault(counter, []).append((day, op, amount))
            if event.kind == "rename":
                renames.append((day, str(event.param("nickname"))))
            elif event.kind == "bio":
                bios.append((day, str(event.param("desc"))))
            elif event.kind == "born":
                born = day
            elif event.kind == "gone":
                gone = (day, NOT_FOUND if event.param("code") == 404 else EMPTY_DATA)
        compiled = {counter: tuple(c) for counter, c in changes.items()}
        return _Creator(compiled, tuple(renames), tuple(bios), born, gone)

    def day(self, on: date) -> int:
        return on.toordinal() - self.start_ordinal

    def day_of_clock(self, epoch_seconds: float) -> int:
        """The plan day of a UTC time (what a server that follows the clock answers for)."""
        return int(epoch_seconds) // 86_400 + _EPOCH_ORDINAL - self.start_ordinal

    def date_of(self, day: int) -> date:
        return date.fromordinal(self.start_ordinal + day)

    def absent(self, user_id: str, day: int) -> str | None:
        """The mode that answers ``user_id`` on ``day`` when it has no profile then, else None."""
        creator = self._absence.get(user_id)
        if creator is None:
            return None
        if creator.born is not None and day < creator.born:
            return NOT_FOUND
        if creator.gone is not None and day >= creator.gone[0]:
            return creator.gone[1]
        return None

    def profile_json(self, user_id: str, day: int) -> bytes:
        """The ``data`` bytes of ``user_id`` on ``day`` (whether or not it is ``absent``)."""
        return self._cached(user_id, max(day, 0))

    def profile(self, user_id: str, on: date) -> dict[str, Any]:
        """``profile_json`` as a dict, by date (for tests and tools without a server)."""
        return dict(orjson.loads(self.profile_json(user_id, self.day(on))))

    def _build(self, user_id: str, day: int) -> bytes:
        data = profile_data(user_id, self.seed)
        creator = self._creators.get(user_id, _NO_EVENTS)
        rates, changes = growth(self.seed, user_id), creator.changes
        fans = _counter(data["fans"], data["fans"], rates.fans_ppm, day, changes.get("fans", ()))
        follows = _counter(data["follows"], data["follows"], rates.follows_ppm, day,
                           changes.get("follows", ()))  # fmt: skip
        engaged = changes.get("engagement", ())
        liked = _counter(data["liked"], data["liked"], rates.engagement_ppm, day, engaged)
        collected = _counter(data["collected"], data["collected"], rates.engagement_ppm, day,
                             engaged)  # fmt: skip
        posted = _counter(data["ndiscovery"], 1, rates.notes_ppm, day, changes.get("posted", ()))
        data.update(fans=fans, follows=follows, liked=liked, collected=collected, ndiscovery=posted)
        data["note_num_stat"].update(posted=posted, liked=liked, collected=collected)
        counts = {"follows": follows, "fans": fans, "interaction": liked + collected}
        for entry in data["interactions"]:
            entry["count"] = counts[entry["type"]]
        share_v2 = data.get("share_info_v2")
        if share_v2 is not None:
            share_v2["content"] = (
                f"粉丝: {display_count(fans)}\n获赞与收藏: {display_count(liked + collected)}"
            )
        renamed = _latest(creator.renames, day)
        if renamed is not None:
            on, nickname = renamed
            _rename(data, nickname or self._drawn_nickname(user_id, data["nickname"], on))
        described = _latest(creator.bios, day)
        if described is not None:
            on, desc = described
            _set_desc(data, desc or self._drawn_desc(user_id, data["desc"], on))
        return orjson.dumps(data)

    # Drawn from the event's day, not the asked day, so a drawn text stays the same after it.
    def _drawn_nickname(self, user_id: str, old: str, on: int) -> str:
        rng = random.Random(draw(self.seed, f"rename:{on}", user_id))
        words = vocabulary()
        new = "".join(rng.choice(words[k]) for k in ("nickname_heads", "nickname_cores"))
        return new if new != old else f"{new}酱"

    def _drawn_desc(self, user_id: str, old: str, on: int) -> str:
        rng = random.Random(draw(self.seed, f"bio:{on}", user_id))
        new = "\n".join(rng.sample(vocabulary()["desc_lines"], rng.randint(1, 3)))
        return new if new != old else f"{new}\n(更新)"


def _latest(items: tuple[tuple[int, str], ...], day: int) -> tuple[int, str] | None:
    """The last of ``items`` (sorted by day) on or before ``day``."""
    found = None
    for item in items:
        if item[0] <= day:
            found = item
    return found


def _rename(data: dict[str, Any], nickname: str) -> None:
    old = data["nickname"]
    data["nickname"] = nickname
    data["share_info"]["title"] = nickname
    share_v2 = data.get("share_info_v2", {})
    for key in ("title", "ecom_title", "ecom_content"):
        if key in share_v2:
            share_v2[key] = share_v2[key].replace(old, nickname)


def _set_desc(data: dict[str, Any], desc: str) -> None:
    data["desc"] = desc
    data["user_desc_info"].update(desc=desc, desc_with_placeholder=desc)
    data["share_info"]["content"] = desc
