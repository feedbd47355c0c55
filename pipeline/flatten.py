"""Stored responses → the three output tables, as polars frames with the declared schemas.

A pure function: no I/O, no network, no clock.  It never raises on what the API sent; a
profile whose ``data`` cannot be read still gets its row.  Rules:

1. Every frame is built with its table's declared schema (``pipeline.schema``), strictly and in
   schema column order; nothing is inferred, so an empty or all-null batch still has exactly the
   declared columns and dtypes (never the Null dtype).
2. ``user_id`` in all three tables is ``FetchedProfile.user_id``, the id that was asked for, not
   ``data.userid``.  ``fetched_at``, ``request_id`` come from the record; ``raw_json`` is the
   ``data`` bytes decoded as UTF-8, verbatim (invalid UTF-8 bytes become U+FFFD).
3. ``data`` is parsed with orjson.  When orjson refuses it (integers beyond 64 bits, nesting
   deeper than its limit, NaN, lone surrogates), the stdlib parser tries again, leaving digit
   strings longer than 18 characters unparsed (Python refuses to convert more than 4300 digits),
   and lone surrogates in the strings we keep become U+FFFD.  If that fails too (invalid JSON,
   RecursionError) or the value is not an object, the profile row has only ``user_id``,
   ``fetched_at``, ``request_id`` and ``raw_json`` set, and it has no tags or interactions.
4. A value of the wrong type never raises and never changes a column's type; it becomes null.
   String columns take strings, and numbers as their decimal text; Int64 columns take ints,
   integral floats, numeric and display-count strings (``parse_count``), never bools; anything
   outside Int64 is null; Boolean columns take bools, the ints 0/1 and the strings
   "true"/"false" (any case).
5. profiles: ``description`` is ``desc``, else ``user_desc_info.desc``; ``avatar_url`` is
   ``imageb``, else ``images`` ("else" = missing, null, wrong type or empty); ``level`` is
   ``level.number`` (null when ``level`` is not an object); ``notes_*`` come from
   ``note_num_stat``; ``follows``/``fans`` fall back to the count of the first interactions entry
   of that type when the top-level value is missing or unusable (``liked``/``collected`` have no
   such fallback: the interaction count is their sum).  ``profession_tags`` lists, in order, the
   text names of the tags whose ``tag_type`` is "profession" (empty list when none; null only
   for an unreadable ``data``); ``location_tag`` is the first text name of a "location" tag.
6. profile_tags: one row per object entry of ``tags`` (other entries skipped; ``tags`` not a list
   gives no rows); ``position`` is the index in the original list.
7. profile_interactions: one row per object entry of ``interactions`` (same skipping);
   ``count`` is ``parse_count(count)``, ``count_text`` the count as given (text of an int, the
   string itself, null when missing).  ``is_private`` means the user hid the list, not the
   number: the count is kept as given, with the ``toast``.
8. ``parse_count`` turns counts into ints: ints as they are; integral floats; strings after
   stripping spaces, "," thousands separators and one trailing "+", with an optional unit
   (万/W/w ×10⁴, 亿 ×10⁸, 千/K/k ×10³, M/m ×10⁶) and decimals computed exactly ("1.2万" →
   12000).  Bools, non-integral results, NaN, anything outside Int64 and any other text → None.

Speed (orjson.loads is about half of the cost): one pass per profile builds plain tuples, moved
into column lists every few hundred rows; ``raw_json`` goes through a Binary series and polars'
UTF-8 check, and ``profession_tags`` through flat values and offsets, instead of per-row Python
conversions.  Measured alternatives (polars ``str.json_decode`` and pyarrow's JSON reader with an
explicit schema) were slower, and both reject a whole batch for one wrong-typed value.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import polars as pl
import pyarrow as pa

from pipeline.records import FetchedProfile
from pipeline.schema import PROFILE_INTERACTIONS, PROFILE_TAGS, PROFILES, TABLES, Table

__all__ = ["Tables", "flatten", "parse_count"]

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND: Final = dt.timedelta(microseconds=1)
_UNITS: Final = {
    "万": 10_000,
    "W": 10_000,
    "w": 10_000,
    "亿": 100_000_000,
    "千": 1_000,
    "K": 1_000,
    "k": 1_000,
    "M": 1_000_000,
    "m": 1_000_000,
}
_DECIMAL_TEXT: Final = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?", re.ASCII)
# Longer strings cannot be a count that fits Int64 (and int() on them could be slow or refuse).
_MAX_COUNT_TEXT: Final = 40

Json = Any  # a parsed JSON value: dict, list, str, int, float, bool or None
TextOf = Callable[[object], str | None]


@dataclass(frozen=True, slots=True)
class Tables:
    """The three frames of one batch, each with exactly its declared schema."""

    profiles: pl.DataFrame
    profile_tags: pl.DataFrame
    profile_interactions: pl.DataFrame

    def items(self) -> Iterator[tuple[Table, pl.DataFrame]]:
        """(declared table, frame) for each table, in ``schema.TABLES`` order."""
        frames = {
            PROFILES.name: self.profiles,
            PROFILE_TAGS.name: self.profile_tags,
            PROFILE_INTERACTIONS.name: self.profile_interactions,
        }
        for table in TABLES:
            yield table, frames[table.name]


def parse_count(value: object) -> int | None:
    """A count as an int (Int64 range), from an int, integral float or display string; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _INT64_MAX else None
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and _INT64_MIN <= value < 2**63:
            return int(value)
        return None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.isascii() and text.isdigit() and len(text) <= 19:
        whole = int(text)
        return whole if whole <= _INT64_MAX else None
    if not text or len(text) > _MAX_COUNT_TEXT:
        return None
    text = text.replace(",", "")
    if text.endswith("+"):
        text = text[:-1].rstrip()
    multiplier = _UNITS.get(text[-1:])
    if multiplier is not None:
        text = text[:-1].rstrip()
    if not _DECIMAL_TEXT.fullmatch(text):
        return None
    # Integer arithmetic keeps "1.2万" exact (no float rounding, no Decimal precision limit).
    integer_part, _, fraction = text.partition(".")
    scaled = int(integer_part + fraction) * (multiplier or 1)
    result, remainder = divmod(scaled, 10 ** len(fraction))
    if remainder:
        return None
    return result if _INT64_MIN <= result <= _INT64_MAX else None


