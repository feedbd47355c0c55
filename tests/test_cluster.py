"""Shards as Dask tasks (``pipeline.cluster``, ``run --dask``), on a real ``LocalCluster``.

The cluster tests start worker processes and wait on real time: they are ``slow`` and skip,
saying why, when ``distributed`` cannot be imported.  The rest (the combined result, the exit
rule, usage errors, the task function itself) run in the fast suite.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner, Result

from pipeline import cluster, sink
from pipeline.cli import Seams, cli
from pipeline.config import RunConfig, Secret
from pipeline.errors import StopRun, UsageError
from pipeline.schema import TABLES
from pipeline.shards import Shard, shard_of
from tests.helpers import QUICK_START, make_id, read_table, write_ids

# The dev group locks distributed; a user's install without the dask extra has none.  Found, not
# imported: importing it costs the fast suite a second or two.
HAS_DISTRIBUTED = importlib.util.find_spec("distributed") is not None

SNAPSHOT = "2026-11-28"
DAY = dt.date.fromisoformat(SNAPSHOT)
needs_dask = pytest.mark.skipif(
    not HAS_DISTRIBUTED, reason="distributed is not installed (the dask extra / dev group)"
)
TOKENS = tuple(f"tok-{k}-5ecret" for k in range(4))


def config_for(base_url: str, ids_csv: Path, out: Path, shard: Shard, token: str) -> RunConfig:
    return RunConfig(
        input_path=ids_csv,
        out_dir=out,
        token=Secret(token),
        base_url=base_url,
        snapshot_date=DAY,
        concurrency=8,
        max_attempts=3,
        timeout=5.0,
        backoff_base=0.01,
        backoff_cap=0.05,
        shard=shard,
        **QUICK_START,
    )


def summary(**counts: Any) -> dict[str, Any]:
    """A run summary with the keys ClusterResult reads."""
    requests = {k: counts.pop(k, 0) for k in cluster._COUNTS}
    snapshot = {k: counts.pop(f"snap_{k}", 0) for k in cluster._SNAPSHOT}
    return {
        "outcome": "completed",
        "input": {"ingested": True},
        "pending_at_start": 0,
        "requests": requests,
        "snapshot": snapshot,
        "duration_s": 1.0,
        **counts,
    }


def shard_result(index: int, exit_code: int = 0, **extra: Any) -> cluster.ShardResult:
    fields: dict[str, Any] = {"summary": summary(calls=10, fetched=9, snap_written=9)}
    fields.update(extra)
    return cluster.ShardResult(Shard(index, 4), f"key-{index}", exit_code, **fields)


def test_the_combined_result_sums_the_shards_and_ends_with_the_worst_exit_code(
    tmp_path: Path,
) -> None:
    configs = [
        config_for("http://127.0.0.1:9", tmp_path / "ids.csv", tmp_path, Shard(k, 4), "t")
        for k in range(4)
    ]
    shards = [
        shard_result(3, 6, message="failed 10.0% of ids"),
        shard_result(1, 4, message="stopped: --max-calls 5 reached"),
        shard_result(0),
        shard_result(2, 4, message="stopped: --max-calls 5 reached"),
    ]
    result = cluster.ClusterResult.of("tcp://s:8786", configs, shards, duration_s=2.0)
    assert [s.shard.index for s in result.shards] == [0, 1, 2, 3]
    assert result.requests["calls"] == 40 and result.snapshot["written"] == 36
    assert result.exit_code == 4  # --max-calls ranks above failures over the limit
    error = result.error()
    assert isinstance(error, StopRun) and error.exit_code == 4
    assert str(error) == "shard-1-of-4 (and 1 more shard): --max-calls 5 reached"
    assert result.lines()[0] == (
        "dask tcp://s:8786: 4 shards in 2.0 s: 4 completed; 0 retried by Dask, "
        "0 resumed from a checkpoint; exit 4"
    )
    lost = shard_result(2, 1, summary=None, lost=True, message="lost: ...")
    worse = cluster.ClusterResult.of("tcp://s:8786", configs, [*shards[:3], lost])
    assert worse.exit_code == 1 and worse.shards[2].outcome == "lost"
    assert cluster.ClusterResult.of("a", configs, [shard_result(k) for k in range(4)]).error() is (
        None
    )


def test_the_exit_precedence_puts_every_declared_code_in_one_order() -> None:
    from pipeline.errors import EXIT_CODES

    assert set(cluster.EXIT_PRECEDENCE) == set(EXIT_CODES) - {7, 8}  # 7, 8: status --check only
    assert cluster.EXIT_PRECEDENCE[0] == 1 and cluster.EXIT_PRECEDENCE[-1] == 0


def test_a_retried_and_resumed_shard_says_so() -> None:
    resumed = summary(calls=3, fetched=3, pending_at_start=120)
    resumed["input"] = {"ingested": False}
    line = shard_result(2, summary=resumed, attempts=2, worker="tcp://w:1").line()
    assert line == (
        "shard-2-of-4  completed (exit 0)  3 calls, 3 fetched, 0 pending, 1.0 s; "
        "retried by Dask: attempt 2, after its worker died; "
        "resumed from its checkpoint (120 ids left); on tcp://w:1"
    )


def test_configs_must_be_distinct_shards_of_one_snapshot(tmp_path: Path) -> None:
    def make(shard: Shard | None, out: Path = tmp_path) -> RunConfig:
        config = config_for("http://127.0.0.1:9", tmp_path / "i.csv", out, Shard(0, 2), "t")
        return dataclasses.replace(config, shard=shard)

    with pytest.raises(UsageError, match="needs its shard"):
        cluster.check_configs([make(None)])
    with pytest.raises(UsageError, match="distinct shards"):
        cluster.check_configs([make(Shard(0, 2)), make(Shard(0, 2))])
    with pytest.raises(UsageError, match="distinct shards"):
        cluster.check_configs([make(Shard(0, 2)), make(Shard(1, 3))])
    with pytest.raises(UsageError, match="same --out"):
        cluster.check_configs([make(Shard(0, 2)), make(Shard(1, 2), tmp_path / "x")])
    cluster.check_configs([make(Shard(0, 2)), make(Shard(1, 2))])


def test_the_task_key_and_the_config_repr_never_hold_the_token(tmp_path: Path) -> None:
    config = config_for("http://127.0.0.1:9", tmp_path / "i.csv", tmp_path, Shard(2, 4), "s3cr3t")
    assert cluster.task_key(config, "ab12cd34") == "xhs-profiles-2026-11-28-shard-2-of-4-ab12cd34"
    assert "s3cr3t" not in repr(config) and "s3cr3t" not in str(config)
    assert pickle.loads(pickle.dumps(config)) == config  # the task ships it whole


def test_the_task_function_runs_the_shard_and_returns_a_small_picklable_dict(
    sandbox, tmp_path: Path
) -> None:
    api = sandbox(token=TOKENS[0], tokens=TOKENS[1:])
    ids = [make_id(i, "task") for i in range(40)]
    csv_path = write_ids(tmp_path / "ids.csv", ids)
    config = config_for(api.base_url, csv_path, tmp_path / "out", Shard(0, 1), TOKENS[0])
    facts = cluster.run_shard(config)
    assert (facts["exit_code"], facts["message"], facts["worker"]) == (0, "", None)
    assert facts["summary"]["outcome"] == "completed"
    blob = pickle.dumps(facts)
    assert TOKENS[0].encode() not in blob and len(blob) < 20_000
    assert api.stats().calls_by_token[TOKENS[0]] == 40


def test_a_runner_error_in_the_task_is_returned_with_its_exit_code(tmp_path: Path) -> None:
    config = config_for("http://127.0.0.1:9", tmp_path / "none.csv", tmp_path, Shard(0, 1), "t")
    facts = cluster.run_shard(config)
    assert facts["exit_code"] == 2 and facts["summary"] is None
    assert "none.csv" in facts["message"]


def test_a_shard_already_running_in_the_same_process_is_refused_by_its_lock(
    sandbox, tmp_path: Path
) -> None:
    """A second task of a shard that still runs (a resubmission after Ctrl-C, on a worker that
    runs the first in another thread) ends with exit 2: the shard's flock is per open file."""
    api = sandbox(latency=0.05)
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(i, "lock") for i in range(30)])
    config = config_for(api.base_url, csv_path, tmp_path / "out", Shard(0, 1), "sandbox")
    first: list[dict[str, Any]] = []
    running = threading.Thread(target=lambda: first.append(cluster.run_shard(config)))
    running.start()
    while not api.stats().calls:
        time.sleep(0.01)
    second = cluster.run_shard(config)
    running.join()
    assert (second["exit_code"], second["summary"]) == (2, None)
    assert "shard-0-of-1" in second["message"] and "sandbox" not in second["message"]
    assert first[0]["exit_code"] == 0


