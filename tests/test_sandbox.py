"""The sandbox API behaves like the vendor's endpoint and injects every fault it promises.

Every test talks to a real server on 127.0.0.1 through httpx (or a raw socket where httpx
would hide what went over the wire).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from pipeline.errors import UsageError
from pipeline.sandbox import (
    TOAST_FANS,
    TOAST_FOLLOWS,
    Sandbox,
    SandboxConfig,
    SandboxListenError,
    SandboxOptionError,
    SandboxStats,
    build_profile,
    parse_mode,
    serve,
)

V4 = "/api/xiaohongshu/get-user/v4"
V3 = "/api/xiaohongshu/get-user/v3"
IDS = [f"{i:024x}" for i in range(1, 201)]
UID = "5a901362e8ac2b36c99bce33"
SandboxFactory = Callable[..., Sandbox]  # the conftest fixture ``sandbox``
# One client for the module: building one per call costs more than the call itself.
HTTP = httpx.Client(timeout=5.0)


def get(box: Sandbox, user_id: str = UID, *, token: str = "sandbox", path: str = V4,
        timeout: float = 5.0) -> httpx.Response:  # fmt: skip
    params = {"token": token, "userId": user_id}
    return HTTP.get(box.base_url + path, params=params, timeout=timeout)


def raw_get(box: Sandbox, user_id: str = UID) -> tuple[bytes, bytes]:
    """Head and body bytes exactly as they arrived, reading until the server closes."""
    url = urlsplit(box.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        request = f"GET {V4}?token=sandbox&userId={user_id} HTTP/1.1\r\nHost: x\r\n"
        sock.sendall(request.encode() + b"Connection: close\r\n\r\n")
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    head, _, body = received.partition(b"\r\n\r\n")
    return head, body


def content_length(head: bytes) -> int:
    found = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
    assert found is not None
    return int(found.group(1))


def test_success_has_the_vendor_envelope_and_the_requested_id(sandbox: SandboxFactory) -> None:
    response = get(sandbox())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["code", "message", "recordTime", "requestId", "data"]
    assert (body["code"], body["message"]) == (0, "success")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["recordTime"])
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                        body["requestId"])  # fmt: skip
    data = body["data"]
    assert data["userid"] == UID
    assert data["result"] == {"success": True, "code": 0, "message": "success"}
    assert UID in data["share_link"]


def test_the_same_id_gets_the_same_data_and_another_seed_changes_it(
    sandbox: SandboxFactory,
) -> None:
    box, other_box, other_seed = sandbox(), sandbox(), sandbox(seed=7)
    first, second = get(box).json(), get(box).json()
    assert first["data"] == second["data"] == get(other_box).json()["data"]
    assert first["requestId"] != second["requestId"]
    assert get(other_seed).json()["data"] != first["data"]
    assert build_profile(UID) == first["data"]


def test_profiles_vary_in_shape_and_keep_the_facts_of_real_samples(
    sandbox: SandboxFactory,
) -> None:
    box = sandbox()
    with httpx.Client(base_url=box.base_url) as client:
        profiles = [client.get(V4, params={"token": "sandbox", "userId": uid}).json()["data"]
                    for uid in IDS]  # fmt: skip
    for data in profiles:
        counts = {entry["type"]: entry for entry in data["interactions"]}
        assert counts["interaction"]["count"] == data["liked"] + data["collected"]
        assert counts["fans"]["count"] == data["fans"]
        assert counts["follows"]["count"] == data["follows"]
        assert data["ndiscovery"] == data["note_num_stat"]["posted"]
        assert data["note_num_stat"]["liked"] == data["liked"]
        assert 0 <= data["fans"] <= 10**7
        assert data["gender"] in (0, 1)
        assert len(data["tags"]) <= 5
        assert {t["tag_type"] for t in data["tags"]} <= {"info", "location", "profession",
                                                         "college"}  # fmt: skip
        for entry in data["interactions"]:
            expected = {"follows": TOAST_FOLLOWS, "fans": TOAST_FANS}.get(entry["type"], "")
            assert entry["toast"] == (expected if entry["is_private"] else "")

    def share(predicate: Any) -> int:
        return sum(1 for data in profiles if predicate(data))

    assert 10 < share(lambda d: any(e["is_private"] for e in d["interactions"])) < 100
    assert 10 < share(lambda d: not d["tags"]) < 80
    assert share(lambda d: len(d["tags"]) == 5) > 0
    assert share(lambda d: [t["tag_type"] for t in d["tags"]].count("profession") > 1) > 0
    assert share(lambda d: "brand_account_info" not in d) > 20
    assert share(lambda d: "seller_info" in d) > 20
    assert share(lambda d: d["ip_location"] == "") > 0
    assert share(lambda d: d["location"] == "") > 20
    assert share(lambda d: d["gender"] == 0) > 50 and share(lambda d: d["gender"] == 1) > 50
    assert len({d["interactions"][0]["type"] for d in profiles}) == 3
    assert len({d["nickname"] for d in profiles}) > 150
    assert share(lambda d: re.search(r"[\u4e00-\u9fff]", d["nickname"]) is not None) > 150
    assert max(d["fans"] for d in profiles) > 10**5


def _json(response: httpx.Response) -> Any:
    return orjson.loads(response.content)


JSON_MODES: list[tuple[str, int, Any]] = [
    ("ok", 200, lambda b: b["code"] == 0 and b["data"]["userid"] == UID),
    ("301", 200, lambda b: (b["code"], b["message"], b["data"])
     == (301, "collection failed, please retry", None)),
    ("code:503", 200, lambda b: b["code"] == 503),
    ("code:601", 200, lambda b: (b["code"], b["message"]) == (601, "insufficient balance")),
    ("code:202", 200, lambda b: b["code"] == 202 and b["data"] is None),
    ("status:429:302", 429, lambda b: (b["code"], b["message"]) == (302, "rate limit exceeded")),
    ("status:500:500", 500, lambda b: b["code"] == 500),
    ("wrong_types", 200, lambda b: (b["data"]["fans"], b["data"]["tags"],
                                    b["data"]["interactions"], b["data"]["level"])
     == ("abc", {}, None, "7")),
    ("code_string", 200, lambda b: b["code"] == "0" and b["data"]["userid"] == UID),
    ("data_null", 200, lambda b: b["code"] == 0 and b["data"] is None),
    ("empty_data", 200, lambda b: b["code"] == 0 and b["data"] == {}),
    ("no_result", 200, lambda b: b["data"] == {"result": {"success": False, "code": -1,
                                                          "message": "user not found"}}),
    ("no_code", 200, lambda b: "code" not in b and b["data"]["userid"] == UID),
]  # fmt: skip


@pytest.mark.parametrize(("mode", "status", "check"), JSON_MODES, ids=[m[0] for m in JSON_MODES])
def test_json_modes_send_their_status_and_body(
    sandbox: SandboxFactory, mode: str, status: int, check: Any
) -> None:
    response = get(sandbox(scripts={UID: [mode]}))
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert check(_json(response))


@pytest.mark.parametrize(("mode", "status"), [("html502", 502), ("502", 502), ("html503", 503),
                                              ("gone", 404), ("not_json", 200)])  # fmt: skip
def test_html_modes_send_a_page_that_is_not_json(
    sandbox: SandboxFactory, mode: str, status: int
) -> None:
    response = get(sandbox(scripts={UID: [mode]}))
    assert response.status_code == status
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.text.startswith("<html>")
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_display_counts_are_strings_the_app_shows(sandbox: SandboxFactory) -> None:
    box = sandbox()
    for uid in IDS[:40]:
        box.script(uid, ["display_counts"])
    bodies = [get(box, uid).json()["data"] for uid in IDS[:40]]
    counts = [e["count"] for data in bodies for e in data["interactions"]]
    assert all(isinstance(c, str) for c in counts)
    assert all(re.fullmatch(r"\d+|\d+(\.\d)?[万亿]|\d+万\+|\d千\+", c) for c in counts)
    assert any(c.endswith("万+") for c in counts) and any(c.endswith("万") for c in counts)
    assert all(isinstance(data["fans"], int) for data in bodies)


def test_huge_is_a_valid_body_over_5_mb(sandbox: SandboxFactory) -> None:
    response = get(sandbox(scripts={UID: ["huge"]}))
    assert len(response.content) > 5 * 1024 * 1024
    body = _json(response)
    assert body["code"] == 0 and len(body["data"]["desc"]) > 2_000_000


def test_deep_nests_a_value_5000_levels(sandbox: SandboxFactory) -> None:
    response = get(sandbox(scripts={UID: ["deep"]}))
    assert b'"nested":' + b"[" * 5000 + b"]" * 5000 + b"}" in response.content
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.content)


def test_bigint_writes_fans_with_5000_digits(sandbox: SandboxFactory) -> None:
    response = get(sandbox(scripts={UID: ["bigint"]}))
    found = re.search(rb'"fans":(\d+)[,}]', response.content)
    assert found is not None and len(found.group(1)) == 5000
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.content)


def test_reset_closes_without_a_response_and_the_next_call_succeeds(
    sandbox: SandboxFactory,
) -> None:
    box = sandbox(scripts={UID: ["reset"]})
    with pytest.raises(httpx.TransportError):
        get(box)
    assert get(box).json()["code"] == 0


def test_reset_raw_socket_gets_nothing(sandbox: SandboxFactory) -> None:
    assert raw_get(sandbox(scripts={UID: ["reset"]})) == (b"", b"")


@pytest.mark.parametrize("mode", ["reset_mid", "truncated"])
def test_cut_bodies_promise_more_than_they_send(sandbox: SandboxFactory, mode: str) -> None:
    box = sandbox(scripts={UID: [mode, mode]})
    with pytest.raises(httpx.TransportError):
        get(box)
    head, body = raw_get(box)
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) < content_length(head)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)


def test_truncated_sends_two_thirds_then_closes_cleanly(sandbox: SandboxFactory) -> None:
    head, body = raw_get(sandbox(scripts={UID: ["truncated"]}))
    assert len(body) == content_length(head) * 2 // 3


@pytest.mark.slow
def test_drip_outlasts_a_half_second_read_timeout(sandbox: SandboxFactory) -> None:
    box = sandbox(scripts={UID: ["drip"]})
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        get(box, timeout=0.5)
    assert time.monotonic() - started < 2


@pytest.mark.slow
def test_slow_succeeds_after_a_second(sandbox: SandboxFactory) -> None:
    box = sandbox(scripts={UID: ["slow"]})
    started = time.monotonic()
    assert get(box).json()["data"]["userid"] == UID
    assert time.monotonic() - started >= 1.0


@pytest.mark.slow
def test_latency_delays_every_answer(sandbox: SandboxFactory) -> None:
    box = sandbox(latency=(0.2, 0.25))
    started = time.monotonic()
    get(box)
    assert 0.2 <= time.monotonic() - started < 1.0


@pytest.mark.parametrize("token", ["wrong", ""])
def test_a_bad_or_missing_token_gets_code_100(sandbox: SandboxFactory, token: str) -> None:
    box = sandbox(token="s3cret-token")
    body = get(box, token=token).json()
    assert (body["code"], body["message"], body["data"]) == (100, "token invalid or inactive", None)
    assert get(box, token="s3cret-token").json()["code"] == 0
    assert box.stats().by_code == {100: 1, 0: 1}


@pytest.mark.parametrize("user_id", ["abc", "5a901362e8ac2b36c99bce3", "zz901362e8ac2b36c99bce33",
                                     "", "5a901362e8ac2b36c99bce33/../x"])  # fmt: skip
def test_a_user_id_that_is_not_24_hex_gets_code_400(sandbox: SandboxFactory, user_id: str) -> None:
    body = get(sandbox(), user_id).json()
    assert (body["code"], body["message"]) == (400, "invalid parameters")


def test_v3_answers_the_same_shape_and_accepts_a_profile_url(sandbox: SandboxFactory) -> None:
    box = sandbox()
    url = f"https://www.xiaohongshu.com/user/profile/{UID}?xsec_token=abc"
    assert get(box, url, path=V3).json()["data"] == get(box, path=V4).json()["data"]
    assert get(box, url, path=V4).json()["code"] == 400
    assert box.stats().calls_by_id[UID] == 2


def test_daily_quota_answers_303_after_n_successes(sandbox: SandboxFactory) -> None:
    box = sandbox(daily_quota=3, scripts={IDS[0]: ["301"]})
    codes = [get(box, uid).json()["code"] for uid in IDS[:6]]
    assert codes == [301, 0, 0, 0, 303, 303]
    assert get(box, IDS[1]).json()["code"] == 303
    assert box.stats().by_code == {301: 1, 0: 3, 303: 3}


@pytest.mark.slow
def test_rate_limit_answers_302_beyond_the_rate_with_retry_after(sandbox: SandboxFactory) -> None:
    box = sandbox(rate_limit=5, retry_after=0.5)
    with httpx.Client(base_url=box.base_url) as client:
        answers = [client.get(V4, params={"token": "sandbox", "userId": uid}) for uid in IDS[:20]]
        codes = [a.json()["code"] for a in answers]
        assert 5 <= codes.count(0) <= 6 and codes.count(302) == 20 - codes.count(0)
        limited = next(a for a in answers if a.json()["code"] == 302)
        assert limited.status_code == 200
        assert limited.json()["message"] == "rate limit exceeded"
        assert limited.headers["retry-after"] == "0.5"
        assert "retry-after" not in answers[0].headers
        time.sleep(0.45)
        assert client.get(V4, params={"token": "sandbox", "userId": UID}).json()["code"] == 0
    assert box.stats().calls == 21


def test_rate_limit_without_retry_after_sends_no_header(sandbox: SandboxFactory) -> None:
    box = sandbox(rate_limit=1)
    get(box)
    limited = get(box)
    assert limited.json()["code"] == 302
    assert "retry-after" not in limited.headers


def test_a_rate_schedule_changes_the_limit_at_the_seconds_it_names(
    sandbox: SandboxFactory,
) -> None:
    """``50@0,2@0.3``: the limit is 50/s for the server's first 0.3 s, then 2/s."""
    box = sandbox(rate_schedule="50@0,2@0.3")
    early = [get(box, uid).json()["code"] for uid in IDS[:10]]
    time.sleep(max(0.0, 0.35 - (time.monotonic() - box_born(box))))
    late = [get(box, uid).json()["code"] for uid in IDS[10:20]]
    assert early == [0] * 10  # a 50/s bucket holds 50 tokens
    assert late.count(302) >= 7  # 2 tokens at most, refilled at 2/s
    assert box.stats().by_code[302] == late.count(302)


