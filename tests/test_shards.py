"""Deterministic shards: who owns an id, a shard's token, and N shards writing one dataset."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from click.testing import CliRunner

from pipeline import assemble, runner, sink
from pipeline.cli import Seams, cli
from pipeline.config import RunConfig
from pipeline.errors import StateLockedError, UsageError
from pipeline.records import InputRow
from pipeline.shards import Shard, read_token_file, resolve_shard, shard_of, shard_token
from pipeline.state import State
from tests.helpers import QUICK_START, make_id, read_failures, write_ids
from tests.test_run_report import VALIDATOR
from tests.test_runner import config_for as runner_config_for

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = "2026-11-28"
DAY = dt.date.fromisoformat(SNAPSHOT)
IDS = [make_id(i, "shards") for i in range(240)]


def config_for(base_url: str, ids_csv: Path, out: Path, **overrides: Any) -> RunConfig:
    return runner_config_for(base_url, ids_csv, out, **{"batch_rows": 50, **overrides})


def run_shards(base_url: str, ids_csv: Path, out: Path, count: int, **overrides: Any) -> None:
    """Every shard of ``count``, one after the other, into ``out``."""
    for k in range(count):
        runner.run(config_for(base_url, ids_csv, out, shard=Shard(k, count), **overrides))


def committed_rows(out: Path, table: str = "profiles") -> pl.DataFrame:
    """A table read as a careful reader does: the files the snapshot's manifest lists."""
    manifest = sink.read_manifest(out, DAY)
    assert manifest is not None, "no snapshot manifest"
    paths = [str(out / e["path"]) for e in manifest["tables"][table]]
    return pl.read_parquet(paths)


def success_markers(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.glob("*/dt=*/_SUCCESS"))


# ------------------------------------------------------------------------------ who owns an id


@pytest.mark.slow
def test_an_id_lands_in_the_same_shard_in_every_process() -> None:
    """Unlike ``hash()``, salted per process: two interpreters with other seeds agree."""
    code = (
        "from pipeline.shards import shard_of; from tests.helpers import make_id; "
        "print([shard_of(make_id(n, 'shards'), 4) for n in range(240)])"
    )
    here = [shard_of(i, 4) for i in IDS]
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        there = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert json.loads(there.stdout) == here, there.stderr
    # Pinned: a change of the hash would move every checkpointed id to another shard.
    assert [shard_of(make_id(n), 4) for n in range(8)] == [2, 3, 3, 3, 2, 0, 2, 3]


def test_shards_split_the_ids_evenly_and_each_id_into_exactly_one() -> None:
    ids = [make_id(i, "spread") for i in range(8000)]
    owners = [[k for k in range(4) if Shard(k, 4).owns(i)] for i in ids]
    assert all(len(o) == 1 for o in owners)
    sizes = [sum(1 for o in owners if o == [k]) for k in range(4)]
    assert all(1800 < size < 2200 for size in sizes), sizes


def test_a_row_without_an_id_is_owned_by_one_shard_by_its_text() -> None:
    rows = [InputRow(line=n + 2, raw=f"bad-{n}", user_id=None) for n in range(50)]
    rows += [InputRow(line=60 + n, raw=i, user_id=i) for n, i in enumerate(IDS[:50])]
    seen = [row for k in range(3) for row in Shard(k, 3).rows(rows)]
    assert sorted(r.line for r in seen) == sorted(r.line for r in rows)


def test_the_index_comes_from_the_option_or_job_completion_index() -> None:
    assert resolve_shard(2, 4, {}) == Shard(2, 4)
    assert resolve_shard(None, 4, {"JOB_COMPLETION_INDEX": "3"}) == Shard(3, 4)
    assert resolve_shard(1, 4, {"JOB_COMPLETION_INDEX": "3"}) == Shard(1, 4)
    assert resolve_shard(None, None, {"JOB_COMPLETION_INDEX": "3"}) is None


