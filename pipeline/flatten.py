"""Stored responses → one frame per table of ``schema.FETCHED_TABLES``, with the declared schemas.

A pure function: no I/O, no network, no clock.  It never raises on what the API sent; a
profile whose ``data`` cannot be read still gets its row.  Rules:

1. Every frame is built with its table's declared schema (``pipeline.schema``), strictly and in
   schema column order; nothing is inferred, so an empty or all-null batch still has exactly the
   declared columns and dtypes (never the Null dtype).
2. ``user_id`` in all three tables is ``FetchedProfile.user_id``, the id that was asked for, not
   ``data.userid``.  ``fetched_at``, ``request_id`` come from the record; ``raw_json`` is the
   ``data`` bytes decoded as UTF-8, verbatim (invalid UTF-8 bytes become U+FFFD).
3. ``data`` is read by ``pipeline.profile_data``: a typed msgspec decode for well-typed bodies,
   else orjson, else (or when the body holds a number of 19+ digits, which orjson would turn
   into a float) the stdlib parser, which leaves integers of more than 19 digits as their text
   and turns lone surrogates in the strings kept into U+FFFD.  If none can read it
   (invalid JSON or UTF-8, nesting too deep) or the value is not an object, the profile row has
   only ``user_id``, ``fetched_at``, ``request_id`` and ``raw_json`` set, and it has no tags or
   interactions.
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

Speed: the typed decode skips the fields no table uses and leaves little per-field work in
Python; one pass per profile then builds plain tuples, moved into column lists every few hundred
rows; ``raw_json`` goes through a Binary series and polars' UTF-8 check, and ``profession_tags``
through flat values and offsets, instead of per-row Python conversions.  Measured alternatives
(polars ``str.json_decode`` and pyarrow's JSON reader with an explicit schema) were slower than
orjson, and both reject a whole batch for one wrong-typed value; the typed decode refuses only
the one body, which then takes the tolerant reader.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Final

import polars as pl
import pyarrow as pa

from pipeline.profile_data import (
    INT64_MAX,
    INT64_MIN,
    ProfileData,
    as_text,
    parse_count,
    read_tolerant,
    read_typed,
)
from pipeline.records import FetchedProfile
from pipeline.schema import FETCHED_TABLES, PROFILE_INTERACTIONS, PROFILE_TAGS, PROFILES, Table
from pipeline.timestamps import to_epoch_us

__all__ = ["Tables", "flatten", "parse_count"]

_UNREADABLE: Final = ProfileData()


class Tables(Mapping[str, pl.DataFrame]):
    """One batch's frames by table name: exactly ``schema.FETCHED_TABLES``, each with its
    declared schema (checked here, so a table declared without a builder fails at once)."""

    __slots__ = ("_frames",)

    def __init__(self, frames: Mapping[str, pl.DataFrame]) -> None:
        missing = [t.name for t in FETCHED_TABLES if t.name not in frames]
        unknown = sorted(set(frames) - {t.name for t in FETCHED_TABLES})
        if missing or unknown:
            raise ValueError(f"flatten built no frame for {missing}, or one for unknown {unknown}")
        for table in FETCHED_TABLES:
            if frames[table.name].schema != table.schema:
                raise ValueError(f"the {table.name} frame does not have the declared schema")
        self._frames = {t.name: frames[t.name] for t in FETCHED_TABLES}

    def __getitem__(self, name: str) -> pl.DataFrame:
        return self._frames[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._frames)

    def __len__(self) -> int:
        return len(self._frames)

    def by_table(self) -> Iterator[tuple[Table, pl.DataFrame]]:
        """(declared table, frame) for each table, in ``schema.FETCHED_TABLES`` order."""
        for table in FETCHED_TABLES:
            yield table, self._frames[table.name]


def flatten(profiles: Sequence[FetchedProfile]) -> Tables:
    """Turn stored responses into the three tables (rules in the module docstring)."""
    raw_json, all_utf8 = _raw_json([p.data_json for p in profiles])
    rows = _Columns(len(_ROW_COLUMNS))
    tags = _Columns(len(PROFILE_TAGS.columns))
    interactions = _Columns(len(PROFILE_INTERACTIONS.columns))
    profession_names: list[str] = []
    profession_offsets: list[int] = [0]
    unreadable: list[bool] = []
    for profile in profiles:
        # read_typed skips text it does not keep unchecked: only on a batch known to be UTF-8.
        data = read_typed(profile.data_json) if all_utf8 else None
        if data is None:
            data = read_tolerant(profile.data_json)
        unreadable.append(data is None)
        rows.pending.append(
            _profile_row(
                profile,
                data or _UNREADABLE,
                tags.pending,
                interactions.pending,
                profession_names,
            )
        )
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
    profile_columns["raw_json"] = raw_json
    return Tables(
        {
            PROFILES.name: _frame(PROFILES, profile_columns),
            PROFILE_TAGS.name: _frame(PROFILE_TAGS, tags.named(PROFILE_TAGS)),
            PROFILE_INTERACTIONS.name: _frame(
                PROFILE_INTERACTIONS, interactions.named(PROFILE_INTERACTIONS)
            ),
        }
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
    data: ProfileData,
    tag_rows: list[tuple[object, ...]],
    interaction_rows: list[tuple[object, ...]],
    profession_names: list[str],
) -> tuple[object, ...]:
    """One profile's values in ``_ROW_COLUMNS`` order; appends its tags and interactions."""
    user_id = profile.user_id

    location_tag: str | None = None
    if data.tags is not None:
        for position, tag in enumerate(data.tags):
            if tag is None:
                continue
            name = tag.name
            tag_rows.append((user_id, position, tag.tag_type, name, tag.icon))
            if name is None:
                continue
            if tag.tag_type == "profession":
                profession_names.append(name)
            elif tag.tag_type == "location" and location_tag is None:
                location_tag = name

    follows = data.follows
    fans = data.fans
    if data.interactions is not None:
        seen: set[str | None] = set()
        for entry in data.interactions:
            if entry is None:
                continue
            kind = entry.type
            raw_count = entry.count
            count: int | None
            count_text: str | None
            if type(raw_count) is int and INT64_MIN <= raw_count <= INT64_MAX:
                count, count_text = raw_count, str(raw_count)  # what the API sends, inlined
            else:
                count, count_text = parse_count(raw_count), as_text(raw_count)
            if kind not in seen:  # the first entry of a type is the fallback for its column
                seen.add(kind)
                if kind == "follows" and follows is None:
                    follows = count
                elif kind == "fans" and fans is None:
                    fans = count
            interaction_rows.append(
                (user_id, kind, entry.name, count, count_text, entry.is_private, entry.toast)
            )

    description = data.desc
    if not description and data.user_desc_info is not None:
        description = _either(description, data.user_desc_info.desc)
    level = data.level
    notes = data.note_num_stat
    return (
        user_id,
        data.red_id,
        data.nickname,
        description,
        data.gender,
        data.ip_location,
        data.location,
        level.number if level is not None else None,
        data.red_official_verified,
        data.red_official_verify_type,
        follows,
        fans,
        data.liked,
        data.collected,
        notes.posted if notes is not None else None,
        notes.liked if notes is not None else None,
        notes.collected if notes is not None else None,
        _either(data.imageb, data.images),
        data.share_link,
        location_tag,
        to_epoch_us(profile.fetched_at),
        profile.request_id,
    )


