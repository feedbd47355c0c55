"""Deterministic, varied profiles built from the real seed sample."""

from __future__ import annotations

import base64
import hashlib
import random
import string
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import Any, Final

import orjson

_SAMPLE_ID: Final = b"5a901362e8ac2b36c99bce33"
_PROFILE_CACHE_SIZE: Final = 4096  # about 25 MB of bodies; retries of an id come soon after
_HUGE_BYTES: Final = 8 * 1024 * 1024
_PAGE_TITLES: Final = {
    404: "Not Found",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}
TOAST_FOLLOWS: Final = "该用户已设置关注列表不可见"
TOAST_FANS: Final = "该用户已设置粉丝列表不可见"

# --- profiles ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Template:
    data_text: bytes  # the seed sample's data, with _SAMPLE_ID where the id goes
    vocab: dict[str, Any]


@cache
def _template() -> _Template:
    folder = resources.files("pipeline.sandbox") / "data"
    sample = orjson.loads((folder / "seed-get-user-v4-response.json").read_bytes())
    vocab = orjson.loads((folder / "vocab.json").read_bytes())
    return _Template(orjson.dumps(sample["data"]), vocab)


def draw(seed: int, purpose: str, user_id: str) -> int:
    digest = hashlib.blake2b(f"{seed}\0{purpose}\0{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def display_count(n: int, style: str = "wan") -> str:
    """``n`` as the app shows it: ``8456``, ``7.6万``, ``1.5亿``; ``plus`` style: ``10万+``."""
    if style == "plus" and n >= 10_000:
        return f"{n // 100_000 * 10 or n // 10_000}万+"
    if style == "thousand" and 1_000 <= n < 10_000:
        return f"{n // 1_000}千+"
    if n < 10_000:
        return str(n)
    value, unit = (n / 10_000, "万") if n < 100_000_000 else (n / 100_000_000, "亿")
    return f"{value:.1f}".removesuffix(".0") + unit


_OPTIONAL_KEYS: Final = (
    "brand_account_info", "buyer_info", "banner_info", "zhong_tong_bar_info", "red_club_info",
    "avatar_pendant", "hula_tabs", "recommend_info_icon", "real_name_info", "identity_deeplink",
    "share_info_v2",
)  # fmt: skip


def build_profile(user_id: str, seed: int = 0) -> dict[str, Any]:
    """The ``data`` object the sandbox answers for ``user_id`` (same id and seed, same data)."""
    return dict(orjson.loads(profile_json(user_id, seed)))


@lru_cache(maxsize=_PROFILE_CACHE_SIZE)
def profile_json(user_id: str, seed: int) -> bytes:
    return orjson.dumps(profile_data(user_id, seed))


def vocabulary() -> dict[str, Any]:
    """The word lists profiles are drawn from (nicknames, bio lines, places, ...)."""
    return _template().vocab


def profile_data(user_id: str, seed: int) -> dict[str, Any]:
    """A new ``data`` dict for ``user_id`` each call, so a caller may change it (drift does)."""
    rng = random.Random(draw(seed, "profile", user_id))
    tpl = _template()
    words = tpl.vocab
    data: dict[str, Any] = orjson.loads(tpl.data_text.replace(_SAMPLE_ID, user_id.encode()))
    head, core, tail = (
        rng.choice(words[k]) for k in ("nickname_heads", "nickname_cores", "nickname_tails")
    )
    nickname = f"{head}{core}{tail}"
    desc = "\n".join(rng.sample(words["desc_lines"], rng.choice((0, 1, 2, 2, 3, 4))))
    gender = rng.randint(0, 1)
    fans = 0 if rng.random() < 0.03 else int(10 ** rng.uniform(0, 7))
    follows = 0 if rng.random() < 0.05 else int(10 ** rng.uniform(0, 3.7))
    liked = int(fans * rng.uniform(0.2, 12)) + rng.randint(0, 50)
    collected = int(liked * rng.uniform(0.05, 0.8))
    posted = 0 if rng.random() < 0.05 else int(10 ** rng.uniform(0, 3.5))
    province, city = rng.choice(words["places"])
    roll = rng.random()
    ip_location = "" if roll < 0.08 else rng.choice(words["abroad"]) if roll < 0.14 else province
    location = "" if rng.random() < 0.25 else f"中国 {province} {city}"
    verified = rng.random() < 0.05
    avatar = f"{rng.getrandbits(96):024x}"
    xsec = "YB" + base64.urlsafe_b64encode(rng.randbytes(30)).decode() + "="
    data.update(
        nickname=nickname,
        desc=desc,
        gender=gender,
        fans=fans,
        follows=follows,
        liked=liked,
        collected=collected,
        ndiscovery=posted,
        ip_location=ip_location,
        location=location,
        note_num_stat={"posted": posted, "liked": liked, "collected": collected},
        red_id=(
            str(rng.randint(10**8, 10**10))
            if rng.random() < 0.4
            else "".join(rng.choices(string.ascii_lowercase + string.digits, k=10))
        ),
        location_jump=bool(location),
        red_official_verified=verified,
        red_official_verify_type=rng.choice((1, 2)) if verified else 0,
        red_official_verify_content=rng.choice(words["verify_contents"]) if verified else "",
        level={"image_link": "", "number": rng.choice((0, 0, 0, 1, 2, 3, 5, 8))},
        images=f"https://sns-avatar-qc.xhscdn.com/avatar/{avatar}.jpg?imageView2/2/w/360/format/webp",
        imageb=f"https://sns-avatar-qc.xhscdn.com/avatar/{avatar}.jpg?imageView2/2/w/540/format/webp",
        share_link=f"https://www.xiaohongshu.com/user/profile/{user_id}?xsec_token={xsec}"
        "&xsec_source=app_share",
        user_role_type=rng.choice((0, 0, 6)),
        nboards=rng.choice((0, 0, 1, 3)),
        tags=_tags(rng, words, gender, province + city if location else ""),
        interactions=_interactions(rng, follows, fans, liked + collected),
    )
    data["user_desc_info"].update(desc=desc, desc_with_placeholder=desc)
    data["share_info"] = {"title": nickname, "content": desc}
    data["share_info_v2"].update(
        title=f"@{nickname}的个人主页",
        content=f"粉丝: {display_count(fans)}\n获赞与收藏: {display_count(liked + collected)}",
        ecom_title=f"{nickname}的橱窗",
        ecom_content=f"{nickname}为你推荐了{rng.randint(1, 99)}件宝藏好物!"
        f"已有{rng.randint(0, 999)}人买过了!",
    )
    for key in _OPTIONAL_KEYS:
        if rng.random() < 0.3:
            del data[key]
    if "buyer_info" not in data and "share_info_v2" in data:
        for key in ("ecom_title", "ecom_content", "ecom_share_link"):
            del data["share_info_v2"][key]
    if rng.random() < 0.3:
        data["seller_info"] = words["seller_info"]
    return data


def _tags(rng: random.Random, words: dict[str, Any], gender: int, place: str) -> list[Any]:
    info: dict[str, str] = {
        "icon": "http://ci.xiaohongshu.com/icons/user/gender-"
        f"{'female' if gender else 'male'}-v1.png"
    }
    if rng.random() < 0.4:
        info["name"] = f"{rng.randint(18, 45)}岁"
    info["tag_type"] = "info"
    tags: list[Any] = [info]
    if place:
        tags.append({"name": place, "tag_type": "location"})
    tags += (
        {"name": p, "tag_type": "profession"}
        for p in rng.sample(words["professions"], rng.choice((0, 1, 1, 2, 3)))
    )
    if rng.random() < 0.2:
        tags.append({"name": rng.choice(words["colleges"]), "tag_type": "college"})
    return tags[: rng.choice((0, 1, 2, 3, 4, 5))]


def _interactions(rng: random.Random, follows: int, fans: int, interaction: int) -> list[Any]:
    hide_follows, hide_fans = rng.random() < 0.15, rng.random() < 0.1
    entries = [
        {"type": "follows", "name": "关注", "count": follows, "is_private": hide_follows,
         "toast": TOAST_FOLLOWS if hide_follows else ""},
        {"type": "fans", "name": "粉丝", "count": fans, "is_private": hide_fans,
         "toast": TOAST_FANS if hide_fans else ""},
        {"type": "interaction", "name": "获赞与收藏", "count": interaction, "is_private": False,
         "toast": ""},
    ]  # fmt: skip
    rng.shuffle(entries)
    if rng.random() < 0.5:  # key order differs between real accounts too
        entries = [
            {k: e[k] for k in ("is_private", "toast", "type", "name", "count")} for e in entries
        ]
    return entries


@cache
def giant_desc_json() -> bytes:
    line = "这是一段非常非常长的个人简介，用来测试客户端对超大响应体的处理。\n"
    return orjson.dumps(line * (_HUGE_BYTES // len(line.encode())))


@cache
def html_page(status: int) -> bytes:
    title = f"{status} {_PAGE_TITLES.get(status, 'Error')}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}"
        "</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    ).encode()


NOT_JSON_PAGE: Final = (
    "<html><head><title>Just One API</title></head><body><p>系统维护中，"
    "请稍后再试</p></body></html>"
).encode()