@pytest.mark.parametrize(
    ("index", "count", "environ", "message"),
    [
        (1, None, {}, "--shard-index needs --shard-count"),
        (None, 4, {}, "--shard-count needs --shard-index (or JOB_COMPLETION_INDEX set)"),
        (None, 4, {"JOB_COMPLETION_INDEX": "x"}, "JOB_COMPLETION_INDEX must be a whole number"),
        (4, 4, {}, "--shard-index must be from 0 to 3 (--shard-count 4), got 4"),
        (None, 2, {"JOB_COMPLETION_INDEX": "5"}, "--shard-index must be from 0 to 1"),
    ],
)
def test_bad_shard_settings_are_usage_errors(
    index: int | None, count: int | None, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError) as caught:
        resolve_shard(index, count, environ)
    assert str(caught.value).startswith(message)


def test_a_shards_token_comes_from_its_own_variable_then_the_file_then_the_default(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file\nignored\n")
    env = {"JUSTONEAPI_TOKEN_1": "own-token"}
    assert shard_token(Shard(1, 2), env, token_file, "default") == "own-token"
    assert shard_token(Shard(0, 2), env, token_file, "default") == "from-the-file"
    assert shard_token(Shard(0, 2), env, None, "default") == "default"
    assert shard_token(None, env, None, "default") == "default"


def test_a_bad_token_file_is_one_line_that_never_shows_its_content(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"\xffsecret-value")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path, message in [
        (secret, "is not UTF-8 text"),
        (empty, "is empty"),
        (tmp_path / "missing", "cannot read --token-file"),
    ]:
        with pytest.raises(UsageError) as caught:
            read_token_file(path)
        assert message in str(caught.value)
        assert "secret-value" not in str(caught.value)


# ------------------------------------------------------------------------------ locks


def test_shards_run_side_by_side_but_never_beside_an_unsharded_run_or_a_copy(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    with State.open(out, DAY, shard=Shard(0, 2)), State.open(out, DAY, shard=Shard(1, 2)):
        with pytest.raises(StateLockedError, match="fetching shard-0-of-2 into"):
            State.open(out, DAY, shard=Shard(0, 2))
        with pytest.raises(StateLockedError, match="another xhs-profiles run is using"):
            State.open(out, DAY)
    unsharded = pytest.raises(StateLockedError, match="an unsharded xhs-profiles run is using")
    with State.open(out, DAY), unsharded:
        State.open(out, DAY, shard=Shard(1, 2))


# ------------------------------------------------------------------------------ one dataset


def test_n_shards_make_the_dataset_one_unsharded_run_makes(sandbox, tmp_path: Path) -> None:
    api = sandbox(fault_mix={"301": 0.1}, seed=5)
    csv_path = write_ids(tmp_path / "ids.csv", [*IDS, "not-an-id", IDS[0]])
    whole = tmp_path / "whole"
    runner.run(config_for(api.base_url, csv_path, whole))
    out = tmp_path / "sharded"
    reports = []
    for k in range(3):
        assert sink.read_manifest(out, DAY) is None and success_markers(out) == []
        reports.append(runner.run(config_for(api.base_url, csv_path, out, shard=Shard(k, 3))))
    assert [r.assembled for r in reports] == [False, False, True]
    assert reports[-1].shards_done == (0, 1, 2)
    assert sum(r.input.counts.valid for r in reports if r.input.counts) == len(IDS) + 1
    assert success_markers(out) == success_markers(whole)
    for table in ("profiles", "profile_tags", "profile_interactions"):
        per_call = ["fetched_at", "request_id"]  # the moment and the server's id of a call
        ours = committed_rows(out, table).drop(per_call, strict=False)
        theirs = committed_rows(whole, table).drop(per_call, strict=False)
        assert ours.sort(ours.columns).equals(theirs.sort(theirs.columns)), table
    failures = read_failures(out, SNAPSHOT)
    assert sorted(f["user_id"] for f in failures) == sorted(
        f["user_id"] for f in read_failures(whole, SNAPSHOT)
    )
    manifest = sink.read_manifest(out, DAY)
    assert manifest is not None
    assert manifest["rows"]["profiles"] == len(committed_rows(out))
    assert manifest["failures"]["rows"] == len(failures)
    summary = manifest["summary"]
    assert [s["shard"] for s in summary["shards"]] == [0, 1, 2]
    assert summary["snapshot"]["written"] == len(IDS)
    # Every reader agrees: DuckDB over the glob sees each id once.
    glob = str(out / "profiles" / "*" / "*.parquet")
    query = f"SELECT count(*), count(DISTINCT user_id) FROM '{glob}'"
    assert duckdb.sql(query).fetchall() == [(len(IDS), len(IDS))]


def test_the_next_days_changes_compare_the_whole_sharded_snapshot(sandbox, tmp_path: Path) -> None:
    api = sandbox()
    csv_path = write_ids(tmp_path / "ids.csv", IDS[:60])
    out = tmp_path / "out"
    for day in (DAY, DAY + dt.timedelta(days=1)):
        run_shards(api.base_url, csv_path, out, 2, snapshot_date=day)
    manifest = sink.read_manifest(out, DAY + dt.timedelta(days=1))
    assert manifest is not None
    [entry] = manifest["tables"]["profile_changes"]
    changes = pl.read_parquet(out / entry["path"])
    assert sorted(changes["user_id"]) == sorted(IDS[:60])
    assert set(changes["baseline_dt"]) == {DAY}


def test_a_shard_rerun_resumes_only_its_own_ids_and_keeps_the_others_files(
    sandbox, tmp_path: Path
) -> None:
    api = sandbox()
    csv_path = write_ids(tmp_path / "ids.csv", IDS)
    out = tmp_path / "out"
    first = runner.run(config_for(api.base_url, csv_path, out, shard=Shard(1, 2), max_calls=30))
    assert first.stopped_by is not None
    kept = sorted(p.name for p in out.glob("profiles/*/part-shard-1-of-2-*.parquet"))
    assert kept
    runner.run(config_for(api.base_url, csv_path, out, shard=Shard(0, 2)))
    assert sorted(p.name for p in out.glob("profiles/*/part-shard-1-of-2-*.parquet")) == kept
    calls_before = api.stats().calls
    resumed = runner.run(config_for(api.base_url, csv_path, out, shard=Shard(1, 2)))
    own = sum(1 for i in IDS if Shard(1, 2).owns(i))
    assert resumed.assembled
    assert api.stats().calls - calls_before == own - 30
    assert sorted(committed_rows(out)["user_id"]) == sorted(IDS)


def test_a_snapshot_keeps_its_way_of_being_written(sandbox, tmp_path: Path) -> None:
    api = sandbox()
    csv_path = write_ids(tmp_path / "ids.csv", IDS[:20])
    out = tmp_path / "out"
    runner.run(config_for(api.base_url, csv_path, out, shard=Shard(0, 3)))
    with pytest.raises(UsageError) as unsharded:
        runner.run(config_for(api.base_url, csv_path, out))
    assert str(unsharded.value) == (
        f"snapshot {SNAPSHOT} in {out} is written by 3 shards: run with --shard-count 3 and a "
        "--shard-index, or use another --out"
    )
    with pytest.raises(UsageError) as other_count:
        runner.run(config_for(api.base_url, csv_path, out, shard=Shard(0, 2)))
    assert str(other_count.value) == (
        f"snapshot {SNAPSHOT} in {out} is written by 3 shards, not 2: keep the shard count of "
        "a snapshot, or use another --out"
    )
    whole = tmp_path / "whole"
    runner.run(config_for(api.base_url, csv_path, whole))
    with pytest.raises(UsageError, match="is written by an unsharded run"):
        runner.run(config_for(api.base_url, csv_path, whole, shard=Shard(0, 3)))


def test_two_shards_assembling_at_once_leave_one_manifest_and_one_changes_file(
    sandbox, tmp_path: Path
) -> None:
    api = sandbox()
    csv_path = write_ids(tmp_path / "ids.csv", IDS[:80])
    out = tmp_path / "out"
    run_shards(api.base_url, csv_path, out, 2)
    first = committed_rows(out)
    results: list[assemble.Assembly] = []

    def assemble_as(k: int) -> None:
        results.append(assemble.assemble(out, DAY, Shard(k, 2)))

    threads = [threading.Thread(target=assemble_as, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.manifest is not None for r in results] == [True, True]
    assert len(list(out.glob("profile_changes/*/*.parquet"))) == 1
    assert len(list(out.glob("_manifests/*.json"))) == 1
    assert committed_rows(out).sort("user_id").equals(first.sort("user_id"))


# ------------------------------------------------------------------------------ processes


def start_shard(api_url: str, csv_path: Path, out: Path, k: int, n: int, **env: str) -> Any:
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("JUSTONEAPI_", "XHS_PROFILES_", "JOB_COMPLETION_INDEX"))
    }
    environ |= {"JUSTONEAPI_TOKEN": "sandbox", "JOB_COMPLETION_INDEX": str(k), **env}
    command = [
        sys.executable, "-m", "pipeline", "run", str(csv_path), "--out", str(out),
        "--base-url", api_url, "--no-progress", "--shard-count", str(n),
        "--snapshot-date", SNAPSHOT, "--batch-rows", "50", "--max-attempts", "3",
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=REPO, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: Any) -> tuple[int, str, str]:
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr


@pytest.mark.slow
def test_two_shard_processes_started_at_once_give_one_complete_dataset(
    sandbox, tmp_path: Path
) -> None:
    api = sandbox(latency=(0.0, 0.004))
    csv_path = write_ids(tmp_path / "ids.csv", IDS)
    out = tmp_path / "out"
    procs = [start_shard(api.base_url, csv_path, out, k, 2) for k in range(2)]
    results = [finish(p) for p in procs]
    assert [code for code, _, _ in results] == [0, 0], results
    lines = [stdout.strip().splitlines()[-1] for _, stdout, _ in results]
    assert sum("snapshot committed" in line for line in lines) >= 1, lines
    assert sorted(committed_rows(out)["user_id"]) == sorted(IDS)
    assert len(success_markers(out)) == 5
    assert len(list(out.glob("profile_changes/*/*.parquet"))) == 1


@pytest.mark.slow
def test_a_shard_killed_while_assembling_is_resumed_into_one_dataset(
    sandbox, tmp_path: Path
) -> None:
    api = sandbox()
    csv_path = write_ids(tmp_path / "ids.csv", IDS[:100])
    out = tmp_path / "out"
    assert finish(start_shard(api.base_url, csv_path, out, 0, 2))[0] == 0
    killed = start_shard(api.base_url, csv_path, out, 1, 2, XHS_PROFILES_CRASH_AT="mid_assembly")
    assert finish(killed)[0] == -9
    assert sink.read_manifest(out, DAY) is None
    assert success_markers(out) == []
    calls = api.stats().calls
    code, stdout, stderr = finish(start_shard(api.base_url, csv_path, out, 1, 2))
    assert code == 0, stderr
    assert "snapshot committed" in stdout
    assert api.stats().calls == calls  # nothing paid twice
    assert sorted(committed_rows(out)["user_id"]) == sorted(IDS[:100])
    assert len(list(out.glob("profile_changes/*/*.parquet"))) == 1


def test_the_cli_says_which_shards_the_snapshot_waits_for(sandbox, tmp_path: Path) -> None:
    api = sandbox()
    csv_path = write_ids(tmp_path / "ids.csv", IDS[:30])
    out = tmp_path / "out"
    env = {"JUSTONEAPI_TOKEN": None, "JUSTONEAPI_TOKEN_2": "sandbox", "JUSTONEAPI_BASE_URL": None}
    seams = Seams(config_overrides=QUICK_START)
    outputs = []
    for k in (2, 0, 1):
        args = ["run", str(csv_path), "--out", str(out), "--base-url", api.base_url,
                "--shard-index", str(k), "--shard-count", "3", "--snapshot-date", SNAPSHOT,
                "--no-progress"]  # fmt: skip
        if k != 2:
            (tmp_path / "token").write_text("sandbox\n")
            args += ["--token-file", str(tmp_path / "token")]
        result = CliRunner().invoke(cli, args, obj=seams, env=env)
        assert result.exit_code == 0, result.output
        outputs.append(result.output.splitlines())
    assert outputs[0][0].startswith(f"snapshot {SNAPSHOT}, shard-2-of-3: ")
    assert (
        outputs[0][-1] == "shard-2-of-3: done; the snapshot is committed when shards 0, 1 are done"
    )
    assert outputs[1][-1] == "shard-0-of-3: done; the snapshot is committed when shard 1 is done"
    assert outputs[2][-1] == "shard-1-of-3: done, the last of 3: snapshot committed"
    summaries = [json.loads(p.read_text()) for p in (out / "_runs").glob("*.json")]
    for each in summaries:
        VALIDATOR.validate(each)
    [summary] = [s for s in summaries if s["shard"] == {"index": 1, "count": 3}]
    assert summary["shards"] == {"done": [0, 1, 2], "assembled": True}
    [first] = [s for s in summaries if s["shard"] == {"index": 2, "count": 3}]
    assert first["shards"] == {"done": [2], "assembled": False}


def test_shard_options_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    csv_path = write_ids(tmp_path / "ids.csv", IDS[:3])
    out = tmp_path / "out"
    args = ["run", str(csv_path), "--out", str(out), "--shard-count", "4", "--no-progress"]
    result = CliRunner().invoke(
        cli, args, env={"JUSTONEAPI_TOKEN": "t", "JOB_COMPLETION_INDEX": None}
    )
    assert result.exit_code == 2
    assert result.output == (
        "xhs-profiles: --shard-count needs --shard-index (or JOB_COMPLETION_INDEX set)\n"
    )
    assert not out.exists()


def test_a_shard_config_is_a_frozen_value() -> None:
    shard = Shard(1, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        shard.index = 2  # type: ignore[misc]
    assert shard.label == "shard-1-of-4"


def test_status_shows_each_shard_and_check_waits_for_the_missing_one(
    sandbox, tmp_path: Path
) -> None:
    api = sandbox()
    csv_path = write_ids(tmp_path / "ids.csv", IDS[:40])
    out = tmp_path / "out"
    for k in (0, 2):
        runner.run(config_for(api.base_url, csv_path, out, shard=Shard(k, 3)))
    own = [sum(1 for i in IDS[:40] if Shard(k, 3).owns(i)) for k in range(3)]
    text = CliRunner().invoke(cli, ["status", str(out)])
    assert text.exit_code == 0
    assert (
        f"  shards    2 of 3 done: shard-0-of-3 done ({own[0]} written, 0 failed); "
        f"shard-1-of-3 not started; shard-2-of-3 done ({own[2]} written, 0 failed)\n"
    ) in text.output
    check = CliRunner().invoke(cli, ["status", str(out), "--check"])
    assert check.exit_code == 8
    assert check.output == (
        f"xhs-profiles: snapshot {SNAPSHOT} is not complete: shards 2 of 3 done: shard-0-of-3 "
        f"done ({own[0]} written, 0 failed); shard-1-of-3 not started; shard-2-of-3 done "
        f"({own[2]} written, 0 failed); a shard may still be going, else rerun the shards not "
        "done\n"
    )
    as_json = json.loads(CliRunner().invoke(cli, ["status", str(out), "--json"]).output)
    [snapshot] = as_json["snapshots"]
    assert [s["shard"] for s in snapshot["shards"]] == ["shard-0-of-3", "shard-2-of-3"]
    assert snapshot["written"] == own[0] + own[2]
    runner.run(config_for(api.base_url, csv_path, out, shard=Shard(1, 3)))
    assert CliRunner().invoke(cli, ["status", str(out), "--check"]).exit_code == 0


def test_the_changes_command_rebuilds_a_sharded_snapshot_without_a_state_of_its_own(
    sandbox, tmp_path: Path
) -> None:
    api = sandbox()
    csv_path = write_ids(tmp_path / "ids.csv", IDS[:40])
    out = tmp_path / "out"
    later = DAY + dt.timedelta(days=1)
    for day in (DAY, later):
        run_shards(api.base_url, csv_path, out, 2, snapshot_date=day)
    before = sink.read_manifest(out, later)
    assert before is not None
    args = ["changes", str(out), "--tier-bounds", "10,100,1000,10000,100000"]
    for _ in range(2):  # the same rows, the same one file, on every rerun
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        after = sink.read_manifest(out, later)
        assert after is not None
        [entry] = after["tables"]["profile_changes"]
        assert sorted(p.name for p in out.glob(f"profile_changes/dt={later}/*.parquet")) == [
            Path(entry["path"]).name
        ]
    assert entry != before["tables"]["profile_changes"][0]
    assert after["tables"]["profiles"] == before["tables"]["profiles"]
    assert not list((out / "_state").glob(f"dt={later}.sqlite"))
    assert sorted(pl.read_parquet(out / entry["path"])["user_id"]) == sorted(IDS[:40])