# --- the command line, without a cluster -------------------------------------------------------


def invoke(args: list[str], env: dict[str, str] | None = None, **overrides: Any) -> Result:
    seams = Seams(config_overrides={**QUICK_START, **overrides})
    return CliRunner().invoke(cli, args, obj=seams, env=env, catch_exceptions=False)


def test_dask_without_the_extra_is_a_one_line_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed → ImportError
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(1)])
    args = ["run", str(csv_path), "--out", str(tmp_path / "out"), "--dask", "tcp://h:8786"]
    result = invoke([*args, "--shard-count", "2"], env={"JUSTONEAPI_TOKEN": "t"})
    assert result.exit_code == 2
    assert result.stderr == (
        "xhs-profiles: --dask needs the dask extra: pip install 'xhs-profiles[dask]'\n"
    )
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        ([], {"JUSTONEAPI_TOKEN": "t"}, "--dask needs --shard-count N (one task per shard; "
         "N = your accounts)"),
        (["--shard-count", "2", "--sandbox"], {}, "--sandbox cannot go with --dask (the workers "
         "may not reach this machine's 127.0.0.1): start `xhs-profiles sandbox --host HOST` and "
         "give --base-url"),
        (["--shard-count", "2", "--dry-run"], {"JUSTONEAPI_TOKEN": "t"},
         "--dry-run cannot go with --dask: run it without --dask"),
        (["--shard-count", "2"], {"JUSTONEAPI_TOKEN_0": "t0"},
         "no API token for shard-1-of-2: set JUSTONEAPI_TOKEN_1"),
    ],
)  # fmt: skip
def test_dask_usage_errors_are_one_line(
    tmp_path: Path, extra: list[str], env: dict[str, str], message: str
) -> None:
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(1)])
    args = ["run", str(csv_path), "--out", str(tmp_path / "out"), "--dask", "tcp://h:8786"]
    result = invoke([*args, *extra], env={"JUSTONEAPI_TOKEN": "", **env})
    assert (result.exit_code, result.stderr) == (2, f"xhs-profiles: {message}\n")