def flatten(profiles: Sequence[FetchedProfile]) -> Tables:
    """Turn stored responses into the three tables (rules in the module docstring)."""
    rows = _Columns(len(_ROW_COLUMNS))
    tags = _Columns(len(PROFILE_TAGS.columns))
    interactions = _Columns(len(PROFILE_INTERACTIONS.columns))
    profession_names: list[str] = []
    profession_offsets: list[int] = [0]
    unreadable: list[bool] = []
    for profile in profiles:
        doc, text_of = _load(profile.data)
        if type(doc) is dict:
            row = _profile_row(
                profile, doc, text_of, tags.pending, interactions.pending, profession_names
            )
            unreadable.append(False)
        else:
            row = _empty_row(profile)
            unreadable.append(True)
        rows.pending.append(row)
        profession_offsets.append(len(profession_names))
        if len(rows.pending) >= _CHUNK_ROWS:
            rows.flush()
            tags.flush()
            interactions.flush()

    profile_columns: dict[str, list[object] | pl.Series] = dict(
        zip(_ROW_COLUMNS, rows.finish(), strict=True)
    )
    profile_columns["fetched_at"] = pl.Series(profile_columns["fetched_at"], dtype=pl.Int64).cast(
        PROFILES.schema["fetched_at"]
    )
    profile_columns["profession_tags"] = _string_lists(
        profession_names, profession_offsets, unreadable
    )
    profile_columns["raw_json"] = _raw_json([p.data for p in profiles])
    return Tables(
        profiles=_frame(PROFILES, profile_columns),
        profile_tags=_frame(PROFILE_TAGS, tags.named(PROFILE_TAGS)),
        profile_interactions=_frame(PROFILE_INTERACTIONS, interactions.named(PROFILE_INTERACTIONS)),
    )


# Rows wait as tuples, then move into per-column lists in chunks: a batch that kept one tuple
# per row alive would make the garbage collector rescan hundreds of thousands of them.
_CHUNK_ROWS: Final = 256


class _Columns:
    """Column lists filled from row tuples appended to ``pending``."""

    __slots__ = ("columns", "pending")

    def __init__(self, width: int) -> None:
        self.columns: list[list[object]] = [[] for _ in range(width)]
        self.pending: list[tuple[object, ...]] = []

    def flush(self) -> None:
        if self.pending:
            for column, values in zip(self.columns, zip(*self.pending, strict=True), strict=True):
                column.extend(values)
            self.pending.clear()

    def finish(self) -> list[list[object]]:
        self.flush()
        return self.columns

    def named(self, table: Table) -> dict[str, list[object]]:
        return dict(zip(table.column_names, self.finish(), strict=True))


# Profile columns that ``_profile_row`` fills, in the order of its tuple.
_ROW_COLUMNS: Final = tuple(
    name for name in PROFILES.column_names if name not in ("profession_tags", "raw_json")
)


