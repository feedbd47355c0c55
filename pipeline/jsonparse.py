"""Reading the API's JSON without losing digits, and (for the client) writing it back.

Rules:
- ``loads`` parses with orjson first.  Bodies orjson refuses (NaN, lone surrogates, over 1024
  levels) go to the stdlib parser, and so do bodies holding a JSON number of
  ``MAX_INT_DIGITS`` digits or more (``LONG_DIGIT_RUN``): orjson turns integers beyond 64 bits
  into floats silently.
- The stdlib parser reads an integer literal of up to ``MAX_INT_DIGITS`` digits (sign apart) as
  an int and keeps a longer one as its text: no Int64 has more digits, and Python refuses
  ``int()`` on more than 4300.  With ``mark_big_ints`` that text carries a marker, which
  ``dumps`` writes back as the bare number, so a re-serialized body keeps every digit the API
  sent.
- ``dumps`` writes compact UTF-8 JSON: orjson for what orjson read, the stdlib otherwise (or
  past the 254 levels orjson writes), with a lone surrogate kept escaped.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any, Final

import orjson

__all__ = ["LONG_DIGIT_RUN", "MAX_INT_DIGITS", "Json", "dumps", "loads"]

MAX_INT_DIGITS: Final = 19  # the digits of an Int64 (2**63 - 1 = 9223372036854775807)
# A JSON number of MAX_INT_DIGITS+ digits (it follows ':', ',' or '['); digits inside strings,
# such as all-digit ids in URLs, do not send a body down the slow path.
LONG_DIGIT_RUN: Final = re.compile(rb"[:,\[]\s*-?[0-9]{%d}" % MAX_INT_DIGITS)

Json = Any  # a parsed JSON value: dict, list, str, int, float, bool or None
_BIG_INT_MARK: Final = "\x00bigint:"
_BIG_INT_IN_JSON: Final = re.compile(r'"\\u0000bigint:(-?[0-9]+)"')


def loads(
    body: bytes,
    *,
    mark_big_ints: bool = False,
    parse_constant: Callable[[str], object] | None = None,
) -> tuple[Json, bool]:
    """(value, whether the stdlib parser read it).

    Raises ValueError when ``body`` is not JSON, RecursionError when it nests deeper than the
    stdlib parser follows.  ``parse_constant`` is the stdlib's (NaN, Infinity, -Infinity).
    """
    if not LONG_DIGIT_RUN.search(body):
        try:
            return orjson.loads(body), False
        except orjson.JSONDecodeError:
            pass
    parse_int = functools.partial(_int_or_text, _BIG_INT_MARK if mark_big_ints else "")
    return json.loads(body, parse_int=parse_int, parse_constant=parse_constant), True


def _int_or_text(mark: str, literal: str) -> int | str:
    return int(literal) if len(literal.lstrip("-")) <= MAX_INT_DIGITS else mark + literal


def dumps(value: Json, *, via_stdlib: bool) -> bytes | None:
    """``value`` (from ``loads``) as compact UTF-8 JSON; None when nested too deep to write."""
    if not via_stdlib:
        try:
            return orjson.dumps(value)
        except orjson.JSONEncodeError:
            pass  # deeper than orjson writes (254 levels): the stdlib may still manage
    try:
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
            return _BIG_INT_IN_JSON.sub(r"\1", text).encode()
        except UnicodeEncodeError:
            # A lone surrogate ("\ud800") cannot be UTF-8: keep it escaped instead.
            return _BIG_INT_IN_JSON.sub(r"\1", json.dumps(value, separators=(",", ":"))).encode()
    except (ValueError, RecursionError):
        return None
