"""``run --out s3://bucket/prefix``: whole runs into moto's S3 on 127.0.0.1, read back.

What each test proves about a remote OUT:

- a run puts the tables, failures.csv, the manifest, ``_SUCCESS`` and the run summary in the
  bucket and nothing else (no ``_tmp``, no ``_state``: the checkpoint stays on local disk), and
  polars, pyarrow and DuckDB following the manifest read every id exactly once;
- a run killed between an upload and the manifest resumes into a dataset without a duplicate
  row, and the object the kill left behind is gone;
- a bucket that does not exist, or an endpoint that does not answer, ends the run before any
  call with one line and exit 2, no traceback;
- the secret key is in no output, no file, no log line, in text or JSON.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from pipeline import cluster, runner
from pipeline.cli import Seams, cli
from pipeline.config import RunConfig
from pipeline.crashpoints import ENV as CRASH_ENV
from pipeline.schema import TABLES
from pipeline.shards import Shard
from pipeline.storage import default_state_dir
from tests.helpers import QUICK_START, make_id, write_ids
from tests.s3server import S3, SECRET_KEY, Dataset
from tests.test_runner import config_for as runner_config_for

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = "2026-11-28"
DAY = dt.date.fromisoformat(SNAPSHOT)
TABLE_NAMES = tuple(t.name for t in TABLES)
TABLE_KEYS = {t.name: t.key for t in TABLES}
# An API the run must not reach: OUT is checked before any call.
NEVER_CALLED = ("--base-url", "http://127.0.0.1:9", "--token", "t0ken-never-sent", "--no-progress")
FAST = Seams(config_overrides={"backoff_base": 0.005, "backoff_cap": 0.05, **QUICK_START})


def remote_config(s3: S3, ids_csv: Path, base_url: str, **overrides: Any) -> RunConfig:
    """test_runner's config, into the bucket: ``out_dir`` is then the local state folder."""
    state = overrides.pop("state_dir", s3.tmp / "state")
    return runner_config_for(
        base_url, ids_csv, state, out_url=s3.url("out"), state_dir=state, **overrides
    )


def assert_every_id_once(data: Dataset, ids: list[str]) -> None:
    """Each reader sees each fetched id once in profiles, and no key twice in any table."""
    for reader in (data.polars, data.pyarrow, data.duckdb):
        profiles = reader["profiles"]
        assert sorted(profiles["user_id"].to_list()) == sorted(ids)
        for name in TABLE_NAMES:
            frame = reader[name]
            keys = list(TABLE_KEYS[name])
            assert frame.height == frame.unique(subset=keys).height, name
            assert frame.height == sum(e["rows"] for e in data.manifest["tables"][name]), name


def objects_by_kind(keys: list[str]) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = collections.defaultdict(list)
    for key in keys:
        kinds[key.split("/", 2)[1]].append(key)
    return dict(kinds)


# ------------------------------------------------------------------ a whole run


@pytest.mark.slow  # a whole run into S3: 2-3 s
def test_a_run_into_s3_is_read_back_whole_by_polars_pyarrow_and_duckdb(
    sandbox: Any, s3: S3, tmp_path: Path
) -> None:
    api = sandbox(fault_mix={"301": 0.2}, seed=5)
    ids = [make_id(i, "s3") for i in range(60)]
    csv_path = write_ids(tmp_path / "ids.csv", [*ids, *ids[:3], "not-an-id"])
    report = runner.run(remote_config(s3, csv_path, api.base_url, batch_rows=20))

    assert report.complete and report.exit_code == 0
    data = s3.read_dataset("out", SNAPSHOT)
    assert_every_id_once(data, ids)
    keys = s3.objects("out")
    kinds = objects_by_kind(keys)
    # The output only: the checkpoint and temp files stay local.
    assert set(kinds) == {*TABLE_NAMES, "failures", "_manifests", "_runs"}
    for name in (*TABLE_NAMES, "failures"):
        assert f"out/{name}/dt={SNAPSHOT}/_SUCCESS" in keys, name
    listed = {f"out/{e['path']}" for entries in data.manifest["tables"].values() for e in entries}
    assert {k for k in keys if k.endswith(".parquet")} == listed  # no orphan
    failures = s3.read(f"out/failures/dt={SNAPSHOT}/failures.csv").decode()
    assert failures.splitlines()[1].startswith("not-an-id,400,")
    (summary_key,) = kinds["_runs"]
    summary = json.loads(s3.read(summary_key))
    assert summary["run_id"] == report.run_id and summary["outcome"] == "completed"
    assert report.summary_file == summary_key.removeprefix("out/")
    assert report.failures_file == f"failures/dt={SNAPSHOT}/failures.csv"
    state = tmp_path / "state"
    assert (state / f"dt={SNAPSHOT}.sqlite").is_file()
    assert not list((state / "_tmp").iterdir())
    assert all(api.stats().successes_by_id[i] == 1 for i in ids)


