"""Crash anywhere: a real ``python -m pipeline run`` killed with SIGKILL, then resumed.

Each named crash point (``pipeline.crashpoints``) is armed through ``XHS_PROFILES_CRASH_AT`` in a
subprocess run against a sandbox on 127.0.0.1; the run must die with SIGKILL where the point
says, and a resume without the variable must complete.  A randomised kill loop does the same at
random moments (``make soak`` runs it with ``--soak-kills 50``).  What every test proves, after a
kill and after the resume:

- every valid input id is in exactly one place: the state holds each once (pending, fetched,
  written or failed), and a completed snapshot has it in the profiles table or in failures.csv;
- no id twice in any table: ``user_id`` unique in profiles, ``(user_id, position)`` in
  profile_tags, ``(user_id, type)`` in profile_interactions;
- every Parquet file in a partition folder is whole (``pyarrow.parquet.read_table`` reads it);
  a completed snapshot's manifest lists exactly the files on disk and ``OUT/_tmp`` is empty;
- the calls paid twice (sandbox ``successes_by_id``) are at most ``--concurrency`` per kill.
"""

from __future__ import annotations

import collections
import csv
import datetime as dt
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.crashpoints import ENV as CRASH_ENV
from pipeline.crashpoints import POINTS
from pipeline.sandbox import Sandbox
from pipeline.schema import FETCHED_TABLES, PROFILES
from pipeline.schema import TABLES as DECLARED_TABLES
from pipeline.state import State
from tests.helpers import make_id

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = "2026-11-28"
DAY = dt.date.fromisoformat(SNAPSHOT)
CONCURRENCY = 8
BATCH_ROWS = 50
# From the one declaration, so a new table is checked here without editing this file.
TABLES = tuple(t.name for t in DECLARED_TABLES)
TABLE_KEYS = {t.name: t.key for t in DECLARED_TABLES}
INVALID_CELLS = ("not-an-id", "=HYPERLINK(1)")
LATENCY = (0.005, 0.02)
KILLED = -signal.SIGKILL
SandboxFactory = Callable[..., Sandbox]


# ------------------------------------------------------------------------------ a dataset


@dataclass
class Dataset:
    """One input file, its expected outcome and one --out folder."""

    root: Path
    ids: list[str]  # valid, distinct
    doomed: frozenset[str]  # valid ids the sandbox answers 404 for: they end in failures.csv
    csv_path: Path = field(init=False)
    out: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.root / "ids.csv"
        self.out = self.root / "out"
        # Duplicates and invalid cells too: the state must dedupe and reject, crash or not.
        cells = [*self.ids, *self.ids[:5], *INVALID_CELLS]
        self.csv_path.write_text("user_id\n" + "".join(f"{c}\n" for c in cells), encoding="utf-8")


# 404 on every call, not just the first: a kill between the sandbox's 404 and the state's record
# of it sends the id again on resume, and a second call must not succeed.
DOOMED_SCRIPT: Final = ["404"] * 50


def make_dataset(root: Path, n: int, salt: str) -> Dataset:
    ids = [make_id(i, salt) for i in range(n)]
    return Dataset(root, ids, frozenset(ids[7:9]))


def start_api(sandbox: SandboxFactory, datasets: Iterable[Dataset], **options: Any) -> Sandbox:
    scripts = {uid: DOOMED_SCRIPT for d in datasets for uid in d.doomed}
    return sandbox(latency=LATENCY, scripts=scripts, **options)


def start_cli(data: Dataset, api: Sandbox, *, crash_at: str | None = None) -> subprocess.Popen[str]:
    """Start ``python -m pipeline run`` on ``data`` against ``api``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (CRASH_ENV, "JUSTONEAPI_TOKEN", "JUSTONEAPI_BASE_URL")
    }
    if crash_at is not None:
        env[CRASH_ENV] = crash_at
    command = [
        sys.executable, "-m", "pipeline", "run", str(data.csv_path), "--out", str(data.out),
        "--base-url", api.base_url, "--token", "sandbox", "--no-progress",
        "--concurrency", str(CONCURRENCY), "--batch-rows", str(BATCH_ROWS),
        "--snapshot-date", SNAPSHOT, "--max-attempts", "3",
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def finish(proc: subprocess.Popen[str]) -> Finished:
    stdout, stderr = proc.communicate(timeout=60)
    return Finished(proc.returncode, stdout, stderr)


def run_cli(data: Dataset, api: Sandbox, *, crash_at: str | None = None) -> Finished:
    return finish(start_cli(data, api, crash_at=crash_at))


# ------------------------------------------------------------------------------ what is on disk


def parquet_files(out: Path) -> set[str]:
    """Every Parquet file a reader's glob would find, relative to OUT."""
    return {p.relative_to(out).as_posix() for t in TABLES for p in (out / t).glob("*/*.parquet")}