@needs_dask
def test_an_unreachable_scheduler_is_a_one_line_usage_error(tmp_path: Path) -> None:
    import dask

    csv_path = write_ids(tmp_path / "ids.csv", [make_id(1)])
    args = ["run", str(csv_path), "--out", str(tmp_path / "out"), "--shard-count", "1"]
    with dask.config.set({"distributed.comm.timeouts.connect": "0.5s"}):
        result = invoke([*args, "--dask", "tcp://127.0.0.1:9"], env={"JUSTONEAPI_TOKEN": "t"})
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "xhs-profiles: cannot connect to the Dask scheduler at tcp://127.0.0.1:9: "
    )
    assert result.stderr.count("\n") == 1


@pytest.mark.slow
def test_a_run_without_dask_never_imports_distributed(sandbox, tmp_path: Path) -> None:
    api = sandbox()
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(i) for i in range(5)])
    code = (
        "import sys\n"
        "from pipeline.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exit:\n"
        "    names = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]\n"
        "    print('LOADED', sorted(names), 'EXIT', exit.code)\n"
    )
    args = ["run", str(csv_path), "--out", str(tmp_path / "out"), "--no-progress"]
    env = {**os.environ, "JUSTONEAPI_TOKEN": "sandbox", "JUSTONEAPI_BASE_URL": api.base_url}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.splitlines()[-1] == "LOADED [] EXIT 0", done.stderr
    assert api.stats().calls == 5


# --- a real LocalCluster ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[Any]:
    """Two worker processes with two threads each, under Nannies that restart a killed one."""
    if not HAS_DISTRIBUTED:
        pytest.skip("distributed is not installed (the dask extra / dev group)")
    import distributed

    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=True,
            dashboard_address=None,
            silence_logs=False,
        ) as local,
        distributed.Client(local, set_as_default=False) as client,
    ):
        yield local, client


def owned(ids: list[str], count: int) -> dict[int, set[str]]:
    return {k: {i for i in ids if shard_of(i, count) == k} for k in range(count)}