@pytest.mark.slow  # a whole run into S3: 2-3 s
def test_a_second_snapshot_reads_the_first_back_from_s3_for_its_changes(
    sandbox: Any, s3: S3, tmp_path: Path
) -> None:
    api = sandbox()
    ids = [make_id(i, "s3-changes") for i in range(12)]
    csv_path = write_ids(tmp_path / "ids.csv", ids)
    runner.run(remote_config(s3, csv_path, api.base_url))
    later = runner.run(
        remote_config(s3, csv_path, api.base_url, snapshot_date=DAY + dt.timedelta(days=1))
    )
    assert later.complete
    day2 = (DAY + dt.timedelta(days=1)).isoformat()
    data = s3.read_dataset("out", day2)
    changes = data.polars["profile_changes"]
    assert sorted(changes["user_id"].to_list()) == sorted(ids)
    assert set(changes["baseline_dt"].to_list()) == {DAY}


@pytest.mark.slow  # a whole run into S3: 2-3 s
def test_the_cli_runs_the_sandbox_into_s3_with_the_default_state_dir(
    s3: S3, tmp_path: Path
) -> None:
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(i, "s3-cli") for i in range(8)])
    url = s3.url("cli/out/")
    result = invoke(
        [str(csv_path), "--out", url, "--sandbox", "--no-progress", "--snapshot-date", SNAPSHOT]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith(f"output: {url.rstrip('/')}  (failures: ")
    data = s3.read_dataset("cli/out", SNAPSHOT)
    assert data.polars["profiles"].height == 8
    # $XDG_CACHE_HOME/xhs-profiles/<sha256 of the URL>: the s3 fixture points it at tmp_path.
    state = default_state_dir(url)
    assert state.parent == tmp_path / "cache" / "xhs-profiles"
    assert (state / f"dt={SNAPSHOT}.sqlite").is_file()

    # status, changes and report on the URL (status and changes find the same cache folder)
    found = CliRunner().invoke(cli, ["status", url, "--json"])
    assert found.exit_code == 0, found.output
    (snapshot,) = json.loads(found.stdout)["snapshots"]
    assert (snapshot["complete"], snapshot["written"], snapshot["runs"]) == (True, 8, 1)
    assert snapshot["state_file"] == str(state / f"dt={SNAPSHOT}.sqlite")
    checked = CliRunner().invoke(cli, ["status", url, "--check"])
    assert (checked.exit_code, checked.stdout.split(":")[0]) == (0, "ok"), checked.output
    rebuilt = CliRunner().invoke(cli, ["changes", url])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert f"-> {url.rstrip('/')}/profile_changes/dt={SNAPSHOT}/part-" in rebuilt.stdout
    assert_every_id_once(
        s3.read_dataset("cli/out", SNAPSHOT), [make_id(i, "s3-cli") for i in range(8)]
    )
    page = CliRunner().invoke(cli, ["report", url])
    assert page.exit_code == 2 and page.stderr.startswith(
        "xhs-profiles: report reads a local folder"
    )


@pytest.mark.slow  # three runs into S3
def test_shards_into_s3_make_one_dataset_the_last_one_commits(
    sandbox: Any, s3: S3, tmp_path: Path
) -> None:
    api = sandbox(scripts={make_id(3, "s3-shards"): ["404"] * 5})
    ids = [make_id(i, "s3-shards") for i in range(40)]
    csv_path = write_ids(tmp_path / "ids.csv", [*ids, "not-an-id"])
    first = runner.run(remote_config(s3, csv_path, api.base_url, shard=Shard(1, 2)))
    assert first.complete and not first.assembled
    assert not any("/_manifests/" in k for k in s3.objects("out"))
    last = runner.run(remote_config(s3, csv_path, api.base_url, shard=Shard(0, 2)))
    assert last.complete and last.assembled
    data = s3.read_dataset("out", SNAPSHOT)
    assert_every_id_once(data, [i for i in ids if i != make_id(3, "s3-shards")])
    failures = s3.read(f"out/failures/dt={SNAPSHOT}/failures.csv").decode().splitlines()
    assert sorted(line.split(",")[:2] for line in failures[1:]) == sorted(
        [[make_id(3, "s3-shards"), "404"], ["not-an-id", "400"]]
    )
    for name in (*TABLE_NAMES, "failures"):
        assert f"out/{name}/dt={SNAPSHOT}/_SUCCESS" in s3.objects("out"), name
    # Each shard's checkpoint in the one local state folder, none in the bucket.
    assert sorted(p.name for p in (tmp_path / "state").glob("*.sqlite")) == [
        f"dt={SNAPSHOT}.shard-0-of-2.sqlite",
        f"dt={SNAPSHOT}.shard-1-of-2.sqlite",
    ]


@pytest.mark.slow  # a run into S3
def test_a_dask_task_runs_its_shard_into_s3(sandbox: Any, s3: S3, tmp_path: Path) -> None:
    """What a worker runs: the config ships whole (the URL, no secret) and writes to S3."""
    api = sandbox()
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(i, "s3-task") for i in range(10)])
    config = remote_config(s3, csv_path, api.base_url, shard=Shard(0, 1))
    assert pickle.loads(pickle.dumps(config)) == config
    facts = cluster.run_shard(config)
    assert (facts["exit_code"], facts["message"]) == (0, ""), facts
    result = cluster.ClusterResult.of("tcp://scheduler:8786", [config], [])
    assert result.lines()[-1].startswith(f"output: {s3.url('out')}  ")
    assert s3.read_dataset("out", SNAPSHOT).polars["profiles"].height == 10


