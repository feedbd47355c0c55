"""Reading one stored ``data`` body into a ``ProfileData``: the fields the tables need, typed.

Two readers give the same record (a property test holds them to it):

- ``read_typed``: msgspec decodes straight into the Structs below, skipping the ~60 fields no
  table uses without building Python objects for them.  It accepts only well-typed bodies
  (strings where text is expected, Int64 integers, bools, objects and lists where the API puts
  them) and returns None for anything else.  This is the path real responses take: on a
  4–5 KB profile it takes about half the time of parsing the whole body with orjson.
- ``read_tolerant``: parses the whole body (orjson, then the stdlib parser) and applies the
  conversion rules of ``pipeline.flatten`` field by field, so a wrong-typed value becomes what
  the rules say instead of failing the profile.  It is the reference, and the path for bodies
  ``read_typed`` refuses.

Both keep ``Interaction.count`` as the API sent it: ``flatten`` needs both the number and the
text.  A tag or interaction entry that is not an object is kept as None, so positions hold.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated, Any, Final

import msgspec

from pipeline.jsonparse import Json, loads

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "DescInfo",
    "Interaction",
    "Level",
    "NoteStats",
    "ProfileData",
    "Tag",
    "as_bool",
    "as_int",
    "as_text",
    "parse_count",
    "read_tolerant",
    "read_typed",
]

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
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

Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
TextOf = Callable[[object], str | None]


# gc=False: these hold only strings, numbers and each other, never a cycle, and a batch makes
# tens of thousands of them; the collector need not track them.
class Tag(msgspec.Struct, gc=False):
    tag_type: str | None = None
    name: str | None = None
    icon: str | None = None


class Interaction(msgspec.Struct, gc=False):
    type: str | None = None
    name: str | None = None
    count: Int64 | str | None = None  # as sent; read_tolerant may store any JSON value here
    is_private: bool | None = None
    toast: str | None = None


class Level(msgspec.Struct, gc=False):
    number: Int64 | None = None


class NoteStats(msgspec.Struct, gc=False):
    posted: Int64 | None = None
    liked: Int64 | None = None
    collected: Int64 | None = None


class DescInfo(msgspec.Struct, gc=False):
    desc: str | None = None


class ProfileData(msgspec.Struct, gc=False):
    """The fields of ``data`` the three tables are built from; None where absent."""

    red_id: str | None = None
    nickname: str | None = None
    desc: str | None = None
    user_desc_info: DescInfo | None = None
    gender: Int64 | None = None
    ip_location: str | None = None
    location: str | None = None
    level: Level | None = None
    red_official_verified: bool | None = None
    red_official_verify_type: Int64 | None = None
    follows: Int64 | None = None
    fans: Int64 | None = None
    liked: Int64 | None = None
    collected: Int64 | None = None
    note_num_stat: NoteStats | None = None
    imageb: str | None = None
    images: str | None = None
    share_link: str | None = None
    tags: list[Tag | None] | None = None
    interactions: list[Interaction | None] | None = None


_TYPED: Final = msgspec.json.Decoder(ProfileData)


def read_typed(data: bytes) -> ProfileData | None:
    """``data`` decoded into a ``ProfileData`` when every field it uses is well typed, else None.

    The caller must have checked that ``data`` is valid UTF-8: msgspec does not check the text
    of the fields it skips, and the tolerant reader treats invalid UTF-8 as unreadable.
    """
    try:
        return _TYPED.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None


def read_tolerant(data: bytes) -> ProfileData | None:
    """``data`` read field by field with the conversion rules; None when it is not a JSON object.

    ``pipeline.jsonparse.loads`` parses it: orjson, else the stdlib parser, which leaves
    integers of more than ``MAX_INT_DIGITS`` digits as their text.  Lone surrogates in the
    strings the stdlib parser kept become U+FFFD.
    """
    parsed = _parse(data)
    if parsed is None or type(parsed[0]) is not dict:
        return None
    doc, text_of = parsed
    get = doc.get

    def text(key: str) -> str | None:
        return text_of(get(key))

    level = get("level")
    notes = get("note_num_stat")
    desc_info = get("user_desc_info")
    return ProfileData(
        red_id=text("red_id"),
        nickname=text("nickname"),
        desc=text("desc"),
        user_desc_info=(
            DescInfo(desc=text_of(desc_info.get("desc"))) if type(desc_info) is dict else None
        ),
        gender=as_int(get("gender")),
        ip_location=text("ip_location"),
        location=text("location"),
        level=Level(number=as_int(level.get("number"))) if type(level) is dict else None,
        red_official_verified=as_bool(get("red_official_verified")),
        red_official_verify_type=as_int(get("red_official_verify_type")),
        follows=as_int(get("follows")),
        fans=as_int(get("fans")),
        liked=as_int(get("liked")),
        collected=as_int(get("collected")),
        note_num_stat=(
            NoteStats(
                posted=as_int(notes.get("posted")),
                liked=as_int(notes.get("liked")),
                collected=as_int(notes.get("collected")),
            )
            if type(notes) is dict
            else None
        ),
        imageb=text("imageb"),
        images=text("images"),
        share_link=text("share_link"),
        tags=_entries(get("tags"), lambda tag: _tag(tag, text_of)),
        interactions=_entries(get("interactions"), lambda entry: _interaction(entry, text_of)),
    )


def _parse(data: bytes) -> tuple[Json, TextOf] | None:
    """The parsed body and the text converter its strings need; None when it is not JSON."""
    try:
        doc, via_stdlib = loads(data)
    except (ValueError, RecursionError):
        return None
    return doc, _clean_text if via_stdlib else as_text


def _entries(value: Json, read: Callable[[dict[str, Json]], Any]) -> list[Any] | None:
    if type(value) is not list:
        return None
    return [read(entry) if type(entry) is dict else None for entry in value]


def _tag(tag: dict[str, Json], text_of: TextOf) -> Tag:
    return Tag(
        tag_type=text_of(tag.get("tag_type")),
        name=text_of(tag.get("name")),
        icon=text_of(tag.get("icon")),
    )


def _interaction(entry: dict[str, Json], text_of: TextOf) -> Interaction:
    count = entry.get("count")
    if text_of is _clean_text and type(count) is str:
        count = _clean_text(count)
    return Interaction(
        type=text_of(entry.get("type")),
        name=text_of(entry.get("name")),
        count=count,
        is_private=as_bool(entry.get("is_private")),
        toast=text_of(entry.get("toast")),
    )


def parse_count(value: object) -> int | None:
    """A count as an int (Int64 range), from an int, integral float or display string; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if INT64_MIN <= value <= INT64_MAX else None
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and INT64_MIN <= value < 2**63:
            return int(value)
        return None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.isascii() and text.isdigit() and len(text) <= 19:
        whole = int(text)
        return whole if whole <= INT64_MAX else None
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
    return result if INT64_MIN <= result <= INT64_MAX else None


def as_text(value: object) -> str | None:
    """Text columns: strings as they are, numbers as their decimal text, anything else None."""
    if type(value) is str:  # the common case first
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
    """``as_text`` for the stdlib parser's output, which may hold lone surrogates."""
    text = as_text(value)
    if text is None:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def as_int(value: object) -> int | None:
    """Int64 columns: ints, integral floats, count strings (``parse_count``); never bools."""
    if type(value) is int:  # the common case, ahead of parse_count's checks
        return value if INT64_MIN <= value <= INT64_MAX else None
    return parse_count(value)


def as_bool(value: object) -> bool | None:
    """Boolean columns: bools, the ints 0/1, the strings "true"/"false" in any case."""
    if value is True or value is False:
        return value
    if isinstance(value, int):
        return True if value == 1 else False if value == 0 else None
    if isinstance(value, str):
        word = value.strip().lower()
        return True if word == "true" else False if word == "false" else None
    return None
