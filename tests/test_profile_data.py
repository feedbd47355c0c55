"""pipeline.profile_data: the typed reader takes real responses and always agrees with the
tolerant reader, which applies the conversion rules to anything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.profile_data import (
    DescInfo,
    Interaction,
    Level,
    NoteStats,
    ProfileData,
    Tag,
    read_tolerant,
    read_typed,
)
from tests.strategies import (
    JSON_VALUES,
    MIXED_PROFILE_DATA,
    PROFILE_DATA,
    TYPED_PROFILE_DATA,
    serialize,
)

GOLDEN = Path(__file__).parent / "golden"
SAMPLES = sorted(p.name for p in GOLDEN.glob("*.json"))


def golden_body(name: str) -> bytes:
    envelope = json.loads((GOLDEN / name).read_text(encoding="utf-8"))
    return json.dumps(envelope["data"], ensure_ascii=False).encode()


@pytest.mark.parametrize("name", SAMPLES)
def test_real_responses_take_the_typed_path_and_read_the_same_both_ways(name: str) -> None:
    body = golden_body(name)
    typed = read_typed(body)
    assert typed is not None
    assert typed == read_tolerant(body)
    assert typed.nickname and typed.tags and typed.interactions


def test_typed_reader_fills_nested_records_and_ignores_other_fields() -> None:
    body = serialize(
        {
            "nickname": "小红",
            "fans": 12,
            "level": {"number": 3, "image_link": ""},
            "note_num_stat": {"posted": 1, "liked": 2, "collected": 3},
            "user_desc_info": {"desc": "bio", "desc_at_users": []},
            "tags": [{"tag_type": "profession", "name": "博主"}, None],
            "interactions": [{"type": "fans", "count": "1.2万", "is_private": False}],
            "banner_info": {"image": "x", "bg_color": "927d69"},
        }
    )
    assert read_typed(body) == ProfileData(
        nickname="小红",
        fans=12,
        level=Level(number=3),
        note_num_stat=NoteStats(posted=1, liked=2, collected=3),
        user_desc_info=DescInfo(desc="bio"),
        tags=[Tag(tag_type="profession", name="博主"), None],
        interactions=[Interaction(type="fans", count="1.2万", is_private=False)],
    )


@pytest.mark.parametrize(
    "data",
    [
        {"fans": "1.2万"},  # a display string where the API documents an int
        {"fans": 2**63},  # beyond Int64
        {"fans": 1.0},
        {"red_official_verified": 1},
        {"nickname": 42},
        {"level": 3},
        {"tags": {"name": "x"}},
        {"tags": ["x"]},
        {"interactions": [{"count": 1.5}]},
        {"interactions": [{"count": True}]},
        [1, 2],
        "text",
    ],
    ids=repr,
)
def test_typed_reader_refuses_what_the_rules_must_convert(data: object) -> None:
    assert read_typed(serialize(data)) is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"fans": "1.2万"}, ProfileData(fans=12_000)),
        ({"fans": 2**63}, ProfileData()),
        ({"red_official_verified": 1}, ProfileData(red_official_verified=True)),
        ({"nickname": 42}, ProfileData(nickname="42")),
        ({"level": 3}, ProfileData()),
        ({"tags": ["x", {"name": 7}]}, ProfileData(tags=[None, Tag(name="7")])),
        ({"interactions": [{"count": 1.5}]}, ProfileData(interactions=[Interaction(count=1.5)])),
    ],
    ids=repr,
)
def test_tolerant_reader_converts_field_by_field(data: object, expected: ProfileData) -> None:
    assert read_tolerant(serialize(data)) == expected


@pytest.mark.parametrize("value", [10**18, 2**63 - 1, -(2**63), -(10**18)])
def test_nineteen_digit_int64_values_are_ints_from_both_readers(value: int) -> None:
    """A 19-digit number sends the tolerant reader to the stdlib parser; it must still give
    ints, as the typed reader does, not digit strings."""
    body = serialize({"fans": value, "interactions": [{"type": "fans", "count": value}]})
    expected = ProfileData(fans=value, interactions=[Interaction(type="fans", count=value)])
    assert read_typed(body) == expected
    assert read_tolerant(body) == expected


def test_integers_beyond_64_bits_keep_every_digit_as_text() -> None:
    """orjson would read them as floats ("1.2345678901234568e+29"): the stdlib reads them."""
    digits = "123456789012345678901234567890"
    body = f'{{"nickname": {digits}, "fans": {digits}, "interactions": [{{"count": {digits}}}]}}'
    assert read_typed(body.encode()) is None
    assert read_tolerant(body.encode()) == ProfileData(
        nickname=digits, interactions=[Interaction(count=digits)]
    )


@pytest.mark.parametrize("body", [b"[1]", b"null", b"{", b"", b'{"a": 1} x', b"\xff"])
def test_bodies_that_are_not_an_object_read_as_none_both_ways(body: bytes) -> None:
    assert read_typed(body) is None
    assert read_tolerant(body) is None


def test_nesting_too_deep_is_refused_both_ways_without_raising() -> None:
    body = b'{"extra":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert read_typed(body) is None
    assert read_tolerant(body) is None


def test_lone_surrogates_leave_the_typed_path_and_become_replacement_characters() -> None:
    body = b'{"nickname": "a\\ud800b", "interactions": [{"count": "\\udfff1"}]}'
    assert read_typed(body) is None
    assert read_tolerant(body) == ProfileData(
        nickname="a\ufffdb", interactions=[Interaction(count="\ufffd1")]
    )


def test_typed_reader_does_not_check_the_text_it_skips() -> None:
    """Why flatten only uses it on batches it has checked to be UTF-8."""
    body = b'{"nickname": "ok", "extra": "\xff"}'
    assert read_typed(body) == ProfileData(nickname="ok")
    assert read_tolerant(body) is None


def test_records_hold_no_cycles_so_the_collector_need_not_track_them() -> None:
    for kind in (ProfileData, Tag, Interaction, Level, NoteStats, DescInfo):
        assert kind.__struct_config__.gc is False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TYPED_PROFILE_DATA)
# 19-digit integers send the tolerant reader to the stdlib parser: found by this test in CI.
@example({"interactions": [{"count": 10**18}]})
@example({"fans": -(2**63), "interactions": [{"count": 2**63 - 1}]})
def test_any_well_typed_body_takes_the_typed_path_and_reads_the_same(data: object) -> None:
    body = serialize(data)
    typed = read_typed(body)
    assert typed is not None
    assert typed == read_tolerant(body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MIXED_PROFILE_DATA | PROFILE_DATA | JSON_VALUES)
def test_the_typed_reader_refuses_or_agrees_with_the_tolerant_one(data: object) -> None:
    body = serialize(data)
    typed = read_typed(body)
    assert typed is None or typed == read_tolerant(body)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_raise(body: bytes) -> None:
    typed = read_typed(body)
    tolerant = read_tolerant(body)
    assert typed is None or tolerant is None or typed == tolerant