def read_whole(out: Path, relative: str) -> pa.Table:
    """Read a part; a torn or half-written file makes this raise."""
    return pq.read_table(out / relative)


def status_by_id(out: Path) -> dict[str, str]:
    """The state's ids and their status (read while no run holds OUT)."""
    path = out / "_state" / f"dt={SNAPSHOT}.sqlite"
    if not path.exists():
        return {}
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT user_id, status FROM ids").fetchall())
    finally:
        conn.close()


def recorded_parts(out: Path) -> dict[str, str]:
    """path → table of the parts the state records; opening it proves the state still opens."""
    if not (out / "_state").exists():
        return {}
    with State.open(out, DAY) as state:
        return {part.path: part.table for part in state.parts()}


def tmp_leftovers(out: Path) -> list[str]:
    tmp = out / "_tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []


def duplicated_keys(tables: Iterable[pa.Table], keys: tuple[str, ...]) -> list[tuple[Any, ...]]:
    counts: collections.Counter[tuple[Any, ...]] = collections.Counter()
    for table in tables:
        counts.update(zip(*(table.column(k).to_pylist() for k in keys), strict=True))
    return [key for key, n in counts.items() if n > 1]


def read_failures(out: Path) -> list[dict[str, str]]:
    path = out / "failures" / f"dt={SNAPSHOT}" / "failures.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def stored_count(statuses: dict[str, str]) -> int:
    return sum(1 for s in statuses.values() if s in ("fetched", "written"))


# ------------------------------------------------------------------------------ the invariants


def check_after_kill(data: Dataset) -> dict[str, str]:
    """What must hold the moment a run died, whatever it was doing; returns the statuses."""
    statuses = status_by_id(data.out)
    # The input is ingested in one transaction: all of it or none of it.
    assert set(statuses) in (set(), set(data.ids)), "the state holds part of the input"
    parts = recorded_parts(data.out)
    on_disk = parquet_files(data.out)
    assert set(parts) <= on_disk, f"recorded parts missing on disk: {set(parts) - on_disk}"
    # Every file a reader could see is whole, orphan or not (written in _tmp, then renamed).
    read = {path: read_whole(data.out, path) for path in on_disk}
    for table in TABLES:
        recorded = [read[p] for p, t in parts.items() if t == table]
        assert duplicated_keys(recorded, TABLE_KEYS[table]) == [], table
    written = {uid for uid, s in statuses.items() if s == "written"}
    in_profiles = [
        uid for p, t in parts.items() if t == "profiles" for uid in read[p]["user_id"].to_pylist()
    ]
    assert sorted(in_profiles) == sorted(written), "recorded profiles differ from written ids"
    return statuses


def check_complete(data: Dataset, api: Sandbox, *, kills: int = 1) -> None:
    """What must hold once a run (resumed or not) completed the snapshot."""
    out = data.out
    statuses = status_by_id(out)
    assert set(statuses) == set(data.ids)
    assert collections.Counter(statuses.values()) == {
        "written": len(data.ids) - len(data.doomed),
        "failed": len(data.doomed),
    }
    on_disk = parquet_files(out)
    manifest = json.loads((out / "_manifests" / f"dt={SNAPSHOT}.json").read_text("utf-8"))
    listed = {e["path"]: e["rows"] for files in manifest["tables"].values() for e in files}
    assert set(listed) == on_disk, "the manifest does not list exactly the files on disk"
    assert set(recorded_parts(out)) == on_disk
    tables: dict[str, list[pa.Table]] = {t: [] for t in TABLES}
    for path in sorted(on_disk):
        table = read_whole(out, path)
        assert table.num_rows == listed[path], path
        tables[path.split("/", 1)[0]].append(table)
    for name in TABLES:
        assert duplicated_keys(tables[name], TABLE_KEYS[name]) == [], name
    profile_ids = [uid for t in tables["profiles"] for uid in t["user_id"].to_pylist()]
    assert sorted(profile_ids) == sorted(set(data.ids) - data.doomed)
    for name in (t for t in TABLES if t != PROFILES.name):
        owners = {uid for t in tables[name] for uid in t["user_id"].to_pylist()}
        assert owners <= set(profile_ids), f"{name} rows of ids that are not profiles"
    failures = read_failures(out)
    assert sorted((r["user_id"], r["code"]) for r in failures) == sorted(
        [(uid, "404") for uid in data.doomed] + [("not-an-id", "400"), ("'=HYPERLINK(1)", "400")]
    )
    assert tmp_leftovers(out) == []
    for name in (*TABLES, "failures"):
        assert (out / name / f"dt={SNAPSHOT}" / "_SUCCESS").exists(), name
    stats = api.stats()
    ours = set(data.ids)
    paid_twice = {uid: n for uid, n in stats.successes_by_id.items() if uid in ours and n > 1}
    assert len(paid_twice) <= CONCURRENCY * kills, paid_twice
    assert all(stats.successes_by_id.get(uid) for uid in set(data.ids) - data.doomed)