def test_a_rate_limit_per_token_gives_each_account_its_own_bucket(
    sandbox: SandboxFactory,
) -> None:
    """Three accounts at 2/s each: 2 answers each from a full bucket, 4 refusals each.  With
    one shared bucket the second and third tokens would get nothing (see the next test)."""
    box = sandbox(token="acct-0", tokens="acct-1,acct-2", rate_limit=2, rate_scope="token")
    codes = {t: [get(box, uid, token=t).json()["code"] for uid in IDS[:6]] for t in TOKENS}
    assert codes == {t: [0, 0, 302, 302, 302, 302] for t in TOKENS}
    assert get(box, token="someone-else").json()["code"] == 100
    stats = box.stats()
    assert stats.calls_by_token == dict.fromkeys(TOKENS, 6)
    assert stats.rate_limited_by_token == dict.fromkeys(TOKENS, 4)
    assert stats.by_code == {0: 6, 302: 12, 100: 1}
    assert SandboxStats.from_json(stats.to_json()) == stats


def test_several_tokens_share_the_server_limit_by_default(sandbox: SandboxFactory) -> None:
    box = sandbox(token="acct-0", tokens=("acct-1", "acct-2"), rate_limit=2)
    codes = {t: [get(box, uid, token=t).json()["code"] for uid in IDS[:6]] for t in TOKENS}
    assert codes == {"acct-0": [0, 0, *[302] * 4], "acct-1": [302] * 6, "acct-2": [302] * 6}
    stats = box.stats()
    assert stats.calls_by_token == dict.fromkeys(TOKENS, 6)
    assert stats.rate_limited_by_token == {"acct-0": 4, "acct-1": 6, "acct-2": 6}


