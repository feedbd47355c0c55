"""End-to-end runs of ``runner.run`` against the sandbox API on 127.0.0.1."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from pipeline import runner
from pipeline.config import RunConfig, Secret
from pipeline.errors import AccountError, CallBudgetExhausted, EndpointGoneError
from pipeline.schema import PROFILE_INTERACTIONS, PROFILE_TAGS, PROFILES
from tests.helpers import QUICK_START, make_id, read_failures, read_table, table_names, write_ids

SNAPSHOT = "2026-11-28"


def config_for(base_url: str, ids_csv: Path, out: Path, **overrides: Any) -> RunConfig:
    options: dict[str, Any] = {
        "input_path": ids_csv,
        "out_dir": out,
        "token": Secret("sandbox"),
        "base_url": base_url,
        "snapshot_date": dt.date.fromisoformat(SNAPSHOT),
        "concurrency": 8,
        "max_attempts": 3,
        "timeout": 5.0,
        # Back-off waits of a few ms, so retry paths run in test time.
        "backoff_base": 0.01,
        "backoff_cap": 0.05,
        **QUICK_START,
    }
    options.update(overrides)
    return RunConfig(**options)


def test_a_full_run_puts_every_valid_id_in_exactly_one_place(sandbox, tmp_path: Path) -> None:
    """Profiles hold each fetched id once; failures hold invalid input and hopeless ids."""
    api = sandbox(fault_mix={"301": 0.2, "reset": 0.05, "html502": 0.05}, seed=3)
    ids = [make_id(i) for i in range(120)]
    csv_path = tmp_path / "ids.csv"
    csv_path.write_text(
        "user_id\n" + "\n".join(ids + ids[:10] + ["not-an-id", f"  {ids[0].upper()}  "]) + "\n"
    )
    out = tmp_path / "out"
    report = runner.run(config_for(api.base_url, csv_path, out))

    assert report.complete and report.stopped_by is None
    profiles = read_table(out, "profiles")
    assert profiles["user_id"].n_unique() == profiles.height == 120
    assert set(profiles["user_id"]) == set(ids)
    assert profiles.drop("dt").schema == PROFILES.schema
    assert read_table(out, "profile_tags").drop("dt").schema == PROFILE_TAGS.schema
    assert read_table(out, "profile_interactions").drop("dt").schema == PROFILE_INTERACTIONS.schema
    failures = read_failures(out, SNAPSHOT)
    assert [(f["user_id"], f["code"]) for f in failures] == [("not-an-id", "400")]
    stats = api.stats()
    assert all(stats.successes_by_id[i] == 1 for i in ids)  # nobody paid for twice
    assert report.snapshot.written == 120
    assert report.input.counts is not None
    assert report.input.counts.duplicates == 11


def test_a_rerun_of_a_completed_snapshot_makes_no_call(sandbox, tmp_path: Path) -> None:
    api = sandbox()
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(i) for i in range(30)])
    out = tmp_path / "out"
    runner.run(config_for(api.base_url, csv_path, out))
    calls_before = api.stats().calls
    files_before = sorted(p.name for p in (out / "profiles").rglob("*.parquet"))
    report = runner.run(config_for(api.base_url, csv_path, out))
    assert api.stats().calls == calls_before
    assert report.requests.calls == 0
    assert sorted(p.name for p in (out / "profiles").rglob("*.parquet")) == files_before
    assert read_table(out, "profiles").height == 30


def test_retryable_failures_are_tried_again_on_rerun_and_failures_csv_is_rewritten(
    sandbox, tmp_path: Path
) -> None:
    flaky = make_id(1)
    api = sandbox(scripts={flaky: ["500", "500", "500"]})
    csv_path = write_ids(tmp_path / "ids.csv", [flaky, make_id(2)])
    out = tmp_path / "out"
    first = runner.run(config_for(api.base_url, csv_path, out, max_attempts=3))
    assert first.complete
    rows = read_failures(out, SNAPSHOT)
    assert [(r["user_id"], r["code"], r["attempts"]) for r in rows] == [(flaky, "500", "3")]
    second = runner.run(config_for(api.base_url, csv_path, out, max_attempts=3))
    assert second.requests.calls == 1
    assert read_failures(out, SNAPSHOT) == []
    assert set(read_table(out, "profiles")["user_id"]) == {flaky, make_id(2)}


@pytest.mark.parametrize(
    ("modes", "code", "attempts"),
    [
        (["400"], "400", "1"),
        (["404"], "404", "1"),
        (["202"], "202", "1"),
        (["empty_data"], "0", "1"),
        (["no_result"], "0", "1"),
        (["data_null"], "0", "1"),
        (["301", "301", "301"], "301", "3"),
        (["503", "503", "503"], "503", "3"),
        (["reset", "truncated", "html502"], "-1", "3"),
        (["huge"], "-1", "1"),
        (["deep"], "-1", "1"),
    ],
)
def test_each_per_id_failure_lands_in_failures_csv_with_its_code(
    sandbox, tmp_path: Path, modes: list[str], code: str, attempts: str
) -> None:
    victim, bystander = make_id(10), make_id(11)
    api = sandbox(scripts={victim: modes})
    csv_path = write_ids(tmp_path / "ids.csv", [victim, bystander])
    out = tmp_path / "out"
    report = runner.run(config_for(api.base_url, csv_path, out, max_attempts=3))
    assert report.complete
    [row] = read_failures(out, SNAPSHOT)
    assert (row["user_id"], row["code"], row["attempts"]) == (victim, code, attempts)
    assert row["message"]
    assert read_table(out, "profiles")["user_id"].to_list() == [bystander]


@pytest.mark.parametrize(
    "modes",
    [
        ["301", "ok"],
        ["500"],
        ["503"],
        ["302", "302"],
        ["reset"],
        ["reset_mid"],
        ["truncated"],
        ["html502"],
        ["html503"],
        ["not_json"],
        ["no_code"],
        ["code_string"],
        ["status:500:500"],
        ["display_counts"],
        ["wrong_types"],
        ["bigint"],
    ],
)
def test_transient_faults_and_odd_bodies_end_as_a_profile(
    sandbox, tmp_path: Path, modes: list[str]
) -> None:
    victim = make_id(20)
    api = sandbox(scripts={victim: modes})
    csv_path = write_ids(tmp_path / "ids.csv", [victim, make_id(21)])
    out = tmp_path / "out"
    report = runner.run(config_for(api.base_url, csv_path, out, max_attempts=4))
    assert report.complete
    assert read_failures(out, SNAPSHOT) == []
    assert set(read_table(out, "profiles")["user_id"]) == {victim, make_id(21)}


@pytest.mark.parametrize("code", [100, 303, 600, 601])
def test_account_level_codes_stop_the_run_and_keep_progress(
    sandbox, tmp_path: Path, code: int
) -> None:
    ids = sorted(make_id(i) for i in range(40))  # the state hands out pending ids in id order
    api = sandbox(scripts={ids[20]: [f"code:{code}"]})
    csv_path = write_ids(tmp_path / "ids.csv", ids)
    out = tmp_path / "out"
    report = runner.run(config_for(api.base_url, csv_path, out, concurrency=1))
    assert isinstance(report.stopped_by, AccountError)
    assert report.stopped_by.code == code
    assert not report.complete
    assert api.stats().calls == 21  # concurrency 1: nothing after the refusal
    done = set(read_table(out, "profiles")["user_id"])
    assert len(done) == report.snapshot.written == 20
    assert not (out / "profiles" / f"dt={SNAPSHOT}" / "_SUCCESS").exists()
    # The next run resumes with the rest and pays for nothing twice.
    resumed = runner.run(config_for(api.base_url, csv_path, out))
    assert resumed.complete
    assert set(read_table(out, "profiles")["user_id"]) == set(ids)
    assert max(api.stats().successes_by_id.values()) == 1


def test_a_gone_endpoint_stops_with_advice_to_switch_version(sandbox, tmp_path: Path) -> None:
    api = sandbox(gone_versions=frozenset({"v4"}))
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(i) for i in range(5)])
    out = tmp_path / "out"
    report = runner.run(config_for(api.base_url, csv_path, out))
    assert isinstance(report.stopped_by, EndpointGoneError)
    assert "--api-version v3" in str(report.stopped_by)
    v3 = runner.run(config_for(api.base_url, csv_path, out, api_version="v3"))
    assert v3.complete and read_table(out, "profiles").height == 5


def test_max_calls_stops_cleanly_and_the_rerun_goes_on(sandbox, tmp_path: Path) -> None:
    api = sandbox()
    ids = [make_id(i) for i in range(25)]
    csv_path = write_ids(tmp_path / "ids.csv", ids)
    out = tmp_path / "out"
    report = runner.run(config_for(api.base_url, csv_path, out, max_calls=10))
    assert isinstance(report.stopped_by, CallBudgetExhausted)
    assert api.stats().calls == 10
    assert report.snapshot.pending == 15
    runner.run(config_for(api.base_url, csv_path, out))
    assert api.stats().calls == 25


def test_dry_run_counts_the_calls_a_run_would_make_and_makes_none(sandbox, tmp_path: Path) -> None:
    api = sandbox()
    ids = [make_id(i) for i in range(12)]
    csv_path = write_ids(tmp_path / "ids.csv", ids + ids[:4] + ["bad"])
    out = tmp_path / "out"
    report = runner.run(config_for(api.base_url, csv_path, out, dry_run=True))
    assert report.calls_planned == 12
    assert api.stats().calls == 0


def test_small_batches_are_compacted_into_few_files(sandbox, tmp_path: Path) -> None:
    api = sandbox()
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(i) for i in range(300)])
    out = tmp_path / "out"
    runner.run(config_for(api.base_url, csv_path, out, batch_rows=10))
    for table in table_names():
        files = list((out / table / f"dt={SNAPSHOT}").glob("*.parquet"))
        assert len(files) == 1, (table, files)
    assert read_table(out, "profiles").height == 300


def test_a_completed_snapshot_has_a_manifest_success_markers_and_a_run_summary(
    sandbox, tmp_path: Path
) -> None:
    api = sandbox()
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(i) for i in range(8)])
    out = tmp_path / "out"
    report = runner.run(config_for(api.base_url, csv_path, out))
    manifest = json.loads((out / "_manifests" / f"dt={SNAPSHOT}.json").read_text())
    listed = {entry["path"] for files in manifest["tables"].values() for entry in files}
    on_disk = {p.relative_to(out).as_posix() for p in out.glob("profile*/*/*.parquet")}
    assert listed == on_disk
    for table in [*table_names(), "failures"]:
        assert (out / table / f"dt={SNAPSHOT}" / "_SUCCESS").exists()
    [summary_file] = (out / "_runs").glob("*.json")
    summary = json.loads(summary_file.read_text())
    assert summary["run_id"] == report.run_id
    assert summary["outcome"] == "completed"
    assert summary["requests"]["calls"] == 8


def test_the_dataset_reads_in_duckdb_and_polars_with_the_declared_types(
    sandbox, tmp_path: Path
) -> None:
    api = sandbox()
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(i) for i in range(20)])
    out = tmp_path / "out"
    runner.run(config_for(api.base_url, csv_path, out))
    lazy = pl.scan_parquet(out / "profiles", hive_partitioning=True)
    assert lazy.collect().height == 20
    con = duckdb.connect()
    rows = con.sql(
        f"select dt, count(*), sum(fans) is not null, typeof(any_value(fetched_at)),"
        f" typeof(any_value(profession_tags))"
        f" from read_parquet('{out}/profiles/*/*.parquet', hive_partitioning=true) group by dt"
    ).fetchall()
    assert [(str(r[0]), r[1], r[2], r[3], r[4]) for r in rows] == [
        (SNAPSHOT, 20, True, "TIMESTAMP WITH TIME ZONE", "VARCHAR[]")
    ]


def test_dry_run_counts_retryable_failures_without_changing_the_snapshot(
    sandbox, tmp_path: Path
) -> None:
    flaky = make_id(1)
    api = sandbox(scripts={flaky: ["500", "500"]})
    csv_path = write_ids(tmp_path / "ids.csv", [flaky, make_id(2)])
    out = tmp_path / "out"
    runner.run(config_for(api.base_url, csv_path, out, max_attempts=2))
    failures_before = read_failures(out, SNAPSHOT)
    report = runner.run(config_for(api.base_url, csv_path, out, dry_run=True))
    assert report.calls_planned == 1
    assert read_failures(out, SNAPSHOT) == failures_before
    assert runner.run(config_for(api.base_url, csv_path, out, dry_run=True)).calls_planned == 1


def test_an_answer_for_another_user_is_a_failure_kept_for_audit_and_never_paid_again(
    sandbox, tmp_path: Path
) -> None:
    ids = [make_id(i, "wrong-user") for i in range(6)]
    mixed_up = ids[2]
    api = sandbox(scripts={mixed_up: ["other_user"] * 3})
    csv_path = write_ids(tmp_path / "ids.csv", ids)
    out = tmp_path / "out"
    report = runner.run(config_for(api.base_url, csv_path, out))
    returned = f"{int(mixed_up, 16) + 1:024x}"
    assert report.complete and report.exit_code == 0
    assert (report.requests.wrong_user, report.snapshot.wrong_user) == (1, 1)
    assert set(read_table(out, "profiles")["user_id"]) == set(ids) - {mixed_up}
    assert returned not in set(read_table(out, "profiles")["user_id"])
    assert [(r["user_id"], r["code"], r["message"]) for r in read_failures(out, SNAPSHOT)] == [
        (
            mixed_up,
            "0",
            f"the answer is the profile of another user ({returned}), not of the id asked: "
            "not written as its row, kept in the checkpoint",
        )
    ]
    with contextlib.closing(sqlite3.connect(out / "_state" / f"dt={SNAPSHOT}.sqlite")) as conn:
        [(body,)] = conn.execute("SELECT data FROM responses WHERE user_id = ?", (mixed_up,))
    assert json.loads(body)["userid"] == returned
    again = runner.run(config_for(api.base_url, csv_path, out))
    assert again.requests.calls == 0
    assert api.stats().calls_by_id[mixed_up] == 1
