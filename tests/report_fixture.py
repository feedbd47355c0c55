"""A realistic output folder for the report's tests, built with the declared schemas.

``build_out`` writes what a few nightly runs would leave: weekly snapshots of ``profiles``,
``profile_tags`` and ``profile_interactions`` (parts by ``sink.write_part``), their
``profile_changes``, ``failures.csv`` (``sink.write_failures``), manifests
(``sink.write_manifest``) and run summaries (``sink.write_run_summary``).  Between the last two
snapshots: a follower spike with its flag and reason, a rename, an ip_location and bio change,
a user deleted (code 404 in failures.csv), a new user, a transient 500 and an input cell that
is not an id.  ``scale=True`` sprinkles the same events over every few hundred creators.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from pipeline import sink
from pipeline.records import Failure, Part
from pipeline.schema import (
    CHANGE_COUNTERS,
    PROFILE_CHANGES,
    PROFILE_INTERACTIONS,
    PROFILE_TAGS,
    PROFILES,
    Table,
)
from tests.helpers import make_id

DATES = (dt.date(2026, 11, 14), dt.date(2026, 11, 21), dt.date(2026, 11, 28))
NICKNAMES = (
    "阿柚子", "小满", "我是小满", "林间小鹿", "Momo的厨房", "成都吃货日记", "一只猫叫土豆",
    "健身的阿杰", "穿搭研究所", "旅行的意义 Travel", "程序员小张", "家居博主Lily", "读书的小王",
    "宝妈日常", "摄影师阿光", "美妆小课堂", "跑步的老陈", "手账girl", "咖啡与猫", "北京胡同里",
)  # fmt: skip
PLACES = ("广东", "上海", "北京", "四川", "浙江", "美国")
PROFESSIONS = ("美食博主", "家居博主", "旅行博主", "美妆博主", "健身博主", "穿搭博主")
SPIKE_REASON = "fans +50,000 in 7 days (+7,143/day): 25× the creator's median daily gain"
RENAMED_TO = "小满的日常"
# The tiers the changes step writes (STIM's bounds): (lower bound, tier, label), ascending.
TIERS = (
    (0, "nano", "素人"),
    (10_000, "micro", "KOC"),
    (50_000, "mid", "腰部"),
    (500_000, "macro", "头部"),
    (1_000_000, "mega", "超头部"),
)


@dataclass(frozen=True, slots=True)
class Events:
    """Who does what between the last two snapshots (indexes of creators)."""

    n: int
    scale: bool

    def spike(self, i: int) -> bool:
        return i == 0 or (self.scale and i % 97 == 0)

    def renamed(self, i: int) -> bool:
        return i == 1 or (self.scale and i % 89 == 1)

    def moved(self, i: int) -> bool:  # ip_location and bio change
        return i == 3 or (self.scale and i % 211 == 3)

    def gone(self, i: int) -> bool:  # deleted: 404 at the last date
        return i == 2 or (self.scale and i % 173 == 2)

    def new(self, i: int) -> bool:  # first seen at the last date
        return i == self.n - 1 or (self.scale and i % 157 == 4)

    def transient(self, i: int) -> bool:  # a 500 at the last date, fetched before
        return i == 5 or (self.scale and i % 401 == 5)

    def present(self, i: int, k: int) -> bool:
        last = k == len(DATES) - 1
        if last:
            return not (self.gone(i) or self.transient(i))
        return not self.new(i)


def nickname(i: int) -> str:
    base = NICKNAMES[i % len(NICKNAMES)]
    return base if i < len(NICKNAMES) else f"{base}{i}"


def fans_at(i: int, n: int, k: int, events: Events) -> int:
    base = int(10 ** (1.0 + 6.2 * ((i * 37) % n) / n)) + i
    per_week = max(base // 50, 1) * (1 + i % 5) * (-1 if i % 11 == 6 else 1)
    fans = max(base + per_week * k, 0)
    if k == len(DATES) - 1 and events.spike(i):
        fans += 50_000
    return fans


def profile_rows(n: int, k: int, events: Events) -> list[dict[str, Any]]:
    date = DATES[k]
    last = k == len(DATES) - 1
    rows = []
    for i in range(n):
        if not events.present(i, k):
            continue
        user_id = make_id(i, "report")
        fans = fans_at(i, n, k, events)
        liked = fans * (3 + i % 9) + k * 17
        collected = liked // 3
        moved = last and events.moved(i)
        rows.append(
            {
                "user_id": user_id,
                "red_id": str(95_000_000 + i),
                "nickname": RENAMED_TO if last and events.renamed(i) else nickname(i),
                "description": "搬到海南了｜日常分享" if moved else f"分享日常 · 合作请私信 {i}",
                "gender": i % 2,
                "ip_location": "海南" if moved else PLACES[i % len(PLACES)],
                "location": f"中国 {PLACES[i % len(PLACES)]}",
                "level": 1 + i % 10,
                "red_official_verified": i % 13 == 0,
                "red_official_verify_type": 1 if i % 13 == 0 else 0,
                "follows": 100 + i % 500,
                "fans": fans,
                "liked": liked,
                "collected": collected,
                "notes_posted": 20 + i % 300 + k,
                "notes_liked": liked,
                "notes_collected": collected,
                "avatar_url": f"https://sns-avatar-qc.xhscdn.com/avatar/{user_id}.jpg",
                "share_link": f"https://www.xiaohongshu.com/user/profile/{user_id}?xsec_token=AB{i}",
                "profession_tags": [PROFESSIONS[i % len(PROFESSIONS)]],
                "location_tag": PLACES[i % len(PLACES)],
                "fetched_at": dt.datetime.combine(date, dt.time(3, i % 60), tzinfo=dt.UTC),
                "request_id": f"req-{k}-{i}",
                "raw_json": "{}",
            }
        )
    return rows


def tag_rows(profiles: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for p in profiles:
        rows.append({"user_id": p["user_id"], "position": 0, "tag_type": "location",
                     "name": p["ip_location"], "icon": None})  # fmt: skip
        rows.append({"user_id": p["user_id"], "position": 1, "tag_type": "profession",
                     "name": p["profession_tags"][0], "icon": None})  # fmt: skip
    return rows


def interaction_rows(profiles: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for p in profiles:
        for kind, name, count in (
            ("follows", "关注", p["follows"]),
            ("fans", "粉丝", p["fans"]),
            ("interaction", "获赞与收藏", p["liked"] + p["collected"]),
        ):
            rows.append({"user_id": p["user_id"], "type": kind, "name": name, "count": count,
                         "count_text": str(count), "is_private": False, "toast": None})  # fmt: skip
    return rows


def tier_of(fans: int | None) -> tuple[str | None, str | None]:
    if fans is None:
        return None, None
    tier = label = None
    for low, name, text in TIERS:
        if fans >= low:
            tier, label = name, text
    return tier, label


def _counters(p: dict[str, Any] | None) -> dict[str, int | None]:
    if p is None:
        return dict.fromkeys(CHANGE_COUNTERS)
    values = {c: p[c] for c in CHANGE_COUNTERS if c != "likes_saves"}
    values["likes_saves"] = p["liked"] + p["collected"]
    return values


def change_rows(
    before: Sequence[dict[str, Any]],
    after: Sequence[dict[str, Any]],
    baseline: dt.date,
    date: dt.date,
    failures: dict[str, Failure],
    events: Events,
) -> list[dict[str, Any]]:
    """``profile_changes`` as the changes step would write it (a simple stand-in)."""
    days = (date - baseline).days
    old = {p["user_id"]: p for p in before}
    new = {p["user_id"]: p for p in after}
    index = {make_id(i, "report"): i for i in range(events.n)}
    rows = []
    for user_id in sorted(old.keys() | new.keys()):
        was, now = old.get(user_id), new.get(user_id)
        row: dict[str, Any] = dict.fromkeys(PROFILE_CHANGES.column_names)
        c_now, c_was = _counters(now), _counters(was)
        for counter in CHANGE_COUNTERS:
            a, b = c_now[counter], c_was[counter]
            row[counter], row[f"{counter}_before"] = a, b
            if a is not None and b is not None:
                row[f"{counter}_delta"] = a - b
                row[f"{counter}_per_day"] = (a - b) / days
                row[f"{counter}_pct"] = (a - b) / b * 100 if b else None
        changed, flags, reasons = [], [], []
        if was is not None and now is not None:
            for field, column in (("nickname", "nickname"), ("description", "description"),
                                  ("ip_location", "ip_location")):  # fmt: skip
                if was[column] != now[column]:
                    changed.append(field)
                    row[f"{field}_before"] = was[column]
            if was["ip_location"] != now["ip_location"]:
                changed.append("tags")
                row["tags_before"] = [was["ip_location"], was["profession_tags"][0]]
        if events.spike(index[user_id]) and date == DATES[-1] and now is not None:
            flags.append("spike")
            reasons.append(SPIKE_REASON)
        failure = failures.get(user_id)
        tier, label = tier_of(row["fans"])
        row.update(
            user_id=user_id,
            baseline_dt=baseline,
            days=days,
            appeared=was is None,
            disappeared=now is None,
            failure_code=failure.code if now is None and failure else None,
            failure_message=failure.message if now is None and failure else None,
            nickname=(now or was or {}).get("nickname"),
            approximate=False,
            changed_fields=changed,
            tier=tier,
            tier_label=label,
            likes_saves_per_follower=(
                c_now["likes_saves"] / row["fans"] if now is not None and row["fans"] else None
            ),
            likes_saves_per_note=None,
            flags=flags,
            flag_reasons=reasons,
        )
        rows.append(row)
    return rows


def failures_at(k: int, n: int, events: Events) -> list[Failure]:
    if k < len(DATES) - 1:
        return [Failure("not-an-id", 400, "not a 24-character hex user id", 0, None)]
    at = dt.datetime.combine(DATES[k], dt.time(3, 30), tzinfo=dt.UTC)
    rows = []
    for i in range(n):
        if events.gone(i):
            rows.append(Failure(make_id(i, "report"), 404, "no such user", 1, at))
        elif events.transient(i):
            rows.append(Failure(make_id(i, "report"), 500, "internal server error", 5, at))
    rows.append(Failure("not-an-id", 400, "not a 24-character hex user id", 0, None))
    return rows


def summary(
    run_id: str,
    date: dt.date,
    started: dt.datetime,
    *,
    outcome: str = "completed",
    calls: int,
    fetched: int,
    failures: Sequence[Failure] = (),
    parts: Sequence[Part] = (),
    duration_s: float = 12.5,
) -> dict[str, Any]:
    """A run summary with every key of ``pipeline/run_summary.schema.json``."""
    complete = outcome == "completed"
    by_code: dict[str, int] = {}
    for failure in failures:
        by_code[str(failure.code)] = by_code.get(str(failure.code), 0) + 1
    finished = started + dt.timedelta(seconds=duration_s)
    return {
        "run_id": run_id,
        "tool_version": "0.1.0",
        "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "snapshot_date": date.isoformat(),
        "out": "/data/xhs",
        "input": {
            "path": "creators.csv",
            "encoding": "utf-8",
            "column": "user_id",
            "sha256": "0" * 64,
            "ingested": False,
        },
        "api": {
            "endpoint": "http://127.0.0.1:9/api/xiaohongshu/get-user/v4",  # loopback only
            "sandbox": False,
        },
        "settings": {
            "concurrency": 16,
            "rate": 20.0,
            "max_attempts": 5,
            "timeout": 60.0,
            "max_calls": None,
            "batch_rows": 2000,
        },
        "requeued_failures": 0,
        "pending_at_start": fetched,
        "outcome": outcome,
        "complete": complete,
        "stopped_by": None,
        "requests": {
            "calls": calls,
            "fetched": fetched,
            "failed": len(failures),
            "retried": calls - fetched,
            "rate_limited": 2,
            "wrong_user": 0,
        },
        "rate_control": {"rate": 20.0, "cuts": 1, "rate_limited": 2},
        "snapshot": {
            "pending": 0 if complete else 7,
            "fetched": 0,
            "written": fetched,
            "failed": len(failures),
            "rejected": 1,
            "failures_by_code": by_code,
            "failed_permanent": len(failures),
            "failed_transient": 0,
            "wrong_user": 0,
        },
        "files": {t: [p.path for p in parts if p.table == t] for t in ("profiles",)},
        "failures_file": f"failures/dt={date.isoformat()}/failures.csv",
        "failures_rows": len(failures),
        "finished_at": finished.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": duration_s,
        "failure_check": None,
        "exit_code": 0 if complete else 130,
    }


def _write(out: Path, table: Table, date: dt.date, rows: list[dict[str, Any]]) -> Part:
    return sink.write_part(out, table, date, pl.DataFrame(rows, schema=table.schema, orient="row"))


def complete_manifest(out: Path, date: dt.date, changes: Part | None) -> None:
    """Date the manifest by its run's end (so two builds are the same bytes), and list the
    ``profile_changes`` part, as the changes step does."""
    path = sink.manifest_path(out, date)
    manifest = json.loads(path.read_text("utf-8"))
    manifest["created_at"] = manifest["summary"]["finished_at"]
    if changes is not None and not manifest["tables"].get(changes.table):
        manifest["tables"][changes.table] = [{"path": changes.path, "rows": changes.rows}]
        manifest["rows"][changes.table] = changes.rows
    sink.write_json_atomic(path, manifest, out / sink.TMP_DIR)


def build_out(
    out: Path,
    n: int = 40,
    *,
    snapshots: int = 3,
    scale: bool = False,
    with_changes: bool = True,
) -> Path:
    """Write ``snapshots`` weekly snapshots of ``n`` creators (the last ones of ``DATES``)."""
    events = Events(n, scale)
    first = len(DATES) - snapshots
    previous: list[dict[str, Any]] | None = None
    for k in range(first, len(DATES)):
        date = DATES[k]
        profiles = profile_rows(n, k, events)
        failures = failures_at(k, n, events)
        parts = [
            _write(out, PROFILES, date, profiles),
            _write(out, PROFILE_TAGS, date, tag_rows(profiles)),
            _write(out, PROFILE_INTERACTIONS, date, interaction_rows(profiles)),
        ]
        sink.write_failures(out, date, failures)
        started = dt.datetime.combine(date, dt.time(3, 0), tzinfo=dt.UTC)
        run = summary(f"{k:08x}", date, started, calls=len(profiles) + 7,
                      fetched=len(profiles), failures=failures, parts=parts,
                      duration_s=60.0 + 0.9 * n)  # fmt: skip
        sink.write_run_summary(out, run["run_id"], run)
        sink.write_manifest(out, date, parts, len(failures), run)
        changes = None
        if with_changes:
            failed = {f.user_id: f for f in failures}
            rows = (
                change_rows(previous, profiles, DATES[k - 1], date, failed, events)
                if previous is not None
                else []
            )
            changes = _write(out, PROFILE_CHANGES, date, rows)
        complete_manifest(out, date, changes)
        previous = profiles
    # A rerun of the last date that found nothing to do, and tonight's run, killed mid-way.
    last = DATES[-1]
    rerun = summary("0000000a", last, dt.datetime.combine(last, dt.time(9, 15), tzinfo=dt.UTC),
                    calls=0, fetched=0, duration_s=0.4)  # fmt: skip
    sink.write_run_summary(out, rerun["run_id"], rerun)
    tonight = last + dt.timedelta(days=7)
    killed = summary("0000000b", tonight, dt.datetime.combine(tonight, dt.time(3), tzinfo=dt.UTC),
                     outcome="interrupted", calls=n // 2, fetched=n // 2 - 3)  # fmt: skip
    sink.write_run_summary(out, killed["run_id"], killed)
    return out
