"""pipeline.jsonparse: big integers keep every digit, and what orjson cannot hold or write takes
the stdlib, as the client reads and re-serializes an answer's ``data``."""

from __future__ import annotations

import json
from typing import Any

from pipeline.jsonparse import dumps, loads

USER = "5a901362e8ac2b36c99bce33"


def reserialized_data(body: bytes) -> bytes:
    """The ``data`` of the envelope ``body``, read and written back as the client does."""
    envelope, via_stdlib = loads(body, mark_big_ints=True)
    data = dumps(envelope["data"], via_stdlib=via_stdlib)
    assert data is not None
    return data


def test_data_deeper_than_orjson_writes_is_kept_through_the_stdlib() -> None:
    nested: Any = "leaf"
    for _ in range(300):
        nested = [nested]
    data = {"userid": USER, "x": nested}
    written = reserialized_data(json.dumps({"code": 0, "message": "ok", "data": data}).encode())
    assert json.loads(written) == data


def test_integers_over_19_digits_are_kept_exactly_as_numbers() -> None:
    """raw_json must be what the API sent: a 5000-digit number stays a number, digit for digit."""
    huge = "9" * 5000
    body = (
        b'{"code":0,"data":{"userid":"' + USER.encode() + b'","fans":123456789012345678901,'
        b'"liked":' + huge.encode() + b',"follows":-1234567890123456789,'
        b'"collected":123456789012345678,"nickname":"\xe5\xb0\x8f\xe9\xa1\xbe"}}'
    )
    written = reserialized_data(body)
    assert b'"fans":123456789012345678901,' in written
    assert b'"liked":' + huge.encode() + b"," in written
    data = json.loads(written, parse_int=lambda t: int(t) if len(t) < 4000 else t)
    assert data["fans"] == 123456789012345678901
    assert data["liked"] == huge
    assert data["follows"] == -1234567890123456789
    assert data["collected"] == 123456789012345678
    assert data["nickname"] == "小顾"
    assert "小顾".encode() in written  # not \\u-escaped


def test_a_lone_surrogate_is_kept_escaped_in_valid_utf8() -> None:
    body = b'{"code":0,"data":{"userid":"' + USER.encode() + b'","nickname":"a\\ud800b"}}'
    written = reserialized_data(body)
    written.decode("utf-8")  # valid UTF-8
    assert json.loads(written)["nickname"] == "a\ud800b"
