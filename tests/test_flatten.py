"""pipeline.flatten: stored responses → three frames with the declared schemas, never raising."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import flatten as flatten_module
from pipeline.flatten import Tables, flatten, parse_count
from pipeline.records import FetchedProfile
from pipeline.schema import FETCHED_TABLES, PROFILE_INTERACTIONS, PROFILE_TAGS, PROFILES
from tests.strategies import JSON_VALUES, MIXED_PROFILE_DATA, PROFILE_DATA, serialize

GOLDEN = Path(__file__).parent / "golden"
SEED = "seed-get-user-v4-response.json"
V4_EXAMPLE = "justoneapi-openapi-get-user-v4-example.json"
V3_EXAMPLE = "justoneapi-openapi-get-user-v3-example.json"
USER_ID = "5a901362e8ac2b36c99bce33"
FETCHED_AT = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def golden_data(name: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((GOLDEN / name).read_bytes())["data"]
    return data


def profile(
    data: object, user_id: str = USER_ID, request_id: str | None = "req-1"
) -> FetchedProfile:
    return FetchedProfile(user_id, orjson.dumps(data), request_id, FETCHED_AT)


def raw_profile(data: bytes, user_id: str = USER_ID) -> FetchedProfile:
    return FetchedProfile(user_id, data, "req-1", FETCHED_AT)


def only_row(tables: Tables) -> dict[str, Any]:
    assert tables["profiles"].height == 1
    return tables["profiles"].row(0, named=True)


def assert_declared_schemas(tables: Tables) -> None:
    for table, frame in tables.by_table():
        assert frame.schema == table.schema, table.name
        assert pl.Null() not in frame.schema.dtypes(), table.name


SEED_DESC = "🧡一个117平横厅🏠\n🐰一个2岁的儿子米兜兜\n🌈一位美术老师的有趣生活\n🌻guting1008_"
SEED_ROW: dict[str, Any] = {
    "user_id": USER_ID,
    "red_id": "guting1008",
    "nickname": "小顾小小家",
    "description": SEED_DESC,
    "gender": 1,
    "ip_location": "广东",
    "location": "中国 广东 东莞",
    "level": 0,
    "red_official_verified": False,
    "red_official_verify_type": 0,
    "follows": 265,
    "fans": 8456,
    "liked": 49321,
    "collected": 26386,
    "notes_posted": 276,
    "notes_liked": 49321,
    "notes_collected": 26386,
    "avatar_url": "https://sns-avatar-qc.xhscdn.com/avatar/1040g2jo31gjkvenfjs004a1nb69m5jhjrrsug08"
    "?imageView2/2/w/540/format/webp",
    "share_link": "https://www.xiaohongshu.com/user/profile/5a901362e8ac2b36c99bce33"
    "?xsec_token=YB9xJDlvo14NLtpZy7E8xH3MtMC3QTjxPTP8Kz3t-EYBY=&xsec_source=app_share",
    "profession_tags": ["家居博主", "母婴博主"],
    "location_tag": "广东东莞",
    "fetched_at": FETCHED_AT,
    "request_id": "req-1",
}
SEED_TAGS = [
    (USER_ID, 0, "info", None, "http://ci.xiaohongshu.com/icons/user/gender-female-v1.png"),
    (USER_ID, 1, "location", "广东东莞", None),
    (USER_ID, 2, "profession", "家居博主", None),
    (USER_ID, 3, "profession", "母婴博主", None),
]
SEED_INTERACTIONS = [
    (USER_ID, "follows", "关注", 265, "265", False, ""),
    (USER_ID, "fans", "粉丝", 8456, "8456", False, ""),
    (USER_ID, "interaction", "获赞与收藏", 75707, "75707", False, ""),
]

V3_USER_ID = "5c2f338a000000000701e1c6"
V3_ROW: dict[str, Any] = {
    "user_id": V3_USER_ID,
    "red_id": "531915550",
    "nickname": "是六金呀～",
    "description": "162/110\nhi看@星星泡面 置顶",
    "gender": 1,
    "ip_location": "广东",
    "location": "",
    "level": 0,
    "red_official_verified": False,
    "red_official_verify_type": 0,
    "follows": 29,
    "fans": 21263,
    "liked": 65447,
    "collected": 15725,
    "notes_posted": 270,
    "notes_liked": 65447,
    "notes_collected": 15725,
    "avatar_url": "https://sns-avatar-qc.xhscdn.com/avatar/63d36aae9a0594dbc226012e.jpg"
    "?imageView2/2/w/540/format/webp",
    "share_link": "https://www.xiaohongshu.com/user/profile/5c2f338a000000000701e1c6"
    "?xsec_token=YBwVNAUpVNP86CtEIG-rI9HfjY8EpMRxv24xns7CuwW80=&xsec_source=app_share",
    "profession_tags": [],
    "location_tag": None,
    "fetched_at": FETCHED_AT,
    "request_id": "req-1",
}
V3_TAGS = [
    (V3_USER_ID, 0, "info", "28岁", "http://ci.xiaohongshu.com/icons/user/gender-female-v1.png"),
]
V3_INTERACTIONS = [
    (V3_USER_ID, "follows", "关注", 29, "29", True, "该用户已设置关注列表不可见"),
    (V3_USER_ID, "fans", "粉丝", 21263, "21263", True, "该用户已设置粉丝列表不可见"),
    (V3_USER_ID, "interaction", "获赞与收藏", 81172, "81172", False, ""),
]

GOLDEN_CASES = [
    pytest.param(SEED, USER_ID, SEED_ROW, SEED_TAGS, SEED_INTERACTIONS, id="seed-v4"),
    pytest.param(V4_EXAMPLE, USER_ID, SEED_ROW, SEED_TAGS, SEED_INTERACTIONS, id="openapi-v4"),
    pytest.param(V3_EXAMPLE, V3_USER_ID, V3_ROW, V3_TAGS, V3_INTERACTIONS, id="openapi-v3"),
]


# --- golden cases ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "user_id", "row", "tags", "interactions"), GOLDEN_CASES)
def test_golden_profile_row_has_every_column_exactly(
    name: str, user_id: str, row: dict[str, Any], tags: object, interactions: object
) -> None:
    fetched = profile(golden_data(name), user_id=user_id)
    actual = only_row(flatten([fetched]))
    expected = {**row, "raw_json": fetched.data_json.decode()}
    assert list(actual) == PROFILES.column_names
    assert actual == expected


@pytest.mark.parametrize(("name", "user_id", "row", "tags", "interactions"), GOLDEN_CASES)
def test_golden_tags_and_interactions_tables_are_complete(
    name: str,
    user_id: str,
    row: object,
    tags: list[tuple[object, ...]],
    interactions: list[tuple[object, ...]],
) -> None:
    tables = flatten([profile(golden_data(name), user_id=user_id)])
    assert tables["profile_tags"].rows() == tags
    assert tables["profile_interactions"].rows() == interactions
    assert_declared_schemas(tables)


@pytest.mark.parametrize("name", [SEED, V4_EXAMPLE, V3_EXAMPLE])
def test_raw_json_round_trips_to_the_same_data(name: str) -> None:
    data = golden_data(name)
    raw = only_row(flatten([profile(data)]))["raw_json"]
    assert orjson.loads(raw) == data


@pytest.mark.parametrize("name", [SEED, V4_EXAMPLE, V3_EXAMPLE])
def test_golden_samples_meet_the_documented_data_quality_facts(name: str) -> None:
    tables = flatten([profile(golden_data(name))])
    row = only_row(tables)
    counts = dict(tables["profile_interactions"].select("type", "count").iter_rows())
    assert counts["interaction"] == row["liked"] + row["collected"]
    assert counts["fans"] == row["fans"]
    assert counts["follows"] == row["follows"]
    assert orjson.loads(row["raw_json"])["ndiscovery"] == row["notes_posted"]
    assert row["liked"] == row["notes_liked"]
    assert row["collected"] == row["notes_collected"]


def test_user_id_is_the_requested_id_not_data_userid() -> None:
    tables = flatten([profile(golden_data(SEED), user_id="0123456789abcdef01234567")])
    assert tables["profiles"]["user_id"].to_list() == ["0123456789abcdef01234567"]
    assert set(tables["profile_tags"]["user_id"]) == {"0123456789abcdef01234567"}
    assert set(tables["profile_interactions"]["user_id"]) == {"0123456789abcdef01234567"}


def test_rows_keep_input_order_and_each_profile_its_own_tags() -> None:
    seed, v3 = golden_data(SEED), golden_data(V3_EXAMPLE)
    tables = flatten([profile(seed, "a" * 24), profile(v3, "b" * 24), profile(seed, "c" * 24)])
    assert tables["profiles"]["user_id"].to_list() == ["a" * 24, "b" * 24, "c" * 24]
    assert tables["profiles"]["fans"].to_list() == [8456, 21263, 8456]
    tag_owners = tables["profile_tags"]["user_id"].to_list()
    assert tag_owners == ["a" * 24] * 4 + ["b" * 24] + ["c" * 24] * 4
    assert tables["profile_tags"]["position"].to_list() == [0, 1, 2, 3, 0, 0, 1, 2, 3]
    assert tables["profile_interactions"]["user_id"].to_list() == [u * 24 for u in "aaabbbccc"]


def test_fetched_at_is_utc_to_the_microsecond_and_request_id_may_be_null() -> None:
    beijing = dt.timezone(dt.timedelta(hours=8))
    local = dt.datetime(2026, 1, 2, 11, 4, 5, 678901, tzinfo=beijing)
    fetched = FetchedProfile(USER_ID, b"{}", None, local)
    row = only_row(flatten([fetched]))
    assert row["fetched_at"] == FETCHED_AT
    assert row["request_id"] is None


# --- every field to its own column ----------------------------------------------------------

# Each source field a value no other field has, so a builder that puts a value in another
# column's slot (liked and notes_liked hold equal values in every sample) cannot pass.
SENTINEL_DATA: dict[str, Any] = {
    "userid": USER_ID,
    "red_id": "sentinel-red-id",
    "nickname": "sentinel-nickname",
    "desc": "sentinel-desc",
    "user_desc_info": {"desc": "sentinel-desc-info"},
    "gender": 2,
    "ip_location": "sentinel-ip-location",
    "location": "sentinel-location",
    "level": {"number": 11},
    "red_official_verified": True,
    "red_official_verify_type": 12,
    "follows": 13,
    "fans": 14,
    "liked": 15,
    "collected": 16,
    "note_num_stat": {"posted": 17, "liked": 18, "collected": 19},
    "imageb": "https://sentinel/imageb",
    "images": "https://sentinel/images",
    "share_link": "https://sentinel/share",
    "tags": [
        {"tag_type": "profession", "name": "sentinel-profession-1", "icon": "https://sentinel/i1"},
        {"tag_type": "location", "name": "sentinel-location-tag"},
        {"tag_type": "profession", "name": "sentinel-profession-2"},
    ],
    "interactions": [
        {
            "type": "sentinel-type",
            "name": "sentinel-name",
            "count": "2.2万",
            "is_private": True,
            "toast": "sentinel-toast",
        }
    ],
}
SENTINEL_PROFILE_ROW: dict[str, Any] = {
    "user_id": USER_ID,
    "red_id": "sentinel-red-id",
    "nickname": "sentinel-nickname",
    "description": "sentinel-desc",
    "gender": 2,
    "ip_location": "sentinel-ip-location",
    "location": "sentinel-location",
    "level": 11,
    "red_official_verified": True,
    "red_official_verify_type": 12,
    "follows": 13,
    "fans": 14,
    "liked": 15,
    "collected": 16,
    "notes_posted": 17,
    "notes_liked": 18,
    "notes_collected": 19,
    "avatar_url": "https://sentinel/imageb",
    "share_link": "https://sentinel/share",
    "profession_tags": ["sentinel-profession-1", "sentinel-profession-2"],
    "location_tag": "sentinel-location-tag",
    "fetched_at": FETCHED_AT,
    "request_id": "sentinel-request-id",
    "raw_json": orjson.dumps(SENTINEL_DATA).decode(),
}
SENTINEL_TAG_ROWS = [
    (USER_ID, 0, "profession", "sentinel-profession-1", "https://sentinel/i1"),
    (USER_ID, 1, "location", "sentinel-location-tag", None),
    (USER_ID, 2, "profession", "sentinel-profession-2", None),
]
SENTINEL_INTERACTION_ROW = (
    USER_ID, "sentinel-type", "sentinel-name", 22000, "2.2万", True, "sentinel-toast"
)  # fmt: skip


def test_sentinel_values_are_distinct_so_any_swap_of_two_columns_shows() -> None:
    assert list(SENTINEL_PROFILE_ROW) == PROFILES.column_names
    for row in (list(SENTINEL_PROFILE_ROW.values()), list(SENTINEL_INTERACTION_ROW)):
        values = [repr(v) for v in row]  # repr: True and 1 would compare equal
        assert len(set(values)) == len(values)
    assert len(SENTINEL_INTERACTION_ROW) == len(PROFILE_INTERACTIONS.columns)
    assert all(len(row) == len(PROFILE_TAGS.columns) for row in SENTINEL_TAG_ROWS)


@pytest.mark.parametrize("reader", ["typed", "tolerant"])
def test_every_source_field_lands_in_its_own_column(
    reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if reader == "tolerant":
        monkeypatch.setattr(flatten_module, "read_typed", lambda _data: None)
    tables = flatten([profile(SENTINEL_DATA, request_id="sentinel-request-id")])
    assert only_row(tables) == SENTINEL_PROFILE_ROW
    assert tables["profile_tags"].rows() == SENTINEL_TAG_ROWS
    assert tables["profile_interactions"].rows() == [SENTINEL_INTERACTION_ROW]


# --- parse_count ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (8456, 8456),
        (0, 0),
        (-5, -5),
        (8456.0, 8456),
        ("8456", 8456),
        (" 8456 ", 8456),
        ("1,234", 1234),
        ("1,234,567", 1234567),
        ("1.2万", 12000),
        ("1万+", 10000),
        ("10万+", 100000),
        ("1.5亿", 150000000),
        ("1千+", 1000),
        ("32.4K", 32400),
        ("32.4k", 32400),
        ("1.2w", 12000),
        ("3W", 30000),
        ("2.5M", 2500000),
        ("-1.5万", -15000),
        ("0.5K", 500),
        ("007", 7),
        ("1.2 万", 12000),
        ("10万 +", 100000),
        ("9223372036854775807", 2**63 - 1),
        (2**63 - 1, 2**63 - 1),
        (-(2**63), -(2**63)),
    ],
)
def test_parse_count_accepts_numbers_and_display_strings(value: object, expected: int) -> None:
    assert parse_count(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "abc",
        "",
        "   ",
        "-",
        "+",
        "万",
        "1..2万",
        "1.2万万",
        "1e3",
        "0x10",
        "1.5",
        "1.23456万",
        "1.0000000000000000000000000001",  # beyond Decimal's default 28 digits: still not whole
        "١٢",  # Arabic-Indic digits: not a count the app shows
        "²",
        "9223372036854775808",
        "99999999999亿",
        pytest.param("1" * 5000, id="text-of-5000-digits"),
        None,
        True,
        False,
        1.5,
        math.nan,
        math.inf,
        -math.inf,
        1e30,
        2**63,
        -(2**63) - 1,
        pytest.param(10**5000, id="int-of-5000-digits"),
        [1],
        {"count": 1},
    ],
)
def test_parse_count_rejects_anything_else(value: object) -> None:
    assert parse_count(value) is None


# --- schemas --------------------------------------------------------------------------------


def test_empty_input_gives_empty_frames_with_the_declared_schemas() -> None:
    tables = flatten([])
    assert_declared_schemas(tables)
    assert [frame.height for _, frame in tables.by_table()] == [0, 0, 0]


def test_by_table_yields_each_declared_table_with_its_frame_in_order() -> None:
    tables = flatten([profile(golden_data(SEED))])
    assert [(table, frame) for table, frame in tables.by_table()] == [
        (PROFILES, tables["profiles"]),
        (PROFILE_TAGS, tables["profile_tags"]),
        (PROFILE_INTERACTIONS, tables["profile_interactions"]),
    ]
    assert [table for table, _ in tables.by_table()] == list(FETCHED_TABLES)


@pytest.mark.parametrize("data", [b"null", b"{}", b'{"tags":[],"interactions":[]}'])
def test_all_null_batch_keeps_the_declared_schemas(data: bytes) -> None:
    tables = flatten([raw_profile(data), raw_profile(data, user_id="f" * 24)])
    assert_declared_schemas(tables)
    assert tables["profiles"].height == 2
    assert tables["profiles"]["nickname"].to_list() == [None, None]
    assert tables["profiles"]["user_id"].to_list() == [USER_ID, "f" * 24]


def test_column_null_in_every_row_keeps_its_declared_type() -> None:
    data = golden_data(SEED)
    for key in ("nickname", "fans", "red_official_verified", "tags", "level"):
        del data[key]
    data["interactions"] = [{"type": "fans"}, {"type": "follows"}]
    tables = flatten([profile(data, user_id=f"{i:024x}") for i in range(3)])
    assert_declared_schemas(tables)
    for column in ("nickname", "level", "red_official_verified", "location_tag", "fans"):
        assert tables["profiles"][column].null_count() == 3, column
    assert tables["profiles"]["profession_tags"].to_list() == [[], [], []]
    assert tables["profile_interactions"]["count"].null_count() == 6
    assert tables["profile_interactions"]["is_private"].null_count() == 6
    assert tables["profile_interactions"]["toast"].null_count() == 6


# --- hostile and wrong-typed input ----------------------------------------------------------


def unreadable_row(user_id: str, raw_json: str) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(PROFILES.column_names)
    row.update(user_id=user_id, fetched_at=FETCHED_AT, request_id="req-1", raw_json=raw_json)
    return row


@pytest.mark.parametrize(
    "data",
    [
        b"null",
        b"[]",
        b'[{"nickname": "x"}]',
        b'"x"',
        b"42",
        b'{"nickname": "x"',
        b"",
        b"not json",
        b'{"nickname": "x", "deep": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    ],
    ids=["null", "empty-list", "list", "string", "number", "truncated", "empty", "text", "deep"],
)
def test_data_that_is_not_an_object_gives_a_row_with_only_the_record_fields(data: bytes) -> None:
    tables = flatten([raw_profile(data)])
    assert only_row(tables) == unreadable_row(USER_ID, data.decode())
    assert tables["profile_tags"].height == 0
    assert tables["profile_interactions"].height == 0
    assert_declared_schemas(tables)


def test_invalid_utf8_gives_a_row_and_raw_json_with_replacement_characters() -> None:
    data = b'{"nickname": "\xff\xfe"}'
    tables = flatten([raw_profile(data), profile(golden_data(SEED), user_id="b" * 24)])
    assert tables["profiles"].row(0, named=True) == unreadable_row(
        USER_ID, '{"nickname": "\ufffd\ufffd"}'
    )
    assert tables["profiles"]["raw_json"][1] == profile(golden_data(SEED)).data_json.decode()
    assert tables["profiles"]["fans"].to_list() == [None, 8456]


def test_invalid_utf8_in_a_field_no_table_uses_still_makes_the_profile_unreadable() -> None:
    """The typed reader skips that text unchecked; flatten must not let it through."""
    data = b'{"nickname": "ok", "fans": 3, "extra": "\xff"}'
    tables = flatten([raw_profile(data), profile(golden_data(SEED), user_id="b" * 24)])
    assert tables["profiles"].row(0, named=True) == unreadable_row(
        USER_ID, '{"nickname": "ok", "fans": 3, "extra": "\ufffd"}'
    )
    assert tables["profiles"]["fans"].to_list() == [None, 8456]


def test_fans_as_text_falls_back_to_the_interactions_entry() -> None:
    data = golden_data(SEED) | {"fans": "abc"}
    row = only_row(flatten([profile(data)]))
    assert row == SEED_ROW | {"raw_json": orjson.dumps(data).decode()}


def test_unusable_counts_without_an_interactions_entry_are_null() -> None:
    data = golden_data(SEED) | {"fans": "abc", "follows": [1], "liked": {}, "interactions": None}
    tables = flatten([profile(data)])
    row = only_row(tables)
    assert (row["fans"], row["follows"], row["liked"], row["collected"]) == (
        None,
        None,
        None,
        26386,
    )
    assert tables["profile_interactions"].height == 0


def test_tags_as_object_gives_no_tags() -> None:
    tables = flatten([profile(golden_data(SEED) | {"tags": {}})])
    row = only_row(tables)
    assert (row["profession_tags"], row["location_tag"]) == ([], None)
    assert tables["profile_tags"].height == 0
    assert_declared_schemas(tables)


def test_non_object_entries_are_skipped_but_positions_stay_those_of_the_list() -> None:
    data = {
        "tags": [
            "profession",
            {"tag_type": "profession", "name": "A"},
            None,
            {"tag_type": "profession"},
            {"tag_type": "location", "name": 7},
            {"tag_type": "profession", "name": "B", "icon": {"url": "x"}},
            {"tag_type": ["location"], "name": "C"},
            {"tag_type": "location", "name": "D"},
        ],
        "interactions": [[], {"type": "fans", "count": "1.2万", "is_private": "true"}, 3],
    }
    tables = flatten([profile(data)])
    assert tables["profile_tags"].rows() == [
        (USER_ID, 1, "profession", "A", None),
        (USER_ID, 3, "profession", None, None),
        (USER_ID, 4, "location", "7", None),
        (USER_ID, 5, "profession", "B", None),
        (USER_ID, 6, None, "C", None),
        (USER_ID, 7, "location", "D", None),
    ]
    assert tables["profile_interactions"].rows() == [
        (USER_ID, "fans", None, 12000, "1.2万", True, None),
    ]
    row = only_row(tables)
    assert (row["profession_tags"], row["location_tag"], row["fans"]) == (["A", "B"], "7", 12000)


def test_interactions_are_looked_up_by_type_not_position() -> None:
    data = {
        "interactions": [
            {"type": "interaction", "count": 10},
            {"type": "fans", "count": "32.4K"},
            {"type": "follows", "count": 7},
            {"type": "fans", "count": 1},
        ]
    }
    tables = flatten([profile(data)])
    row = only_row(tables)
    assert (row["follows"], row["fans"]) == (7, 32400)
    assert tables["profile_interactions"]["count_text"].to_list() == ["10", "32.4K", "7", "1"]


def test_private_lists_keep_their_count_and_toast() -> None:
    entry = {"type": "fans", "name": "粉丝", "count": 21263, "is_private": True, "toast": "hidden"}
    tables = flatten([profile({"interactions": [entry]})])
    assert tables["profile_interactions"].rows() == [
        (USER_ID, "fans", "粉丝", 21263, "21263", True, "hidden"),
    ]
    assert only_row(tables)["fans"] == 21263


def test_interaction_without_count_has_null_count_and_count_text() -> None:
    tables = flatten([profile({"interactions": [{"type": "fans", "count": None}, {}]})])
    assert tables["profile_interactions"].rows() == [
        (USER_ID, "fans", None, None, None, None, None),
        (USER_ID, None, None, None, None, None, None),
    ]


def test_five_thousand_digit_integers_do_not_raise_and_become_null() -> None:
    digits = b"9" * 5000
    data = (
        b'{"fans":' + digits + b',"nickname":"x","liked":5,"level":{"number":' + digits + b"},"
        b'"interactions":[{"type":"follows","count":' + digits + b"}]}"
    )
    tables = flatten([raw_profile(data)])
    row = only_row(tables)
    assert (row["nickname"], row["liked"], row["fans"], row["level"], row["follows"]) == (
        "x",
        5,
        None,
        None,
        None,
    )
    assert tables["profile_interactions"].rows() == [
        (USER_ID, "follows", None, None, digits.decode(), None, None)
    ]
    assert row["raw_json"] == data.decode()


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        (b"18446744073709551615", None),  # orjson's largest int: beyond Int64
        (b"9223372036854775807", 2**63 - 1),
        (b"-9223372036854775808", -(2**63)),
        (b"123456789012345678901234567890", None),
        (b"NaN", None),
        (b"Infinity", None),
        (b"1e400", None),
        (b"8456.0", 8456),
    ],
)
def test_numbers_orjson_cannot_or_int64_does_not_hold(literal: bytes, expected: int | None) -> None:
    row = only_row(flatten([raw_profile(b'{"nickname":"n","liked":' + literal + b"}")]))
    assert (row["nickname"], row["liked"]) == ("n", expected)


@pytest.mark.parametrize(
    "digits", ["18446744073709551616", "123456789012345678901234567890", "9" * 300]
)
def test_counts_beyond_int64_are_null_but_their_text_keeps_every_digit(digits: str) -> None:
    data = f'{{"interactions":[{{"type":"fans","count":{digits}}}],"red_id":{digits}}}'
    tables = flatten([raw_profile(data.encode())])
    assert tables["profile_interactions"].select("count", "count_text").row(0) == (None, digits)
    assert only_row(tables)["red_id"] == digits


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers_are_null_in_string_columns(literal: bytes) -> None:
    row = only_row(flatten([raw_profile(b'{"fans":1,"nickname":' + literal + b"}")]))
    assert (row["nickname"], row["fans"]) == (None, 1)


def test_naive_fetched_at_is_read_as_utc() -> None:
    naive = FETCHED_AT.replace(tzinfo=None)
    assert only_row(flatten([FetchedProfile(USER_ID, b"{}", None, naive)]))["fetched_at"] == (
        FETCHED_AT
    )


def test_large_batches_keep_every_row_aligned_across_internal_chunks() -> None:
    """Rows are buffered in chunks of a few hundred; 1,000 mixed profiles must stay aligned."""
    shapes: list[object] = [
        golden_data(SEED),
        golden_data(V3_EXAMPLE),
        None,
        {"interactions": [{}]},
    ]
    batch = [profile(shapes[i % 4], user_id=f"{i:024x}") for i in range(1000)]
    tables = flatten(batch)
    assert_declared_schemas(tables)
    assert tables["profiles"]["user_id"].to_list() == [f"{i:024x}" for i in range(1000)]
    assert tables["profiles"]["fans"].to_list() == [8456, 21263, None, None] * 250
    assert (
        tables["profiles"]["profession_tags"].to_list()
        == [
            ["家居博主", "母婴博主"],
            [],
            None,
            [],
        ]
        * 250
    )
    assert tables["profiles"]["raw_json"].to_list() == [p.data_json.decode() for p in batch]
    tags = tables["profile_tags"].group_by("user_id", maintain_order=True).len()
    assert tags.rows() == [(f"{i:024x}", 4 if i % 4 == 0 else 1) for i in range(1000) if i % 4 < 2]
    interactions = tables["profile_interactions"].group_by("user_id", maintain_order=True).len()
    assert interactions.rows() == [
        (f"{i:024x}", 3 if i % 4 < 2 else 1) for i in range(1000) if i % 4 != 2
    ]
    assert (
        tables["profile_interactions"].filter(pl.col("type") == "interaction")["count"].to_list()
        == [
            75707,
            81172,
        ]
        * 250
    )


def test_lone_surrogates_become_replacement_characters() -> None:
    row = only_row(flatten([raw_profile(b'{"nickname":"\\ud800x","fans":3}')]))
    assert (row["nickname"], row["fans"]) == ("\ufffdx", 3)


def test_utf8_encoded_surrogates_become_replacement_characters() -> None:
    data = b'{"nickname":"\xed\xa0\x80x","fans":3}'
    row = only_row(flatten([raw_profile(data)]))
    assert (row["nickname"], row["fans"]) == ("\ufffdx", 3)
    assert row["raw_json"] == data.decode("utf-8", "replace")


def test_nesting_within_orjson_limit_inside_a_known_key_is_ignored() -> None:
    data = b'{"nickname":"x","tags":' + b"[" * 500 + b"]" * 500 + b"}"
    tables = flatten([raw_profile(data)])
    assert only_row(tables)["nickname"] == "x"
    assert tables["profile_tags"].height == 0


def test_level_must_be_an_object_and_note_num_stat_an_object() -> None:
    row = only_row(flatten([profile(golden_data(SEED) | {"level": "5", "note_num_stat": [1]})]))
    assert (row["level"], row["notes_posted"], row["notes_liked"], row["notes_collected"]) == (
        None,
        None,
        None,
        None,
    )
    assert only_row(flatten([profile({"level": {"number": "5"}})]))["level"] == 5


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text", "text"),
        (123, "123"),
        (1.5, "1.5"),
        (True, None),
        ({"a": 1}, None),
        (["a"], None),
        (None, None),
    ],
)
def test_string_columns_take_strings_and_numbers_only(value: object, expected: str | None) -> None:
    row = only_row(flatten([profile({"nickname": value, "red_id": value})]))
    assert (row["nickname"], row["red_id"]) == (expected, expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1),
        (1.0, 1),
        ("1", 1),
        ("1.2万", 12000),
        (True, None),
        (1.5, None),
        ("x", None),
        ([1], None),
        (2**63, None),
    ],
)
def test_int_columns_take_ints_and_counts_never_bools(value: object, expected: int | None) -> None:
    row = only_row(flatten([profile({"gender": value, "collected": value})]))
    assert (row["gender"], row["collected"]) == (expected, expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        ("true", True),
        ("False", False),
        (2, None),
        (1.0, None),
        ("yes", None),
        ({}, None),
    ],
)
def test_boolean_columns_take_bools_zero_one_and_true_false_text(
    value: object, expected: bool | None
) -> None:
    row = only_row(flatten([profile({"red_official_verified": value})]))
    assert row["red_official_verified"] is expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"desc": "bio"}, "bio"),
        ({"user_desc_info": {"desc": "bio"}}, "bio"),
        ({"desc": "", "user_desc_info": {"desc": "bio"}}, "bio"),
        ({"desc": None, "user_desc_info": {"desc": ""}}, ""),
        ({"desc": "", "user_desc_info": []}, ""),
        ({"desc": "", "user_desc_info": {"desc": None}}, ""),
        ({"desc": {}, "user_desc_info": "bio"}, None),
    ],
)
def test_description_falls_back_to_user_desc_info(
    fields: dict[str, object], expected: str | None
) -> None:
    assert only_row(flatten([profile(fields)]))["description"] == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"imageb": "big", "images": "small"}, "big"),
        ({"images": "small"}, "small"),
        ({"imageb": "", "images": "small"}, "small"),
        ({"imageb": None}, None),
    ],
)
def test_avatar_is_imageb_else_images(fields: dict[str, object], expected: str | None) -> None:
    assert only_row(flatten([profile(fields)]))["avatar_url"] == expected


# --- property: random profile shapes --------------------------------------------------------


def object_entries(data: object, key: str) -> list[int]:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        return []
    return [i for i, entry in enumerate(data[key]) if isinstance(entry, dict)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PROFILE_DATA | MIXED_PROFILE_DATA | JSON_VALUES, max_size=6))
def test_any_profile_shape_flattens_with_declared_schemas(batch: Sequence[object]) -> None:
    """Never raises; one profile row per input in order; one row per object entry of each list."""
    user_ids = [f"{i:024x}" for i in range(len(batch))]
    fetched = [
        FetchedProfile(uid, serialize(data), None, FETCHED_AT)
        for uid, data in zip(user_ids, batch, strict=True)
    ]
    tables = flatten(fetched)
    assert_declared_schemas(tables)
    assert tables["profiles"]["user_id"].to_list() == user_ids
    assert tables["profiles"]["raw_json"].to_list() == [f.data_json.decode() for f in fetched]
    expected_tags = [
        (uid, i) for uid, d in zip(user_ids, batch, strict=True) for i in object_entries(d, "tags")
    ]
    assert tables["profile_tags"].select("user_id", "position").rows() == expected_tags
    expected_interactions = [
        uid
        for uid, d in zip(user_ids, batch, strict=True)
        for _ in object_entries(d, "interactions")
    ]
    assert tables["profile_interactions"]["user_id"].to_list() == expected_interactions