def test_a_rate_schedule_applies_to_each_token_s_bucket(sandbox: SandboxFactory) -> None:
    """``50@0,2@0.3`` per token: each bucket holds 50 early on, then at most 2."""
    box = sandbox(token="acct-0", tokens="acct-1", rate_schedule="50@0,2@0.3", rate_scope="token")
    early = [get(box, uid, token=t).json()["code"] for t in TOKENS[:2] for uid in IDS[:10]]
    time.sleep(max(0.0, 0.35 - (time.monotonic() - box_born(box))))
    late = {t: [get(box, uid, token=t).json()["code"] for uid in IDS[10:15]] for t in TOKENS[:2]}
    assert early == [0] * 20
    assert late == {t: [0, 0, 302, 302, 302] for t in TOKENS[:2]}
    assert box.stats().rate_limited_by_token == {"acct-0": 3, "acct-1": 3}


TOKENS = ("acct-0", "acct-1", "acct-2")


def box_born(box: Sandbox) -> float:
    state = box._state
    assert state is not None
    return state.born


@pytest.mark.slow
def test_capacity_mode_stretches_latency_with_the_calls_in_flight(
    sandbox: SandboxFactory,
) -> None:
    """Past ``capacity`` calls in flight each answer takes latency x in flight / capacity."""
    box = sandbox(latency=0.2, capacity=2)

    async def burst(n: int) -> float:
        async with httpx.AsyncClient(base_url=box.base_url) as client:
            started = time.monotonic()
            await asyncio.gather(
                *(client.get(V4, params={"token": "sandbox", "userId": uid}) for uid in IDS[:n])
            )
            return time.monotonic() - started

    assert asyncio.run(burst(2)) < 0.35  # at capacity: the plain 0.2 s
    assert asyncio.run(burst(8)) > 0.6  # 8 in flight over 2: the last arrivals wait 0.8 s
    stats = box.stats()
    assert stats.max_in_flight == 8
    assert stats.latency_median_s is not None and 0.2 <= stats.latency_median_s <= 0.8