def invoke(args: list[str], **env: str | None) -> Result:
    environment: dict[str, str | None] = {
        "JUSTONEAPI_TOKEN": None,
        "JUSTONEAPI_BASE_URL": None,
        CRASH_ENV: None,
        **env,
    }
    return CliRunner().invoke(cli, ["run", *args], obj=FAST, env=environment)


# ------------------------------------------------------------------ what cannot be written


def test_a_bucket_that_does_not_exist_is_one_line_and_exit_2(s3: S3, tmp_path: Path) -> None:
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(1, "s3-gone")])
    gone = f"s3://{s3.bucket}-gone/out"
    result = invoke([str(csv_path), "--out", gone, *NEVER_CALLED])
    assert "Traceback" not in result.output
    assert (result.exit_code, result.stdout, result.stderr) == (
        2,
        "",
        f"xhs-profiles: --out {gone} is not writable: the bucket {s3.bucket}-gone does not "
        "exist: create it or fix --out\n",
    )


def test_an_endpoint_that_does_not_answer_is_one_line_and_exit_2(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(1, "s3-down")])
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    result = invoke([str(csv_path), "--out", s3.url(), *NEVER_CALLED])
    assert "Traceback" not in result.output
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(
        f"xhs-profiles: --out {s3.url()} is not writable: cannot reach the object store "
        '(Could not connect to the endpoint URL: "http://127.0.0.1:9/'
    )
    assert result.stderr.count("\n") == 1