# ------------------------------------------------------------------------------ crash points

# Each point with the reach that lands it mid-run (300 ids, 50 per part, a part per table a flush),
# and what the folder must show right after the kill, proving the point is where it claims.
CRASH_AT = {
    "after_response": "after_response:120",
    "after_store": "after_store:120",
    "mid_part_write": "mid_part_write:4",
    "after_part_rename": "after_part_rename:2",
    "mid_failures_write": "mid_failures_write:1",
    "after_compact_swap": "after_compact_swap:1",
    "before_manifest": "before_manifest:1",
}


def test_every_crash_point_is_covered() -> None:
    # mid_assembly is reached by sharded runs only: tests/test_shards.py kills a shard there.
    assert sorted([*CRASH_AT, "mid_assembly"]) == sorted(POINTS)


def assert_died_where_the_point_says(point: str, data: Dataset, statuses: dict[str, str]) -> None:
    out = data.out
    stored = stored_count(statuses)
    orphans = parquet_files(out) - set(recorded_parts(out))
    leftovers = tmp_leftovers(out)
    manifest = out / "_manifests" / f"dt={SNAPSHOT}.json"
    all_done = stored == len(data.ids) - len(data.doomed)
    if point == "after_response":
        assert stored == 119  # the 120th answer was paid for and never stored
    elif point == "after_store":
        assert stored == 120
    elif point == "mid_part_write":
        # The 4th part (the first of the second flush) is torn in _tmp, never in a partition.
        [torn] = leftovers
        assert torn.startswith("part-") and torn.endswith(".tmp")
        with pytest.raises(pa.ArrowInvalid):
            pq.read_table(out / "_tmp" / torn)
        assert orphans == set()
    elif point == "after_part_rename":
        # The second flush's parts (one per fetched table) are in place, unknown to the state.
        flushed = {t.name for t in FETCHED_TABLES}
        assert len(orphans) == len(flushed)
        assert {o.split("/", 1)[0] for o in orphans} == flushed
    elif point == "mid_failures_write":
        [torn] = leftovers
        assert torn.startswith("failures.csv.")
        assert not (out / "failures" / f"dt={SNAPSHOT}" / "failures.csv").exists()
        assert all_done
    elif point == "after_compact_swap":
        # The state swapped the small profiles parts for one; the old files are still there.
        assert len(orphans) >= 2 and all(o.startswith("profiles/") for o in orphans)
        assert all_done
    elif point == "before_manifest":
        assert all_done and orphans == set() and leftovers == []
        assert not manifest.exists()
        assert (out / "failures" / f"dt={SNAPSHOT}" / "failures.csv").exists()
    if point not in ("before_manifest",):
        assert not manifest.exists()


@pytest.mark.slow
@pytest.mark.parametrize("point", list(CRASH_AT))
def test_a_kill_at_each_crash_point_then_a_resume_loses_and_duplicates_nothing(
    sandbox: SandboxFactory, tmp_path: Path, point: str
) -> None:
    data = make_dataset(tmp_path / point, 300, salt=point)
    api = start_api(sandbox, [data])

    crashed = run_cli(data, api, crash_at=CRASH_AT[point])
    assert crashed.returncode == KILLED, crashed
    time.sleep(0.1)  # requests already sent may still reach the sandbox's ledger
    statuses = check_after_kill(data)
    assert_died_where_the_point_says(point, data, statuses)

    resumed = run_cli(data, api)
    assert resumed.returncode == 0, resumed
    check_complete(data, api)


# ------------------------------------------------------------------------------ random kills


@dataclass
class KillLoopReport:
    kills: int = 0
    completed_runs: int = 0
    mid_fetch_kills: int = 0  # kills that found answers stored and ids still pending