def test_the_ledger_records_most_in_flight_most_calls_in_a_second_and_latency(
    sandbox: SandboxFactory,
) -> None:
    box = sandbox(latency=0.05)
    for uid in IDS[:5]:
        get(box, uid)
    stats = box.stats()
    assert (stats.max_in_flight, stats.max_calls_per_second) == (1, 5)
    assert stats.latency_median_s == stats.latency_p90_s == 0.05
    assert stats.in_flight == 0 and stats.age_s > 0.25
    assert SandboxStats.from_json(stats.to_json()) == stats


def test_a_gone_version_answers_404_html_and_the_other_still_works(
    sandbox: SandboxFactory,
) -> None:
    box = sandbox(gone_versions=frozenset({"v4"}))
    gone = get(box)
    assert gone.status_code == 404
    assert gone.headers["content-type"] == "text/html; charset=utf-8"
    assert "404 Not Found" in gone.text
    assert get(box, path=V3).json()["code"] == 0
    assert get(box, path="/api/xiaohongshu/get-user/v9").status_code == 404


def test_the_ledger_counts_every_call_and_each_success(sandbox: SandboxFactory) -> None:
    box = sandbox(scripts={IDS[0]: ["301", "reset", "ok"], IDS[1]: ["html502"]})
    for uid in [IDS[0], IDS[0], IDS[1], IDS[0], IDS[2], IDS[0]]:
        with contextlib.suppress(httpx.TransportError):
            get(box, uid)
    get(box, IDS[2], token="bad")
    stats = box.stats()
    assert stats.calls == 7
    assert stats.calls_by_id == {IDS[0]: 4, IDS[1]: 1, IDS[2]: 2}
    assert stats.successes_by_id == {IDS[0]: 2, IDS[2]: 1}
    assert stats.successes == 3
    assert stats.by_code == {301: 1, -1: 1, 0: 3, 502: 1, 100: 1}
    box.stop()
    # The ledger outlives the server; its age is a clock reading, not part of the ledger.
    assert dataclasses.replace(box.stats(), age_s=stats.age_s) == stats