def _profile_row(
    profile: FetchedProfile,
    doc: dict[str, Json],
    text_of: TextOf,
    tag_rows: list[tuple[object, ...]],
    interaction_rows: list[tuple[object, ...]],
    profession_names: list[str],
) -> tuple[object, ...]:
    """One profile's values in ``_ROW_COLUMNS`` order; appends its tags and interactions."""
    user_id = profile.user_id
    get = doc.get

    location_tag: str | None = None
    tags = get("tags")
    if type(tags) is list:
        for position, tag in enumerate(tags):
            if type(tag) is not dict:
                continue
            tag_type = text_of(tag.get("tag_type"))
            name = text_of(tag.get("name"))
            tag_rows.append((user_id, position, tag_type, name, text_of(tag.get("icon"))))
            if name is None:
                continue
            if tag_type == "profession":
                profession_names.append(name)
            elif tag_type == "location" and location_tag is None:
                location_tag = name

    counts_by_type: dict[str | None, int | None] = {}
    interactions = get("interactions")
    if type(interactions) is list:
        for entry in interactions:
            if type(entry) is not dict:
                continue
            kind = text_of(entry.get("type"))
            raw_count = entry.get("count")
            count = parse_count(raw_count)
            counts_by_type.setdefault(kind, count)
            interaction_rows.append(
                (
                    user_id,
                    kind,
                    text_of(entry.get("name")),
                    count,
                    text_of(raw_count),
                    _bool(entry.get("is_private")),
                    text_of(entry.get("toast")),
                )
            )

    description = text_of(get("desc"))
    if not description:
        desc_info = get("user_desc_info")
        if type(desc_info) is dict:
            description = _either(description, text_of(desc_info.get("desc")))
    avatar_url = _either(text_of(get("imageb")), text_of(get("images")))
    level = get("level")
    notes = get("note_num_stat")
    if type(notes) is not dict:
        notes = {}
    follows = _int(get("follows"))
    if follows is None:
        follows = counts_by_type.get("follows")
    fans = _int(get("fans"))
    if fans is None:
        fans = counts_by_type.get("fans")

    return (
        user_id,
        text_of(get("red_id")),
        text_of(get("nickname")),
        description,
        _int(get("gender")),
        text_of(get("ip_location")),
        text_of(get("location")),
        _int(level.get("number")) if type(level) is dict else None,
        _bool(get("red_official_verified")),
        _int(get("red_official_verify_type")),
        follows,
        fans,
        _int(get("liked")),
        _int(get("collected")),
        _int(notes.get("posted")),
        _int(notes.get("liked")),
        _int(notes.get("collected")),
        avatar_url,
        text_of(get("share_link")),
        location_tag,
        _micros(profile.fetched_at),
        profile.request_id,
    )


def _either(first: str | None, second: str | None) -> str | None:
    """``first`` unless it is missing or empty and ``second`` says more."""
    if first or second is None:
        return first
    return second if second or first is None else first


def _empty_row(profile: FetchedProfile) -> tuple[object, ...]:
    values: dict[str, object] = {
        "user_id": profile.user_id,
        "fetched_at": _micros(profile.fetched_at),
        "request_id": profile.request_id,
    }
    return tuple(values.get(name) for name in _ROW_COLUMNS)


def _load(data: bytes) -> tuple[Json, TextOf]:
    """The parsed ``data`` and the text converter its strings need; None when unreadable."""
    try:
        return orjson.loads(data), _text
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data, parse_int=_int_or_digits), _clean_text
    except (ValueError, RecursionError):
        return None, _text


def _int_or_digits(digits: str) -> int | str:
    # Python refuses int() on more than 4300 digits; no count needs more than 19.
    return int(digits) if len(digits) <= 18 else digits


def _text(value: object) -> str | None:
    if type(value) is str:  # the common case first: this runs ~30 times per profile
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # beyond Python's int-to-str digit limit
            return None
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return None


def _clean_text(value: object) -> str | None:
    """``_text`` for the stdlib parser's output, which may hold lone surrogates."""
    text = _text(value)
    if text is None:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _int(value: object) -> int | None:
    if type(value) is int:  # the common case, ahead of parse_count's checks
        return value if _INT64_MIN <= value <= _INT64_MAX else None
    return parse_count(value)


def _bool(value: object) -> bool | None:
    if value is True or value is False:
        return value
    if isinstance(value, int):
        return True if value == 1 else False if value == 0 else None
    if isinstance(value, str):
        word = value.strip().lower()
        return True if word == "true" else False if word == "false" else None
    return None


def _micros(moment: dt.datetime) -> int:
    if moment.tzinfo is None:  # the record promises UTC; a naive value is read as UTC
        moment = moment.replace(tzinfo=dt.UTC)
    return (moment - _EPOCH) // _MICROSECOND


def _frame(table: Table, columns: Mapping[str, list[object] | pl.Series]) -> pl.DataFrame:
    return pl.DataFrame({name: columns[name] for name in table.column_names}, schema=table.schema)


def _string_lists(values: list[str], offsets: list[int], nulls: list[bool]) -> pl.Series:
    """A List(String) series from flat values and row offsets (polars is slow on nested lists)."""
    flat = pl.Series(values, dtype=pl.String).to_arrow()
    lists = pa.LargeListArray.from_arrays(
        pa.array(offsets, pa.int64()), flat, mask=pa.array(nulls, pa.bool_())
    )
    return pl.Series("profession_tags", lists, dtype=PROFILES.schema["profession_tags"])


def _raw_json(blobs: list[bytes]) -> pl.Series:
    try:
        # One vectorized UTF-8 check instead of a Python decode per row.
        return pl.Series(blobs, dtype=pl.Binary).cast(pl.String)
    except pl.exceptions.PolarsError:
        return pl.Series([b.decode("utf-8", "replace") for b in blobs], dtype=pl.String)