def _either(first: str | None, second: str | None) -> str | None:
    """``first`` unless it is missing or empty and ``second`` says more."""
    if first or second is None:
        return first
    return second if second or first is None else first


def _frame(table: Table, columns: Mapping[str, list[object] | pl.Series]) -> pl.DataFrame:
    return pl.DataFrame({name: columns[name] for name in table.column_names}, schema=table.schema)


def _string_lists(values: list[str], offsets: list[int], nulls: list[bool]) -> pl.Series:
    """A List(String) series from flat values and row offsets (polars is slow on nested lists)."""
    flat = pl.Series(values, dtype=pl.String).to_arrow()
    lists = pa.LargeListArray.from_arrays(
        pa.array(offsets, pa.int64()), flat, mask=pa.array(nulls, pa.bool_())
    )
    return pl.Series("profession_tags", lists, dtype=PROFILES.schema["profession_tags"])


def _raw_json(blobs: list[bytes]) -> tuple[pl.Series, bool]:
    """The ``raw_json`` column, and whether every body was valid UTF-8."""
    try:
        # One vectorized UTF-8 check instead of a Python decode per row.
        return pl.Series(blobs, dtype=pl.Binary).cast(pl.String), True
    except pl.exceptions.PolarsError:
        return pl.Series([b.decode("utf-8", "replace") for b in blobs], dtype=pl.String), False