def test_a_file_url_is_the_folder_it_names(tmp_path: Path) -> None:
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(i, "file-url") for i in range(3)])
    out = tmp_path / "out"
    result = invoke(
        [str(csv_path), "--out", f"file://{out}", *NEVER_CALLED, "--dry-run",
         "--snapshot-date", SNAPSHOT]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (
        result.stdout
        == f"dry run: 3 ids would be called (snapshot {SNAPSHOT}, {out}); no call made\n"
    )
    assert (out / "_state").is_dir()


# ------------------------------------------------------------------ no secret anywhere


@pytest.mark.slow  # a whole run into S3: 2-3 s
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_secret_key_is_in_no_output_file_or_log_line(
    s3: S3, tmp_path: Path, log_format: str, caplog: pytest.LogCaptureFixture
) -> None:
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(i, "s3-secret") for i in range(5)])
    state = tmp_path / "state"
    args = [str(csv_path), "--out", s3.url(), "--state-dir", str(state), "--sandbox",
            "--progress", "log", "--log-format", log_format, "--debug"]  # fmt: skip
    result = invoke(args)
    assert result.exit_code == 0, result.output
    gone = invoke([*args[:2], f"s3://{s3.bucket}-gone/x", *args[3:]])
    assert gone.exit_code == 2
    for text in (result.stdout, result.stderr, gone.stdout, gone.stderr, caplog.text):
        assert SECRET_KEY not in text
    for key in s3.objects():
        assert SECRET_KEY.encode() not in s3.read(key), key
    for path in state.rglob("*"):
        if path.is_file():
            assert SECRET_KEY.encode() not in path.read_bytes(), path
    if log_format == "json":
        assert all(json.loads(line) for line in result.stderr.splitlines())


# ------------------------------------------------------------------ a crash, then a resume


def recorded_parts(state: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(state / f"dt={SNAPSHOT}.sqlite")) as conn:
        return [path for (path,) in conn.execute("SELECT path FROM parts")]


def run_cli(args: list[str], *, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (CRASH_ENV, "JUSTONEAPI_TOKEN")}
    if crash_at is not None:
        env[CRASH_ENV] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "run", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "crash_at", ["mid_part_write:2", "after_part_rename:2", "before_manifest:1"]
)
def test_a_kill_between_an_upload_and_the_manifest_resumes_without_a_duplicate(
    sandbox: Any, s3: S3, tmp_path: Path, crash_at: str
) -> None:
    api = sandbox(latency=(0.002, 0.01))
    ids = [make_id(i, "s3-crash") for i in range(90)]
    csv_path = write_ids(tmp_path / "ids.csv", ids)
    state = tmp_path / "state"
    args = [str(csv_path), "--out", s3.url(), "--state-dir", str(state),
            "--base-url", api.base_url, "--token", "sandbox", "--no-progress",
            "--batch-rows", "30", "--concurrency", "4", "--snapshot-date", SNAPSHOT]  # fmt: skip

    killed = run_cli(args, crash_at=crash_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    uploaded = {k for k in s3.objects("out") if k.endswith(".parquet")}
    assert uploaded, "the kill came before any upload"
    assert not any("/_manifests/" in k for k in s3.objects("out"))
    orphans = uploaded - {f"out/{p}" for p in recorded_parts(state)}
    # mid_part_write: the flush's first part is up, its second torn in the local staging
    # folder; after_part_rename: a flush's parts are up, none in the state; before_manifest:
    # every part is recorded, only the manifest is missing.
    assert bool(orphans) == (not crash_at.startswith("before_manifest")), orphans
    torn = list((state / "_tmp").iterdir())
    assert bool(torn) == crash_at.startswith("mid_part_write"), torn

    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr
    data = s3.read_dataset("out", SNAPSHOT)
    assert_every_id_once(data, ids)
    listed = {f"out/{e['path']}" for es in data.manifest["tables"].values() for e in es}
    on_s3 = {k for k in s3.objects("out") if k.endswith(".parquet")}
    assert on_s3 == listed  # the orphan of the kill is gone, not merely unlisted
    assert not orphans & on_s3
    assert not list((state / "_tmp").iterdir())
    assert SECRET_KEY not in killed.stderr + resumed.stderr + resumed.stdout