def kill_loop(
    sandbox: SandboxFactory, root: Path, kills: int, seed: int, ids_per_dataset: int
) -> KillLoopReport:
    """Run, SIGKILL at a random moment, check, resume...; ``kills`` times, then finish.

    A dataset whose run completes before its kill is checked as complete and replaced by a new
    one, so the kills keep landing on runs with work left; ``mid_fetch_kills`` counts those that
    interrupted the fetching itself (some answers stored, some ids still pending).
    """
    rng = random.Random(seed)
    report = KillLoopReport()
    api = start_api(sandbox, [], fault_mix="301:0.03", seed=seed)
    finished: list[Dataset] = []

    def new_dataset() -> Dataset:
        data = make_dataset(root / f"d{len(finished)}", ids_per_dataset, f"{seed}-{len(finished)}")
        for uid in data.doomed:
            api.script(uid, DOOMED_SCRIPT)
        return data

    def paid_and_lost(data: Dataset, statuses: dict[str, str]) -> int:
        successes = api.stats().successes_by_id
        return sum(successes.get(uid, 0) for uid in data.ids) - stored_count(statuses)

    data = new_dataset()
    lost_before = 0  # successful calls of ``data`` whose answers were never stored, so far
    kills_of_data = 0
    while report.kills < kills:
        proc = start_cli(data, api)
        delay = rng.uniform(0.3, 3.0)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        run = finish(proc)
        if run.returncode == 0:  # it finished first: check it, then take a new dataset
            report.completed_runs += 1
            check_complete(data, api, kills=max(1, kills_of_data))
            finished.append(data)
            data, lost_before, kills_of_data = new_dataset(), 0, 0
            continue
        assert run.returncode == KILLED, run
        report.kills += 1
        kills_of_data += 1
        time.sleep(0.2)  # let requests sent before the kill reach the ledger
        statuses = check_after_kill(data)
        if stored_count(statuses) > 0 and "pending" in statuses.values():
            report.mid_fetch_kills += 1
        lost = paid_and_lost(data, statuses)
        assert lost - lost_before <= CONCURRENCY, (
            f"kill {report.kills} after {delay:.2f}s lost {lost - lost_before} paid answers"
        )
        lost_before = lost
    final = run_cli(data, api)
    assert final.returncode == 0, final
    check_complete(data, api, kills=max(1, kills_of_data))
    return report


@pytest.mark.slow
def test_random_kills_then_resume_lose_and_duplicate_nothing(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """The short loop of ``make test``: three random SIGKILLs, each followed by a resume."""
    report = kill_loop(sandbox, tmp_path, kills=3, seed=20261128, ids_per_dataset=400)
    # kill_loop checked every kill and the final resume; those checks prove something only if a
    # kill interrupted the fetching (a kill before the first answer or after the last one leaves
    # nothing paid-for to lose).  (report.kills == 3 is what the loop runs until: no check.)
    assert report.mid_fetch_kills >= 1, report


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_soak_random_kills(
    sandbox: SandboxFactory, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``make soak``: ``--soak-kills`` random SIGKILLs and resumes (skipped without it)."""
    kills = request.config.getoption("--soak-kills")
    if not kills:
        pytest.skip("the soak runs only with --soak-kills N (make soak)")
    report = kill_loop(sandbox, tmp_path, kills=kills, seed=7, ids_per_dataset=600)
    assert report.mid_fetch_kills >= 1, report
    print(
        f"\nsoak: {report.kills} kills ({report.mid_fetch_kills} mid-fetch), "
        f"{report.completed_runs} runs completed before a kill"
    )


# ------------------------------------------------------------------------------ the lock


@pytest.mark.slow
def test_a_second_run_on_the_same_out_refuses_with_the_lock_message(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    data = make_dataset(tmp_path / "locked", 200, salt="lock")
    api = start_api(sandbox, [data])
    # The first run is slowed down so that it still holds the lock when the second starts.
    api_slow = sandbox(latency=(0.3, 0.3), scripts={uid: DOOMED_SCRIPT for uid in data.doomed})
    first = start_cli(data, api_slow)
    try:
        lock = data.out / "_state" / "lock"
        deadline = time.monotonic() + 30
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None, finish(first)
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.02)

        second = run_cli(data, api)
        assert second.returncode == 2, second
        assert second.stdout == ""
        assert second.stderr == (
            f"xhs-profiles: another xhs-profiles run is using {data.out} (pid {first.pid}); "
            "wait for it or use another --out\n"
        )
        assert api.stats().calls == 0  # refused before any call
    finally:
        done = finish(first)
    assert done.returncode == 0, done
    check_complete(data, api_slow)