def test_scripts_apply_to_the_next_calls_then_behaviour_is_normal(
    sandbox: SandboxFactory,
) -> None:
    box = sandbox()
    assert get(box).json()["code"] == 0
    box.script(UID, ["500", "status:503:503"])
    answers = [get(box) for _ in range(3)]
    assert [(a.status_code, a.json()["code"]) for a in answers] == [
        (200, 500),
        (503, 503),
        (200, 0),
    ]


def test_the_script_and_stats_endpoints_drive_a_sandbox_over_http(
    sandbox: SandboxFactory,
) -> None:
    box = sandbox()
    posted = HTTP.post(box.base_url + "/_sandbox/script", json={UID: ["code:301", "600"]})
    assert posted.json() == {"ok": True, "scripted": [UID]}
    assert [get(box).json()["code"] for _ in range(3)] == [301, 600, 0]
    refused = HTTP.post(box.base_url + "/_sandbox/script", json={UID: ["teapot"]})
    assert refused.status_code == 400 and "unknown sandbox mode 'teapot'" in refused.json()["error"]
    assert HTTP.post(box.base_url + "/_sandbox/script", content=b"[").status_code == 400
    stats = HTTP.get(box.base_url + "/_sandbox/stats")
    assert stats.json() == {"calls": 3, "calls_by_id": {UID: 3}, "successes_by_id": {UID: 1},
                            "by_code": {"301": 1, "600": 1, "0": 1}, "max_in_flight": 1,
                            "max_calls_per_second": 3, "latency_median_s": 0.0,
                            "latency_p90_s": 0.0, "in_flight": 0,
                            "age_s": stats.json()["age_s"], "calls_by_token": {"sandbox": 3},
                            "rate_limited_by_token": {"sandbox": 0}}  # fmt: skip
    assert dataclasses.replace(SandboxStats.from_json(stats.content), age_s=0.0) == (
        dataclasses.replace(box.stats(), age_s=0.0)
    )


