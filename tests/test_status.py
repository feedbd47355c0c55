"""``xhs-profiles status`` and ``status --check``: exact lines and exit codes through CliRunner,
on output folders made by real runs against the sandbox (127.0.0.1), read while a run holds them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pipeline import status
from pipeline.cli import Seams, cli
from pipeline.errors import IncompleteSnapshot, StateLockedError, UsageError
from pipeline.records import FetchedProfile
from pipeline.state import State
from pipeline.timestamps import utcnow
from tests.helpers import QUICK_START, make_id, write_ids

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = "2026-11-28"
DAY = dt.date.fromisoformat(SNAPSHOT)
TOKEN = "status-test-token-5f1e"  # must never show in status output
FAST_RETRIES = {"backoff_base": 0.001, "backoff_cap": 0.001, **QUICK_START}
SIX = [make_id(i) for i in range(6)]
SAMPLE = json.loads((REPO / "tests/golden/seed-get-user-v4-response.json").read_text())


def run(sandbox, out: Path, ids: list[str], *extra: str, snapshot: str = SNAPSHOT, **box) -> Result:
    """A real ``xhs-profiles run`` of ``ids`` into ``out`` against a fresh sandbox."""
    api = sandbox(token=TOKEN, **box)
    csv_path = write_ids(out.parent / f"ids-{snapshot}.csv", ids)
    args = ["run", str(csv_path), "--out", str(out), "--base-url", api.base_url]
    args += ["--snapshot-date", snapshot, "--no-progress", "--max-attempts", "2", *extra]
    env = {"JUSTONEAPI_TOKEN": TOKEN, "JUSTONEAPI_BASE_URL": None}
    return CliRunner().invoke(cli, args, obj=Seams(config_overrides=FAST_RETRIES), env=env)


def invoke(*args: str, now: dt.datetime | None = None) -> Result:
    seams = Seams() if now is None else Seams(clock=lambda: now)
    return CliRunner().invoke(cli, ["status", *args], obj=seams)


def completed_at(out: Path, snapshot: str = SNAPSHOT) -> dt.datetime:
    manifest = json.loads((out / "_manifests" / f"dt={snapshot}.json").read_text())
    return dt.datetime.fromisoformat(manifest["created_at"])


def run_id(out: Path, snapshot: str = SNAPSHOT) -> str:
    ids = [
        json.loads(p.read_text())["run_id"]
        for p in sorted((out / "_runs").glob("*.json"))
        if json.loads(p.read_text())["snapshot_date"] == snapshot
    ]
    return ids[-1]


def with_failures(n: int = 10) -> tuple[list[str], dict[str, list[str]]]:
    """``n`` ids: two answer 404 (permanent), one 500 on every attempt (transient)."""
    ids = [make_id(i, "status") for i in range(n)]
    return ids, {ids[0]: ["404"] * 9, ids[1]: ["404"] * 9, ids[2]: ["500"] * 9}


@pytest.fixture
def done(sandbox, tmp_path: Path) -> Path:
    """A complete snapshot of 6 ids and one cell that is not an id."""
    out = tmp_path / "out"
    result = run(sandbox, out, [*SIX, "not-an-id"])
    assert result.exit_code == 0, result.output
    return out


# ------------------------------------------------------------------------ --check


def test_a_complete_fresh_snapshot_exits_0_with_one_line(done: Path) -> None:
    now = completed_at(done) + dt.timedelta(hours=3, minutes=12, seconds=40)
    result = invoke(str(done), "--check", now=now)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"ok: snapshot {SNAPSHOT} complete 3h12m ago (6 profiles, 0 failed, 1 rejected)\n"
    )
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("max_age", "limit", "age", "shown_age", "shown_limit"),
    [
        ([], dt.timedelta(hours=26), dt.timedelta(hours=27, minutes=5), "1d3h", "26h"),
        (["--max-age", "90m"], dt.timedelta(minutes=90), dt.timedelta(minutes=91), "1h31m", "90m"),
        (["--max-age", "2d"], dt.timedelta(days=2), dt.timedelta(days=2, seconds=1), "2d", "2d"),
        (["--max-age", "3600s"], dt.timedelta(hours=1), dt.timedelta(seconds=3601), "1h", "1h"),
    ],
)
def test_a_snapshot_completed_longer_ago_than_max_age_exits_7(
    done: Path,
    max_age: list[str],
    limit: dt.timedelta,
    age: dt.timedelta,
    shown_age: str,
    shown_limit: str,
) -> None:
    now = completed_at(done) + age
    result = invoke(str(done), "--check", *max_age, now=now)
    assert result.exit_code == 7
    assert result.stdout == ""
    assert result.stderr == (
        f"xhs-profiles: snapshot {SNAPSHOT} completed {shown_age} ago, more than --max-age "
        f"{shown_limit}: check that the scheduled run starts and finishes (its summaries are "
        f"in {done / '_runs'})\n"
    )
    at_the_limit = invoke(str(done), "--check", *max_age, now=completed_at(done) + limit)
    assert at_the_limit.exit_code == 0, at_the_limit.output


def test_a_snapshot_stopped_by_max_calls_is_incomplete_exit_8(sandbox, tmp_path: Path) -> None:
    out = tmp_path / "out"
    stopped = run(sandbox, out, SIX, "--max-calls", "2", "--concurrency", "1")
    assert stopped.exit_code == 4, stopped.output
    result = invoke(str(out), "--check")
    assert result.exit_code == 8
    assert result.stderr == (
        f"xhs-profiles: snapshot {SNAPSHOT} is not complete: 4 pending, 0 failed (last run "
        f"{run_id(out)}: budget, exit 4); a run may still be going, else rerun the same "
        "command to resume\n"
    )


def test_the_newest_snapshot_is_the_one_expected_unless_date_says(sandbox, done: Path) -> None:
    stopped = run(
        sandbox, done, [make_id(i) for i in range(3)], "--max-calls", "0", snapshot="2026-11-29"
    )
    assert stopped.exit_code == 4, stopped.output
    now = completed_at(done) + dt.timedelta(minutes=5)
    assert invoke(str(done), "--check", now=now).exit_code == 8
    older = invoke(str(done), "--check", "--date", SNAPSHOT, now=now)
    assert older.exit_code == 0, older.output
    assert older.stdout.startswith(f"ok: snapshot {SNAPSHOT} complete 5m ago")
    missing = invoke(str(done), "--check", "--date", "2026-11-30", now=now)
    assert missing.exit_code == 8
    assert missing.stderr == (
        f"xhs-profiles: snapshot 2026-11-30 has not started (the newest in {done} is "
        "2026-11-29): run it, or check the scheduler\n"
    )


def test_over_the_limits_given_to_status_exits_6(sandbox, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ids, scripts = with_failures()
    assert run(sandbox, out, ids, scripts=scripts).exit_code == 0  # the run had no limits
    result = invoke(str(out), "--check", "--max-failures", "2")
    assert result.exit_code == 6
    assert result.stderr == (
        f"xhs-profiles: snapshot {SNAPSHOT}: failed 30.0% of ids (3 of 10: 2 permanent, "
        "1 transient), over --max-failures 2; no previous snapshot; everything is written; "
        f"see failures/dt={SNAPSHOT}/failures.csv\n"
    )
    assert invoke(str(out), "--check", "--max-failure-rate", "0.3").exit_code == 0
    assert invoke(str(out), "--check").exit_code == 0


def test_over_the_limits_the_run_recorded_exits_6_unless_status_gives_its_own(
    sandbox, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    ids, scripts = with_failures()
    first = run(sandbox, out, ids, "--max-failure-rate", "0.2", scripts=scripts)
    assert first.exit_code == 6, first.output
    result = invoke(str(out), "--check")
    assert result.exit_code == 6
    assert result.stderr == (
        f"xhs-profiles: snapshot {SNAPSHOT}: failed 30.0% of ids (3 of 10: 2 permanent, "
        "1 transient), over --max-failure-rate 0.2; no previous snapshot; everything is "
        f"written; see failures/dt={SNAPSHOT}/failures.csv\n"
    )
    assert invoke(str(out), "--check", "--max-failure-rate", "0.5").exit_code == 0
    text = invoke(str(out))
    assert text.stdout.splitlines()[0].endswith(", over the run's failure limits")


def test_status_compares_with_the_previous_snapshot_as_run_does(sandbox, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ids, scripts = with_failures()
    assert run(sandbox, out, ids, scripts=scripts).exit_code == 0
    assert run(sandbox, out, ids[1:], scripts=scripts, snapshot="2026-11-29").exit_code == 0
    result = invoke(str(out), "--check", "--max-failures", "1")
    assert result.exit_code == 6
    assert "failed 22.2% of ids (2 of 9: 1 permanent, 1 transient)" in result.stderr
    assert "previous snapshot 30.0%" in result.stderr


def test_no_snapshot_at_all_exits_7(tmp_path: Path) -> None:
    result = invoke(str(tmp_path), "--check")
    assert result.exit_code == 7
    assert result.stderr == (
        f"xhs-profiles: no snapshot in {tmp_path} yet: check that the scheduled run starts and "
        "writes to this folder\n"
    )
    assert invoke(str(tmp_path)).stdout == f"{tmp_path}: no snapshot yet\n"


@pytest.mark.parametrize("value", ["5x", "26", "0h", "-1h", "1.5h", "h", ""])
def test_a_bad_max_age_is_a_usage_error(done: Path, value: str) -> None:
    result = invoke(str(done), "--check", "--max-age", value)
    assert result.exit_code == 2
    assert result.stderr == (
        f"xhs-profiles: --max-age must be a duration such as 90m, 26h, 2d or 3600s, got {value!r}\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-age", "2h"], "--max-age applies to --check only: add --check"),
        (["--max-failures", "3"], "--max-failures applies to --check only: add --check"),
        (["--date", "28/11/2026"], "--date must be a date as YYYY-MM-DD, got '28/11/2026'"),
    ],
)
def test_options_that_make_no_sense_are_usage_errors(
    done: Path, args: list[str], message: str
) -> None:
    result = invoke(str(done), *args)
    assert result.exit_code == 2
    assert result.stderr == f"xhs-profiles: {message}\n"


def test_a_dir_that_is_not_an_output_folder_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = invoke(str(missing), "--check")
    assert result.exit_code == 2
    assert (
        result.stderr == f"xhs-profiles: {missing} does not exist: give the --out folder of a run\n"
    )
    (tmp_path / "notes.txt").write_text("x")
    foreign = invoke(str(tmp_path))
    assert foreign.exit_code == 2
    assert foreign.stderr == (
        f"xhs-profiles: {tmp_path} is not an xhs-profiles output folder (no _state, _manifests "
        "or _runs in it): give the --out folder of a run\n"
    )
    afile = invoke(str(tmp_path / "notes.txt"))
    assert afile.exit_code == 2
    assert afile.stderr == (
        f"xhs-profiles: {tmp_path / 'notes.txt'} is a file: give the --out folder of a run\n"
    )


def test_a_state_that_is_not_sqlite_is_a_one_line_error(done: Path) -> None:
    bad = done / "_state" / "dt=2026-11-29.sqlite"
    bad.write_bytes(b"not a database at all " * 100)
    result = invoke(str(done))
    assert result.exit_code == 2
    assert result.stderr == (
        f"xhs-profiles: {bad}: not an xhs-profiles state (not a SQLite database)\n"
    )


# ------------------------------------------------------------------------ the report


def test_the_text_report_has_a_block_per_snapshot(sandbox, done: Path) -> None:
    # One call at a time, in user_id order: the first two answer 404, the next two succeed.
    ids = sorted(make_id(i, "text") for i in range(5))
    scripts = {ids[0]: ["404"], ids[1]: ["404"]}
    assert run(sandbox, done, ids, "--max-calls", "4", "--concurrency", "1", scripts=scripts,
               snapshot="2026-11-29").exit_code == 4  # fmt: skip
    lines = invoke(str(done)).stdout.splitlines()
    assert lines[0].startswith(f"snapshot {SNAPSHOT}: complete at 2")
    assert lines[1:4] == [
        "  ids       6 written, 0 fetched, 0 pending, 0 failed",
        "  rejected  1 input cell",
        "  calls     6 in 1 run",
    ]
    assert lines[4].startswith(f"  last run  {run_id(done)} 2")
    assert lines[4].endswith(", completed, exit 0")
    assert lines[5:9] == [
        "snapshot 2026-11-29: not complete",
        "  ids       2 written, 0 fetched, 1 pending, 2 failed (2 permanent, 0 transient; by code "
        "404: 2)",
        "  rejected  0 input cells",
        "  calls     4 in 1 run",
    ]
    assert lines[9].endswith(", budget, exit 4")
    only = invoke(str(done), "--date", "2026-11-29").stdout.splitlines()
    assert only == lines[5:]


def test_json_is_one_document_and_check_adds_its_verdict(sandbox, done: Path) -> None:
    ids, scripts = with_failures(4)
    run(sandbox, done, ids, scripts=scripts, snapshot="2026-11-29")
    result = invoke(str(done), "--json")
    assert result.exit_code == 0, result.output
    assert TOKEN not in result.output
    document = json.loads(result.stdout)
    assert document["out"] == str(done)
    first, second = document["snapshots"]
    assert first == {
        "snapshot_date": SNAPSHOT,
        "complete": True,
        "completed_at": first["completed_at"],
        "written": 6,
        "fetched": 0,
        "pending": 0,
        "failed": 0,
        "failed_permanent": 0,
        "failed_transient": 0,
        "failed_by_code": {},
        "rejected": 1,
        "calls": 6,
        "runs": 1,
        "last_run": {
            "run_id": run_id(done),
            "started_at": first["last_run"]["started_at"],
            "finished_at": first["last_run"]["finished_at"],
            "outcome": "completed",
            "exit_code": 0,
            "calls": 6,
            "file": first["last_run"]["file"],
        },
        "failure_check": {"exceeded": False, "max_failure_rate": None, "max_failures": None},
        "state_file": f"_state/dt={SNAPSHOT}.sqlite",
    }
    assert dt.datetime.fromisoformat(first["completed_at"]) == completed_at(done)
    assert first["last_run"]["file"].startswith("_runs/")
    assert (second["written"], second["failed"]) == (1, 3)
    assert second["failed_by_code"] == {"404": 2, "500": 1}
    assert (second["failed_permanent"], second["failed_transient"]) == (2, 1)
    # calls: 1 success, 2 permanent 404s, and the 500 on each of its 2 attempts
    assert second["calls"] == 5

    checked = invoke(str(done), "--json", "--check", "--max-failures", "0")
    assert checked.exit_code == 6
    verdict = json.loads(checked.stdout)["check"]
    assert verdict["exit_code"] == 6
    assert verdict["message"].startswith("snapshot 2026-11-29: failed 75.0% of ids")
    assert checked.stderr == f"xhs-profiles: {verdict['message']}\n"
    fine = invoke(str(done), "--json", "--check", "--date", SNAPSHOT)
    assert fine.exit_code == 0
    assert json.loads(fine.stdout)["check"]["message"].startswith(f"ok: snapshot {SNAPSHOT}")


def test_a_snapshot_whose_state_was_removed_reads_its_manifest(sandbox, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ids, scripts = with_failures()
    run(sandbox, out, [*ids, "bad-cell"], scripts=scripts)
    from_state = json.loads(invoke(str(out), "--json").stdout)["snapshots"][0]
    (out / "_state" / f"dt={SNAPSHOT}.sqlite").unlink()
    from_manifest = json.loads(invoke(str(out), "--json").stdout)["snapshots"][0]
    assert from_manifest == {**from_state, "state_file": None}


# ------------------------------------------------------------------------ beside a run


def files_of(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
    }


def test_reading_a_closed_state_leaves_no_wal_or_shm_behind(done: Path) -> None:
    before = files_of(done / "_state")
    assert sorted(before) == ["dt=2026-11-28.sqlite", "lock"]
    assert invoke(str(done)).exit_code == 0
    assert invoke(str(done), "--check").exit_code == 0
    assert files_of(done / "_state") == before


def test_status_reads_a_state_a_run_holds_without_touching_it(sandbox, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(sandbox, out, SIX, "--max-calls", "2", "--concurrency", "1").exit_code == 4
    with State.open(out, DAY) as state:  # holds OUT/_state/lock, as a running run does
        pending = next(state.iter_pending())
        data = json.dumps({**SAMPLE["data"], "userid": pending.user_id}).encode()
        state.record_success(FetchedProfile(pending.user_id, data, "req-1", utcnow()), 1)
        before = files_of(out / "_state")
        assert {"dt=2026-11-28.sqlite-wal", "dt=2026-11-28.sqlite-shm"} <= before.keys()

        result = invoke(str(out), "--json")
        assert result.exit_code == 0, result.output
        [snap] = json.loads(result.stdout)["snapshots"]
        assert (snap["written"], snap["fetched"], snap["pending"]) == (2, 1, 3)
        assert invoke(str(out), "--check").exit_code == 8
        # Not a byte or an mtime changed (the -shm is shared memory: its bytes may move).
        after = files_of(out / "_state")
        shm = "dt=2026-11-28.sqlite-shm"
        assert {k: v for k, v in after.items() if k != shm} == {
            k: v for k, v in before.items() if k != shm
        }
        with pytest.raises(StateLockedError):
            State.open(out, DAY)  # status took no lock, and the run's is still held
        state.record_failure(next(state.iter_pending()).user_id, 1, 404, "gone", retryable=False)
        assert state.counts()["failed"] == 1  # and the writer can still write


def test_check_is_a_pure_function_of_the_record_and_the_clock() -> None:
    at = dt.datetime(2026, 11, 28, 3, 0, tzinfo=dt.UTC)
    snap = status.SnapshotStatus(DAY, written=1_234, failed=12, complete=True, completed_at=at)
    found = status.OutStatus(Path("out"), (snap,))
    now = at + dt.timedelta(hours=3, minutes=12)
    assert status.check(found, now=now) == (
        "ok: snapshot 2026-11-28 complete 3h12m ago (1,234 profiles, 12 failed)"
    )
    running = status.OutStatus(Path("out"), (status.SnapshotStatus(DAY, pending=5, fetched=2),))
    with pytest.raises(IncompleteSnapshot) as caught:
        status.check(running, now=now)
    assert str(caught.value) == (
        "snapshot 2026-11-28 is not complete: 5 pending, 2 fetched, 0 failed (no run of it has "
        "finished yet); a run may still be going, else rerun the same command to resume"
    )
    with pytest.raises(UsageError):
        status.parse_duration("soon")


@pytest.mark.slow
def test_status_during_a_real_run_in_a_subprocess(sandbox, tmp_path: Path) -> None:
    api = sandbox(token=TOKEN, latency=(0.02, 0.04))
    ids = [make_id(i, "live") for i in range(150)]
    csv_path = write_ids(tmp_path / "ids.csv", ids)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUSTONEAPI_")}
    env["JUSTONEAPI_TOKEN"] = TOKEN
    command = [
        sys.executable, "-m", "pipeline", "run", str(csv_path), "--out", str(out),
        "--base-url", api.base_url, "--snapshot-date", SNAPSHOT, "--no-progress",
        "--concurrency", "2", "--batch-rows", "20",
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    seen: list[tuple[int, int]] = []
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if (out / "_state" / f"dt={SNAPSHOT}.sqlite").exists():
                result = invoke(str(out), "--json")
                assert result.exit_code == 0, result.output
                [snap] = json.loads(result.stdout)["snapshots"] or [None]
                if snap is not None and not snap["complete"]:
                    done = snap["written"] + snap["fetched"]
                    seen.append((done, snap["pending"]))
                    assert done + snap["pending"] + snap["failed"] in (0, len(ids))
                    assert invoke(str(out), "--check").exit_code == 8
            time.sleep(0.05)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout
    assert any(0 < done < len(ids) for done, _pending in seen), seen
    assert [d for d, _p in seen] == sorted(d for d, _p in seen)  # progress only moves forward
    final = invoke(str(out), "--check")
    assert final.exit_code == 0, final.output
    assert final.stdout.startswith(f"ok: snapshot {SNAPSHOT} complete ")
    assert final.stdout.endswith(f"({len(ids)} profiles, 0 failed)\n")
