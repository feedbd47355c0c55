"""Hypothesis strategies for ``data`` bodies, shared by the flatten and profile_data tests."""

from __future__ import annotations

import json

from hypothesis import strategies as st

LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["1.2万", "10万+", "32.4K", "-", "8456", "true"])
)
JSON_VALUES = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
TAG = st.fixed_dictionaries(
    {},
    optional={
        "tag_type": st.sampled_from(["info", "location", "profession", "college"]) | JSON_VALUES,
        "name": st.text(max_size=6) | JSON_VALUES,
        "icon": JSON_VALUES,
    },
)
INTERACTION = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["follows", "fans", "interaction"]) | JSON_VALUES,
        "name": JSON_VALUES,
        "count": st.integers() | JSON_VALUES,
        "is_private": JSON_VALUES,
        "toast": JSON_VALUES,
    },
)
KNOWN_KEYS = [
    *("userid", "red_id", "nickname", "desc", "gender", "ip_location", "location"),
    *("red_official_verified", "red_official_verify_type", "follows", "fans", "liked"),
    *("collected", "imageb", "images", "share_link"),
]
PROFILE_DATA = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(KNOWN_KEYS, JSON_VALUES),
        "level": st.fixed_dictionaries({}, optional={"number": JSON_VALUES}) | JSON_VALUES,
        "note_num_stat": st.dictionaries(
            st.sampled_from(["posted", "liked", "collected"]), JSON_VALUES
        )
        | JSON_VALUES,
        "user_desc_info": st.fixed_dictionaries({}, optional={"desc": JSON_VALUES}) | JSON_VALUES,
        "tags": st.lists(TAG | JSON_VALUES, max_size=5) | JSON_VALUES,
        "interactions": st.lists(INTERACTION | JSON_VALUES, max_size=5) | JSON_VALUES,
        "extra": JSON_VALUES,
    },
)


def serialize(data: object) -> bytes:
    # The stdlib writes what orjson refuses (ints beyond 64 bits, NaN), so both parsers get used.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


# JSON as the standard has it (no NaN or Infinity): what a typed body may carry in other fields.
STANDARD_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
# Values of the types the API documents for each field, so that the typed reader accepts them.
TEXT = st.none() | st.text(max_size=8)
INT64 = st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
BOOL = st.none() | st.booleans()
TYPED_TAG = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "tag_type": st.none() | st.sampled_from(["info", "location", "profession", "college"]),
        "name": TEXT,
        "icon": TEXT,
        "extra": STANDARD_JSON_VALUES,
    },
)
TYPED_INTERACTION = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "type": st.none() | st.sampled_from(["follows", "fans", "interaction"]),
        "name": TEXT,
        "count": INT64 | st.sampled_from(["1.2万", "10万+", "32.4K", "-", "8456", "", " 12 "]),
        "is_private": BOOL,
        "toast": TEXT,
    },
)
TYPED_FIELDS = {
    **dict.fromkeys(("red_id", "nickname", "desc", "ip_location", "location"), TEXT),
    **dict.fromkeys(("imageb", "images", "share_link", "userid"), TEXT),
    **dict.fromkeys(("gender", "red_official_verify_type", "follows", "fans"), INT64),
    **dict.fromkeys(("liked", "collected"), INT64),
    "red_official_verified": BOOL,
    "level": st.none() | st.fixed_dictionaries({}, optional={"number": INT64}),
    "note_num_stat": st.none()
    | st.fixed_dictionaries({}, optional=dict.fromkeys(("posted", "liked", "collected"), INT64)),
    "user_desc_info": st.none() | st.fixed_dictionaries({}, optional={"desc": TEXT}),
    "tags": st.none() | st.lists(TYPED_TAG, max_size=4),
    "interactions": st.none() | st.lists(TYPED_INTERACTION, max_size=4),
    "extra": STANDARD_JSON_VALUES,
}
TYPED_PROFILE_DATA = st.fixed_dictionaries({}, optional=TYPED_FIELDS)
# Mostly well typed, with a wrong-typed value here and there: both readers get exercised.
MIXED_PROFILE_DATA = st.fixed_dictionaries(
    {}, optional={key: value | JSON_VALUES for key, value in TYPED_FIELDS.items()}
)