def test_fault_mix_hits_a_deterministic_share_of_first_calls_only(
    sandbox: SandboxFactory,
) -> None:
    box, twin = (
        sandbox(fault_mix="301:0.3,html502:0.1", seed=1),
        sandbox(fault_mix="301:0.3,html502:0.1", seed=1),
    )
    with httpx.Client(base_url=box.base_url) as client:
        first = [client.get(V4, params={"token": "sandbox", "userId": uid}) for uid in IDS]
        second = [client.get(V4, params={"token": "sandbox", "userId": uid}) for uid in IDS]
    faulted_301 = {uid for uid, r in zip(IDS, first, strict=True) if r.status_code == 200
                   and r.json()["code"] == 301}  # fmt: skip
    faulted_502 = {uid for uid, r in zip(IDS, first, strict=True) if r.status_code == 502}
    assert 35 <= len(faulted_301) <= 85 and 8 <= len(faulted_502) <= 35
    assert all(r.json()["code"] == 0 for r in second)
    assert {uid for uid in sorted(faulted_301)[:5] if get(twin, uid).json()["code"] == 301} == set(
        sorted(faulted_301)[:5]
    )


def test_never_succeed_ids_always_answer_500(sandbox: SandboxFactory) -> None:
    box = sandbox(never_succeed=0.2, seed=4)
    with httpx.Client(base_url=box.base_url) as client:
        rounds = [[client.get(V4, params={"token": "sandbox", "userId": uid}).json()["code"]
                   for uid in IDS] for _ in range(3)]  # fmt: skip
    assert rounds[0] == rounds[1] == rounds[2]
    assert set(rounds[0]) == {0, 500}
    assert 20 <= rounds[0].count(500) <= 60