def dataset_ids(out: Path) -> tuple[list[str], list[str]]:
    """The profiles' user_ids read through the combined manifest, and through a glob."""
    manifest = sink.read_manifest(out, DAY)
    assert manifest is not None
    files = [out / entry["path"] for entry in manifest["tables"]["profiles"]]
    by_manifest = pl.concat([pl.read_parquet(f) for f in files])["user_id"].to_list()
    return by_manifest, read_table(out, "profiles")["user_id"].to_list()


def assert_one_combined_snapshot(out: Path) -> None:
    combined = sink.manifest_path(out, DAY)
    assert [p for p in (out / combined.parent.name).iterdir() if p.name == combined.name] == [
        combined
    ]
    folders = [*(t.name for t in TABLES), "failures"]
    for folder in folders:
        assert (out / folder / f"dt={SNAPSHOT}" / sink.SUCCESS_FILE).is_file()
    assert len(list(out.rglob(sink.SUCCESS_FILE))) == len(folders)


@pytest.mark.slow
def test_four_shards_survive_a_killed_worker_and_write_every_id_once(
    dask_cluster: Any, sandbox, tmp_path: Path
) -> None:
    local, client = dask_cluster
    api = sandbox(token=TOKENS[0], tokens=TOKENS[1:], latency=(0.005, 0.015), rate_scope="token")
    ids = [make_id(i, "cluster") for i in range(2000)]
    csv_path = write_ids(tmp_path / "ids.csv", ids)
    out = tmp_path / "out"
    configs = [  # each shard at most 100/s: its 500 ids take 5 s
        dataclasses.replace(
            config_for(api.base_url, csv_path, out, Shard(k, 4), TOKENS[k]), rate=100.0
        )
        for k in range(4)
    ]
    pids = client.run(os.getpid)
    killed: dict[str, Any] = {}

    def kill_one_worker_mid_run() -> None:
        deadline = time.monotonic() + 30
        while api.stats().calls < 600 and time.monotonic() < deadline:
            time.sleep(0.05)
        busy = {w: keys for w, keys in client.processing().items() if keys}
        worker, keys = sorted(busy.items())[0]
        killed.update(worker=worker, keys=set(keys), calls=api.stats().calls)
        os.kill(pids[worker], signal.SIGKILL)

    killer = threading.Thread(target=kill_one_worker_mid_run)
    killer.start()
    result = cluster.run_on_dask(local.scheduler_address, configs)
    killer.join()

    assert result.exit_code == 0, result.lines()
    assert [s.outcome for s in result.shards] == ["completed"] * 4
    retried = {s.key for s in result.shards if s.retried}
    assert retried == killed["keys"] and len(retried) >= 1
    for shard in result.shards:
        assert shard.attempts == (2 if shard.key in retried else 1)
        assert shard.resumed == (shard.key in retried)
    assert "retried by Dask: attempt 2, after its worker died" in "\n".join(result.lines())
    # The last to finish committed it; two finishing at the same moment both may, writing the
    # same files at the same names (assert_one_combined_snapshot below checks the result).
    assert sum(s.assembled for s in result.shards) >= 1
    assert result.snapshot["written"] == 2000 and result.snapshot["pending"] == 0

    by_manifest, by_glob = dataset_ids(out)
    assert sorted(by_manifest) == sorted(by_glob) == sorted(ids)  # every id exactly once
    assert_one_combined_snapshot(out)
    stats = api.stats()
    mine_of = owned(ids, 4)
    for k, mine in mine_of.items():
        assert stats.calls_by_token[TOKENS[k]] >= len(mine)  # each shard used its own token
    # What the kill cost: only the calls in flight on the killed worker were paid twice.
    assert 0 <= stats.successes - len(ids) <= 2 * 8
    for shard in result.shards:  # a retried shard's last attempt called only what was left
        left = shard.summary["pending_at_start"] if shard.summary else -1
        assert (0 < left < len(mine_of[shard.shard.index])) == (shard.key in retried)