def test_from_options_parses_the_cli_strings() -> None:
    config = SandboxConfig.from_options(
        latency="0.05:0.15", rate_limit="50", retry_after=None, daily_quota="100",
        fault_mix="301:0.05, reset:0.02,status:429:302:0.01,502:0.01",
        scripts=f"{UID}=500,ok;{IDS[0]}=reset", gone_versions="v4", never_succeed="0.02",
        seed="3",
    )  # fmt: skip
    assert config.latency == (0.05, 0.15)
    assert (config.rate_limit, config.retry_after, config.daily_quota) == (50.0, None, 100)
    assert dict(config.fault_mix) == {"code:301": 0.05, "reset": 0.02, "status:429:302": 0.01,
                                      "html502": 0.01}  # fmt: skip
    assert dict(config.scripts) == {UID: ("code:500", "ok"), IDS[0]: ("reset",)}
    assert (config.gone_versions, config.never_succeed, config.seed) == (frozenset({"v4"}), 0.02, 3)
    assert SandboxConfig.from_options(latency=0.1, fault_mix="", scripts="").latency == (0.1, 0.1)
    assert SandboxConfig.from_options(latency="0.1-0.2").latency == (0.1, 0.2)
    assert SandboxConfig.from_options(latency=(0, 1)) == SandboxConfig(latency=(0.0, 1.0))
    assert SandboxConfig.from_options(token=None) == SandboxConfig()
    scheduled = SandboxConfig.from_options(rate_schedule="50@0,10@20,80@40", capacity="40")
    assert scheduled.rate_schedule == ((0.0, 50.0), (20.0, 10.0), (40.0, 80.0))
    assert scheduled.capacity == 40
    accounts = SandboxConfig.from_options(token="a", tokens="b, c,a", rate_scope="token")
    assert (accounts.valid_tokens, accounts.rate_scope) == (("a", "b", "c"), "token")
    assert SandboxConfig().valid_tokens == ("sandbox",)


@pytest.mark.parametrize(
    "options",
    [
        {"fault_mix": "301"},
        {"fault_mix": "301:lots"},
        {"fault_mix": "301:0.7,500:0.7"},
        {"fault_mix": "teapot:0.1"},
        {"scripts": "no-equals-sign"},
        {"scripts": f"{UID}=ok,boom"},
        {"latency": "0.5:0.1"},
        {"latency": "1:2:3"},
        {"rate_limit": 0},
        {"rate_schedule": "50"},
        {"rate_schedule": "50@5,10@2"},
        {"rate_schedule": "0@0"},
        {"capacity": 0},
        {"daily_quota": "many"},
        {"never_succeed": 1.5},
        {"gone_versions": "v5"},
        {"token": ""},
        {"rate_scope": "account"},
    ],
)
def test_from_options_refuses_bad_values_with_a_usage_error(options: dict[str, Any]) -> None:
    with pytest.raises(SandboxOptionError) as caught:
        SandboxConfig.from_options(**options)
    assert isinstance(caught.value, UsageError) and isinstance(caught.value, ValueError)
    assert "\n" not in str(caught.value)


def test_extra_tokens_are_a_tuple_of_non_empty_strings() -> None:
    with pytest.raises(SandboxOptionError, match="must not be empty"):
        SandboxConfig(tokens=("a", ""))
    with pytest.raises(SandboxOptionError, match="not one string"):
        SandboxConfig(tokens="ab")  # type: ignore[arg-type]


def test_from_options_rejects_unknown_names() -> None:
    with pytest.raises(TypeError, match="quota"):
        SandboxConfig.from_options(quota=3)


def test_mode_aliases_resolve_to_canonical_names() -> None:
    assert [parse_mode(m).name for m in ["301", "502", " OK ", "html503", "status:400:400"]] == [
        "code:301", "html502", "ok", "html503", "status:400:400"]  # fmt: skip


def test_the_config_repr_does_not_show_the_token() -> None:
    assert "hunter2" not in repr(SandboxConfig(token="hunter2", tokens=("hunter3",)))
    assert "hunter" not in repr(SandboxConfig(token="hunter2", tokens=("hunter3",)))


def test_a_port_in_use_is_a_usage_error_that_is_also_an_os_error(
    sandbox: SandboxFactory,
) -> None:
    port = urlsplit(sandbox().base_url).port
    assert port is not None
    with pytest.raises(SandboxListenError) as caught:
        Sandbox(port=port).start()
    assert isinstance(caught.value, UsageError) and isinstance(caught.value, OSError)
    assert caught.value.strerror is not None and "choose another port" in caught.value.strerror


async def test_serve_answers_until_cancelled() -> None:
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(SandboxConfig(), "127.0.0.1", 0, on_ready=ready.set_result))
    base_url = await asyncio.wait_for(ready, 5)
    async with httpx.AsyncClient(base_url=base_url) as client:
        body = (await client.get(V4, params={"token": "sandbox", "userId": UID})).json()
    assert body["data"]["userid"] == UID
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(httpx.ConnectError):
        httpx.get(base_url + V4)