@pytest.mark.slow
def test_the_command_line_runs_shards_on_a_scheduler(
    dask_cluster: Any, sandbox, tmp_path: Path
) -> None:
    local, _client = dask_cluster
    api = sandbox(token=TOKENS[0], tokens=TOKENS[1:2], rate_scope="token")
    ids = [make_id(i, "cli") for i in range(200)]
    csv_path = write_ids(tmp_path / "ids.csv", ids)
    out = tmp_path / "out"
    env = {"JUSTONEAPI_TOKEN_0": TOKENS[0], "JUSTONEAPI_TOKEN_1": TOKENS[1]}
    args = ["run", str(csv_path), "--out", str(out), "--base-url", api.base_url]
    args += ["--snapshot-date", SNAPSHOT, "--dask", local.scheduler_address, "--shard-count", "2"]
    result = invoke(args, env={**env, "JUSTONEAPI_TOKEN": ""})
    assert result.exit_code == 0, result.output
    mine = owned(ids, 2)
    shard_line = (
        r"  shard-{k}-of-2  completed \(exit 0\)  {n} calls, {n} fetched, 0 pending, "
        r"\d+\.\d s(; the last to finish: committed the snapshot)?; on tcp://127\.0\.0\.1:\d+"
    )
    expected = [
        rf"dask {re.escape(local.scheduler_address)}: 2 shards in \d+\.\d s: 2 completed; "
        r"0 retried by Dask, 0 resumed from a checkpoint; exit 0",
        *(shard_line.format(k=k, n=len(mine[k])) for k in range(2)),
        rf"snapshot {SNAPSHOT}: 200 profiles, 0 failed, 0 pending",
        r"these runs: 200 calls, 200 fetched, 0 failed, 0 retried, 0 rate-limited, \d+\.\d s",
        rf"output: {re.escape(str(out))}  "
        r"\(snapshot committed by shard-[01]-of-2( and shard-1-of-2)?\)",
    ]
    lines = result.stdout.splitlines()
    assert len(lines) == len(expected)
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    last = [line for line in lines if "the last to finish" in line]
    assert len(last) == 1 and last[0].split()[0] in lines[-1]  # one shard committed it
    # stderr: one line per shard as it ends, nothing else
    assert sorted(result.stderr.splitlines()) == sorted(line.strip() for line in lines[1:3])
    assert api.stats().calls_by_token == {TOKENS[0]: len(mine[0]), TOKENS[1]: len(mine[1])}
    assert_one_combined_snapshot(out)

    # A shard whose account is refused stops (exit 3); the other completes; the last line
    # names the shard and its reason.
    again = invoke(
        [*args, "--snapshot-date", "2026-11-29"],
        env={**env, "JUSTONEAPI_TOKEN_1": "not-an-account", "JUSTONEAPI_TOKEN": ""},
    )
    assert again.exit_code == 3
    assert again.stderr.splitlines()[-1] == (
        "xhs-profiles: stopped: shard-1-of-2: token invalid or inactive (code 100): "
        "check JUSTONEAPI_TOKEN"
    )
    assert "shard-1-of-2  stopped (exit 3)" in again.stdout
    assert "not-an-account" not in again.output


@pytest.mark.slow
def test_no_token_shows_in_dask_keys_reprs_or_logs(
    dask_cluster: Any, sandbox, tmp_path: Path
) -> None:
    _local, client = dask_cluster
    secret = "tok-never-shown-0x5ec"
    api = sandbox(token=secret, latency=0.2)
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(i, "secret") for i in range(6)])
    config = config_for(api.base_url, csv_path, tmp_path / "out", Shard(0, 1), secret)
    future = client.submit(
        cluster.run_shard, config, key=cluster.task_key(config, "t0ken"), pure=False
    )
    while not api.stats().calls:  # the task is running: the scheduler and the worker hold it
        time.sleep(0.02)

    def describe(tasks: dict[Any, Any]) -> str:  # the task, and its arguments as Dask shows them
        return "\n".join(
            f"{k!r} {ts!r} {ts.run_spec!r} {getattr(ts.run_spec, 'args', None)!r}"
            for k, ts in tasks.items()
        )

    def held(dask_scheduler: Any) -> str:
        return describe(dask_scheduler.tasks)

    def running(dask_worker: Any) -> str:
        return describe(dask_worker.state.tasks)

    shown = [
        repr(future),
        str(future.key),
        client.run_on_scheduler(held),
        *client.run(running).values(),
        json.dumps(client.processing()),
    ]
    facts = future.result()
    shown += [
        json.dumps(client.get_scheduler_logs()),
        json.dumps(client.get_worker_logs()),
        json.dumps(facts),
    ]
    assert "run_shard" in shown[2] and "Secret('***')" in shown[2]  # the repr was looked at
    assert all(secret not in text for text in shown)
    assert facts["exit_code"] == 0 and api.stats().calls_by_token == {secret: 6}
