"""Hardening, through the command line: hostile answers, bad input, a full disk, hostile ids and a
token that never leaks.

Every test drives ``xhs-profiles run`` as a user would: ``click.testing.CliRunner`` on
``pipeline.cli.cli`` with ``obj=FAST_BACKOFF`` (in-process, so a test can monkeypatch a failing
disk or capture log records), or a subprocess where real stderr and process-wide logging matter.  It
checks what the user sees: the exit code, the exact one-line message on stderr (never a
traceback), failures.csv's rows and the tables written.  ``tests/test_runner.py`` covers the same
faults at the runner level; this file does not repeat its checks.
"""

from __future__ import annotations

import csv
import datetime as dt
import errno
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import polars as pl
import pytest
from click.testing import CliRunner, Result

import pipeline.runner
import pipeline.state
from pipeline.cli import Seams, cli
from pipeline.config import RunConfig, Secret
from pipeline.sandbox import Sandbox, build_profile, display_count
from tests.helpers import QUICK_START, make_id, write_ids

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = "2026-11-28"
SandboxFactory = Callable[..., Sandbox]
PROFILE_COLUMNS_FROM_DATA = ("fans", "follows", "level", "liked", "collected", "notes_posted")
# Retries wait milliseconds, not seconds (no CLI option sets the back-off: the seam does).
FAST_BACKOFF = Seams(config_overrides={"backoff_base": 0.005, "backoff_cap": 0.05, **QUICK_START})


def invoke(
    args: Sequence[str], *, token: str | None = "sandbox", env: Mapping[str, str | None] = {}
) -> Result:
    """``xhs-profiles run ARGS`` in-process; the token only through JUSTONEAPI_TOKEN."""
    environment: dict[str, str | None] = {
        "JUSTONEAPI_TOKEN": token,
        "JUSTONEAPI_BASE_URL": None,
        "XHS_PROFILES_CRASH_AT": None,
        **env,
    }
    return CliRunner().invoke(cli, ["run", *args], obj=FAST_BACKOFF, env=environment)


def run_args(csv_path: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return [
        str(csv_path), "--out", str(out), "--base-url", base_url, "--no-progress",
        "--snapshot-date", SNAPSHOT, *extra,
    ]  # fmt: skip


def failures_csv(out: Path) -> list[dict[str, str]]:
    path = out / "failures" / f"dt={SNAPSHOT}" / "failures.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def table(out: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(out / name / f"dt={SNAPSHOT}" / "*.parquet")


def assert_one_line_error(result: Result, exit_code: int, message: str) -> None:
    """Exit ``exit_code``, nothing on stdout, exactly ``xhs-profiles: <message>`` on stderr."""
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert (result.exit_code, result.stdout, result.stderr) == (
        exit_code,
        "",
        f"xhs-profiles: {message}\n",
    )


# ================================================================== hostile responses

VICTIM = make_id(1, "hostile")
BYSTANDERS = [make_id(i, "bystander") for i in range(12)]


def hostile_run(
    sandbox: SandboxFactory, tmp_path: Path, modes: list[str], *extra: str
) -> tuple[Result, Path, Sandbox]:
    api = sandbox(scripts={VICTIM: modes})
    csv_path = write_ids(tmp_path / "ids.csv", [*BYSTANDERS[:6], VICTIM, *BYSTANDERS[6:]])
    out = tmp_path / "out"
    result = invoke(run_args(csv_path, out, api.base_url, "--max-attempts", "3", *extra))
    # Whatever the victim's answer, the run completes and every other id is a profile.
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    assert "Traceback" not in result.output
    assert set(BYSTANDERS) <= set(table(out, "profiles")["user_id"])
    return result, out, api


# mode scripted for the victim → (code, message, attempts) of its failures.csv row.  Transient
# faults are scripted three times (--max-attempts 3), so they end as failures too.
HOSTILE_FAILURES = {
    "html502": (["html502"] * 3, "-1", "HTTP 502 with a non-JSON body", "3"),
    "html503": (["html503"] * 3, "-1", "HTTP 503 with a non-JSON body", "3"),
    "reset": (["reset"] * 3, "-1", "connection closed by the API before a complete answer", "3"),
    "huge": (["huge"], "-1", "response body larger than 5 MB", "1"),
    "data_null": (
        ["data_null"],
        "0",
        "no profile in the answer (data empty: the account may be deleted, banned or private)",
        "1",
    ),
    "no_code": (["no_code"] * 3, "-1", "response has no business code", "3"),
    "not_json": (["not_json"] * 3, "-1", "HTTP 200 with a non-JSON body", "3"),
    "status:503:503": (
        ["status:503:503"] * 3,
        "503",
        "service unavailable (code 503): service unavailable",
        "3",
    ),
}


@pytest.mark.parametrize("mode", list(HOSTILE_FAILURES))
def test_a_hostile_answer_ends_as_a_failure_row_with_a_clear_message(
    sandbox: SandboxFactory, tmp_path: Path, mode: str
) -> None:
    modes, code, message, attempts = HOSTILE_FAILURES[mode]
    _, out, api = hostile_run(sandbox, tmp_path, modes)
    [row] = failures_csv(out)
    assert (row["user_id"], row["code"], row["message"], row["attempts"]) == (
        VICTIM,
        code,
        message,
        attempts,
    )
    assert api.stats().calls_by_id[VICTIM] == int(attempts)
    assert VICTIM not in set(table(out, "profiles")["user_id"])


@pytest.mark.parametrize("mode", ["reset_mid", "truncated"])
def test_a_body_cut_off_mid_answer_is_retried_then_failed_with_a_message_in_words(
    sandbox: SandboxFactory, tmp_path: Path, mode: str
) -> None:
    _, out, api = hostile_run(sandbox, tmp_path, [mode] * 3)
    [row] = failures_csv(out)
    assert (row["user_id"], row["code"], row["attempts"]) == (VICTIM, "-1", "3")
    assert "\n" not in row["message"] and len(row["message"]) <= 200
    # A clear message says what happened in words, not a library's exception repr.
    assert re.fullmatch(r"connection (closed|broken) [a-z ,()-]+", row["message"]), row["message"]
    assert api.stats().calls_by_id[VICTIM] == 3


@pytest.mark.slow
def test_a_body_that_never_ends_times_out_and_the_id_is_failed(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """drip sends one byte a second: --timeout 1 gives up, and nothing else waits for it."""
    _, out, api = hostile_run(sandbox, tmp_path, ["drip"], "--timeout", "1", "--max-attempts", "1")
    [row] = failures_csv(out)
    assert (row["user_id"], row["code"], row["attempts"]) == (VICTIM, "-1", "1")
    assert re.fullmatch(r"timed out after 1s \(read\)|no complete answer within 2s", row["message"])
    assert api.stats().calls_by_id[VICTIM] == 1


@pytest.mark.slow
def test_a_dripped_body_is_retried_and_the_retry_lands(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    _, out, api = hostile_run(sandbox, tmp_path, ["drip"], "--timeout", "1")
    assert failures_csv(out) == []
    assert VICTIM in set(table(out, "profiles")["user_id"])
    assert api.stats().calls_by_id[VICTIM] == 2


def victim_row(out: Path) -> dict[str, Any]:
    profiles = table(out, "profiles").filter(pl.col("user_id") == VICTIM)
    assert profiles.height == 1
    return profiles.row(0, named=True)


def test_integers_of_thousands_of_digits_land_with_the_digits_kept(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """bigint: data.fans has 5000 digits.  No Int64 holds it: ``fans`` takes the documented
    fallback (the fans entry of interactions), and raw_json keeps every digit."""
    _, out, _ = hostile_run(sandbox, tmp_path, ["bigint"])
    assert failures_csv(out) == []
    row = victim_row(out)
    expected = build_profile(VICTIM)
    fans_entry = next(e["count"] for e in expected["interactions"] if e["type"] == "fans")
    assert row["fans"] == fans_entry
    assert (row["follows"], row["liked"], row["collected"]) == (
        expected["follows"],
        expected["liked"],
        expected["collected"],
    )
    # raw_json has the number itself; past 4300 digits Python's int() refuses it, so keep text.
    raw = json.loads(row["raw_json"], parse_int=lambda t: int(t) if len(t) < 4000 else t)
    assert raw.pop("fans") == "1234567890" * 500
    assert raw == {k: v for k, v in expected.items() if k != "fans"}


def test_raw_json_keeps_a_huge_integer_as_a_number(sandbox: SandboxFactory, tmp_path: Path) -> None:
    _, out, _ = hostile_run(sandbox, tmp_path, ["bigint"])
    assert '"fans":' + "1234567890" * 500 in victim_row(out)["raw_json"]


def test_fields_of_the_wrong_type_give_nulls_and_raw_json_keeps_them(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """wrong_types: fans "abc", tags {}, interactions null, level "7"."""
    _, out, _ = hostile_run(sandbox, tmp_path, ["wrong_types"])
    assert failures_csv(out) == []
    row = victim_row(out)
    expected = build_profile(VICTIM)
    assert (row["fans"], row["level"]) == (None, None)
    assert (row["follows"], row["notes_posted"]) == (
        expected["follows"],
        expected["note_num_stat"]["posted"],
    )
    assert VICTIM not in set(table(out, "profile_tags")["user_id"])
    assert VICTIM not in set(table(out, "profile_interactions")["user_id"])
    wrong = {"fans": "abc", "tags": {}, "interactions": None, "level": "7"}
    assert json.loads(row["raw_json"]) == {**expected, **wrong}


def test_json_nested_thousands_of_levels_deep_is_failed_once_not_paid_for_again(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """No parser follows 5000 levels; the same answer would come back, so it is not retried."""
    _, out, api = hostile_run(sandbox, tmp_path, ["deep"] * 3)
    [row] = failures_csv(out)
    assert (row["user_id"], row["code"], row["message"], row["attempts"]) == (
        VICTIM,
        "-1",
        "the answer is JSON nested too deep to parse",
        "1",
    )
    assert api.stats().calls_by_id[VICTIM] == 1


def test_code_as_a_string_is_a_success(sandbox: SandboxFactory, tmp_path: Path) -> None:
    _, out, api = hostile_run(sandbox, tmp_path, ["code_string"])
    assert failures_csv(out) == []
    assert victim_row(out)["fans"] == build_profile(VICTIM)["fans"]
    assert api.stats().calls_by_id[VICTIM] == 1


def _display_victim() -> str:
    """An id whose counters need every display style: 1千+, 万 and 万+."""
    for i in range(10_000):
        user_id = make_id(i, "display")
        counts = {e["type"]: e["count"] for e in build_profile(user_id)["interactions"]}
        big = counts["fans"] >= 10_000 and counts["interaction"] >= 100_000
        if big and 1_000 <= counts["follows"] < 10_000:
            return user_id
    raise AssertionError("no sandbox profile with large counters")


def _count_of(text: str) -> int:
    """The number a display string stands for, e.g. 1.2万 → 12000, 10万+ → 100000."""
    found = re.fullmatch(r"([0-9.]+)(千|万|亿)?\+?", text)
    assert found is not None, text
    unit = {"千": 1_000, "万": 10_000, "亿": 100_000_000, None: 1}[found.group(2)]
    return int(Decimal(found.group(1)) * unit)


def test_display_string_counts_are_parsed_and_kept_as_given(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    user_id = _display_victim()
    api = sandbox(scripts={user_id: ["display_counts"]})
    csv_path = write_ids(tmp_path / "ids.csv", [user_id, *BYSTANDERS[:3]])
    out = tmp_path / "out"
    result = invoke(run_args(csv_path, out, api.base_url))
    assert result.exit_code == 0, result.output
    rows = table(out, "profile_interactions").filter(pl.col("user_id") == user_id)
    got = {r["type"]: (r["count_text"], r["count"]) for r in rows.iter_rows(named=True)}
    styles = {"follows": "thousand", "fans": "wan", "interaction": "plus"}
    given = {e["type"]: e["count"] for e in build_profile(user_id)["interactions"]}
    expected = {
        kind: (display_count(n, styles[kind]), _count_of(display_count(n, styles[kind])))
        for kind, n in given.items()
    }
    assert got == expected
    assert got["follows"][0].endswith("千+") and got["interaction"][0].endswith("万+")


@pytest.mark.slow
def test_every_hostile_answer_in_one_run_loses_no_other_id(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """All the hostile modes at once, each on its own id among bystanders: exit 0, each hostile
    id in exactly one place, every bystander a profile."""
    modes = [
        "html502", "html503", "reset", "reset_mid", "truncated", "drip", "huge", "deep",
        "bigint", "wrong_types", "code_string", "data_null", "no_code", "not_json",
        "status:503:503", "display_counts",
    ]  # fmt: skip
    victims = {make_id(i, "victim"): mode for i, mode in enumerate(modes)}
    bystanders = [make_id(i, "crowd") for i in range(40)]
    api = sandbox(scripts={uid: [mode] * 2 for uid, mode in victims.items()})
    csv_path = write_ids(tmp_path / "ids.csv", [*victims, *bystanders])
    out = tmp_path / "out"
    result = invoke(run_args(csv_path, out, api.base_url, "--timeout", "1", "--max-attempts", "2"))
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    profiles = set(table(out, "profiles")["user_id"])
    failed = {row["user_id"]: row for row in failures_csv(out)}
    assert set(bystanders) <= profiles
    assert profiles.isdisjoint(failed)
    assert set(victims) <= profiles | set(failed)
    for uid in failed:
        assert victims[uid] not in ("bigint", "wrong_types", "code_string", "display_counts")
    summary = json.loads(next((out / "_runs").glob("*.json")).read_text("utf-8"))
    assert summary["outcome"] == "completed"


# ================================================================== bad input


@pytest.fixture
def api(sandbox: SandboxFactory) -> Sandbox:
    return sandbox()


@pytest.fixture
def good_csv(tmp_path: Path) -> Path:
    return write_ids(tmp_path / "ids.csv", [make_id(1), make_id(2)])


def test_a_missing_input_file_is_a_usage_error(api: Sandbox, tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    result = invoke(run_args(missing, tmp_path / "out", api.base_url))
    assert_one_line_error(result, 2, f"input file not found: {missing}")
    assert not (tmp_path / "out").exists()  # refused before anything is created


def test_an_empty_input_file_is_a_usage_error(api: Sandbox, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    result = invoke(run_args(empty, tmp_path / "out", api.base_url))
    assert_one_line_error(result, 2, f"{empty} is empty: it has no header and no ids")


def test_a_binary_input_file_is_a_usage_error(api: Sandbox, tmp_path: Path) -> None:
    xlsx = tmp_path / "ids.csv"
    xlsx.write_bytes(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00[Content_Types].xml\xff")
    result = invoke(run_args(xlsx, tmp_path / "out", api.base_url))
    assert_one_line_error(
        result,
        2,
        f"{xlsx} is not a CSV text file (it has NUL bytes: an .xlsx, .xls or Parquet file?); "
        "open it in Excel and save it as CSV UTF-8",
    )


def test_no_recognisable_id_column_names_the_option_and_the_columns(
    api: Sandbox, tmp_path: Path
) -> None:
    path = tmp_path / "creators.csv"
    path.write_text("name,followers\nalice,3\n", encoding="utf-8")
    result = invoke(run_args(path, tmp_path / "out", api.base_url))
    assert_one_line_error(
        result,
        2,
        f"no id column in {path} (looked for user_id, userId, userid, id); "
        "columns found: name, followers. Pass --id-column NAME.",
    )
    assert api.stats().calls == 0


def test_a_gbk_file_from_excel_is_decoded(api: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "gbk.csv"
    ids = [make_id(1), make_id(2)]
    path.write_bytes(f"user_id,备注\r\n{ids[0]},美妆博主\r\n{ids[1]},家居\r\n".encode("gbk"))
    out = tmp_path / "out"
    result = invoke(run_args(path, out, api.base_url))
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    assert sorted(table(out, "profiles")["user_id"]) == sorted(ids)
    summary = json.loads(next((out / "_runs").glob("*.json")).read_text("utf-8"))
    assert summary["input"]["encoding"] in ("gb18030", "gbk")


def test_a_ragged_row_is_a_usage_error_naming_its_line(api: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text(f"user_id,note\n{make_id(1)},a\n{make_id(2)},b,c\n", encoding="utf-8")
    result = invoke(run_args(path, tmp_path / "out", api.base_url))
    assert_one_line_error(result, 2, f"{path} line 3: 3 fields, but the header has 2")
    assert api.stats().calls == 0


@pytest.mark.parametrize("text", ["2026-13-01", "yesterday", "28/11/2026", "2026-11-28T00:00"])
def test_an_invalid_snapshot_date_is_a_usage_error(
    api: Sandbox, tmp_path: Path, good_csv: Path, text: str
) -> None:
    args = run_args(good_csv, tmp_path / "out", api.base_url)
    args[args.index("--snapshot-date") + 1] = text
    result = invoke(args)
    assert_one_line_error(result, 2, f"--snapshot-date must be a date as YYYY-MM-DD, got {text!r}")


def test_concurrency_zero_is_a_one_line_usage_error_before_any_call(
    api: Sandbox, tmp_path: Path, good_csv: Path
) -> None:
    out = tmp_path / "out"
    result = invoke(run_args(good_csv, out, api.base_url, "--concurrency", "0"))
    assert_one_line_error(
        result,
        2,
        "Invalid value for '--concurrency' / '--max-concurrency': 0 is not in the range "
        "1<=x<=1024. "
        "(see xhs-profiles run --help)",
    )
    assert api.stats().calls == 0 and not out.exists()


@pytest.mark.parametrize("url", ["ftp://x", "file:///etc", "javascript:alert(1)", "127.0.0.1:80"])
def test_a_base_url_that_is_not_http_is_a_usage_error(
    tmp_path: Path, good_csv: Path, url: str
) -> None:
    result = invoke(run_args(good_csv, tmp_path / "out", url))
    assert_one_line_error(result, 2, f"--base-url must be an http:// or https:// URL, got {url!r}")
    assert not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_is_a_usage_error(
    api: Sandbox, tmp_path: Path, good_csv: Path
) -> None:
    out = tmp_path / "out.parquet"
    out.write_bytes(b"not a folder")
    result = invoke(run_args(good_csv, out, api.base_url))
    assert_one_line_error(result, 2, f"--out {out} is a file, not a folder")
    assert out.read_bytes() == b"not a folder"


def test_an_out_below_a_file_is_not_writable(api: Sandbox, tmp_path: Path, good_csv: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker / "out"
    result = invoke(run_args(good_csv, out, api.base_url))
    assert_one_line_error(result, 2, f"--out {out} is not writable: Not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_is_not_writable(api: Sandbox, tmp_path: Path, good_csv: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        result = invoke(run_args(good_csv, out, api.base_url))
    finally:
        out.chmod(0o755)
    assert_one_line_error(result, 2, f"--out {out} is not writable: Permission denied")


def test_a_state_written_by_a_newer_version_is_refused_and_left_alone(
    api: Sandbox, tmp_path: Path, good_csv: Path
) -> None:
    out = tmp_path / "out"
    assert invoke(run_args(good_csv, out, api.base_url)).exit_code == 0
    state = out / "_state" / f"dt={SNAPSHOT}.sqlite"
    with sqlite3.connect(state) as conn:
        conn.execute("PRAGMA user_version = 99")
    calls = api.stats().calls

    result = invoke(run_args(good_csv, out, api.base_url))
    assert_one_line_error(
        result,
        2,
        f"{state}: written by a newer xhs-profiles (state v99; this version reads up to v1); "
        "upgrade, or use another --out",
    )
    # Never silently started over: same file, same version, same ids, no call.
    conn = sqlite3.connect(state)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 99
        assert conn.execute("SELECT count(*) FROM ids WHERE status = 'written'").fetchone()[0] == 2
    finally:
        conn.close()
    assert api.stats().calls == calls


def test_a_missing_token_names_the_environment_variable(
    api: Sandbox, tmp_path: Path, good_csv: Path
) -> None:
    result = invoke(run_args(good_csv, tmp_path / "out", api.base_url), token=None)
    assert_one_line_error(result, 2, "no API token: set JUSTONEAPI_TOKEN (or pass --token)")
    assert api.stats().calls == 0 and not (tmp_path / "out").exists()


# ================================================================== disk full


def test_disk_full_on_the_first_parquet_part_stops_with_exit_5_and_a_rerun_loses_nothing(
    sandbox: SandboxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = sandbox()
    ids = [make_id(i, "full") for i in range(120)]
    csv_path = write_ids(tmp_path / "ids.csv", ids)
    out = tmp_path / "out"
    args = run_args(csv_path, out, api.base_url, "--batch-rows", "20")
    real_replace = os.replace
    refused: list[str] = []

    def disk_full(src: Any, dst: Any, *rest: Any, **kwargs: Any) -> None:
        if str(dst).endswith(".parquet"):
            refused.append(str(dst))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        real_replace(src, dst, *rest, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(pipeline.runner.sink.os, "replace", disk_full)
        full = invoke(args)

    assert refused, "the patch never saw a Parquet part"
    first = Path(refused[0])
    assert_one_line_error(
        full,
        5,
        f"disk full while writing {out}/profiles/dt={SNAPSHOT}/{Path(refused[-1]).name}: "
        "free space and rerun; nothing fetched is lost",
    )
    assert first.parent == out / "profiles" / f"dt={SNAPSHOT}"
    assert not list(out.glob("profile*/*/*.parquet"))
    assert not list((out / "_tmp").iterdir())

    rerun = invoke(args)
    assert (rerun.exit_code, rerun.stderr) == (0, ""), rerun.output
    assert sorted(table(out, "profiles")["user_id"]) == sorted(ids)
    successes = api.stats().successes_by_id
    assert {uid: n for uid, n in successes.items() if n != 1} == {}
    assert set(successes) == set(ids)


def test_disk_full_in_the_state_stops_with_exit_5_and_a_rerun_completes(
    sandbox: SandboxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's own SQLITE_FULL, made real with ``PRAGMA max_page_count`` on the run's
    connection: the answers already paid for but not stored are at most the calls in flight."""
    api = sandbox()
    ids = [make_id(i, "statefull") for i in range(200)]
    csv_path = write_ids(tmp_path / "ids.csv", ids)
    out = tmp_path / "out"
    args = run_args(csv_path, out, api.base_url, "--concurrency", "4")
    real_connect = pipeline.state._connect

    def small_disk(path: Path) -> sqlite3.Connection:
        conn = real_connect(path)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 40}")
        return conn

    with monkeypatch.context() as patch:
        patch.setattr(pipeline.state, "_connect", small_disk)
        full = invoke(args)
    state = out / "_state" / f"dt={SNAPSHOT}.sqlite"
    assert_one_line_error(
        full,
        5,
        f"disk full while storing a fetched profile in the state {state}: free space and rerun; "
        "progress already stored is kept",
    )
    paid_before = set(api.stats().successes_by_id)
    assert 0 < len(paid_before) < len(ids)

    rerun = invoke(args)
    assert (rerun.exit_code, rerun.stderr) == (0, ""), rerun.output
    assert sorted(table(out, "profiles")["user_id"]) == sorted(ids)
    twice = {uid for uid, n in api.stats().successes_by_id.items() if n > 1}
    assert len(twice) <= 4, twice


# ================================================================== hostile ids


def test_input_cells_that_are_not_ids_never_reach_a_url(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    api = sandbox()
    real = "5a901362e8ac2b36c99bce33"
    other = make_id(3, "url")
    hostile = [
        "../../admin?x=",
        f"{real}&token=evil",
        f"{real}/../../admin",
        f"{real}?userId=0",
        f"{real}#x",
        "%2e%2e%2fadmin",
        "５a901362e8ac2b36c99bce33",  # a full-width digit
        f"{real[:-1]}\u0430",  # a Cyrillic a
        "=cmd|' /C calc'!A0",
    ]
    cells = [*hostile, f"https://www.xiaohongshu.com/user/profile/{other}?xsec_token=abc"]
    path = tmp_path / "ids.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id"])
        writer.writerows([cell] for cell in cells)
    out = tmp_path / "out"
    result = invoke(run_args(path, out, api.base_url))
    assert (result.exit_code, result.stderr) == (0, ""), result.output

    stats = api.stats()
    assert set(stats.calls_by_id) == {other}  # only the one real id was ever requested
    rows = failures_csv(out)
    assert [(r["user_id"], r["code"]) for r in rows] == [
        ("'" + cell if cell.startswith("=") else cell, "400") for cell in hostile
    ]
    assert table(out, "profiles")["user_id"].to_list() == [other]


# ================================================================== the token


TOKENS = ["tok_SECRET_abc123XYZ", "tok_SECRET+abc/123=XYZ"]


def token_forms(token: str) -> set[bytes]:
    return {form.encode() for form in (token, quote(token, safe=""), quote_plus(token))}


def leaks_in_files(out: Path, token: str) -> list[str]:
    """Every file under ``out`` (state, WAL, JSON, manifest, Parquet, CSV) whose bytes hold it."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in files) and any(p.suffix == ".json" for p in files)
    forms = token_forms(token)
    return [str(p) for p in files if any(form in p.read_bytes() for form in forms)]


def leaks_in_text(texts: Mapping[str, str], token: str) -> list[str]:
    forms = {form.decode() for form in token_forms(token)}
    return [name for name, text in texts.items() if any(form in text for form in forms)]


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "aiohttp", "asyncio", "pipeline"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog


def captured(result: Result, caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    records = "\n".join(
        f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records
    )
    return {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "caplog": caplog.text,
        "records": records,
        "exception": repr(result.exception),
    }


def failing_sandbox(sandbox: SandboxFactory, token: str, ids: list[str]) -> Sandbox:
    """The answers that put text in messages: transport faults, HTML, a retry, then 601."""
    return sandbox(
        token=token,
        scripts={
            ids[0]: ["reset", "reset_mid", "truncated"],
            ids[1]: ["html502", "not_json", "huge"],
            ids[2]: ["code:202"],
            ids[3]: ["500", "ok"],
            ids[8]: ["601"],
        },
    )


@pytest.mark.parametrize("token", TOKENS)
def test_the_token_never_leaks_from_a_failing_debug_run(
    sandbox: SandboxFactory, tmp_path: Path, debug_logs: pytest.LogCaptureFixture, token: str
) -> None:
    ids = sorted(make_id(i, "leak") for i in range(12))
    api = failing_sandbox(sandbox, token, ids)
    csv_path = write_ids(tmp_path / "ids.csv", [*ids, "not-an-id"])
    out = tmp_path / "out"
    args = run_args(csv_path, out, api.base_url, "--debug", "--concurrency", "1")
    result = invoke([*args, "--max-attempts", "2"], token=token)
    assert result.exit_code == 3, result.output
    assert result.stderr.endswith(
        "xhs-profiles: stopped: insufficient balance (code 601): top up the account, then "
        "rerun; progress is kept\n"
    )
    assert leaks_in_text(captured(result, debug_logs), token) == []
    assert leaks_in_files(out, token) == []
    # Request lines were logged (so the scan above had URLs to look at), without the token.
    assert any("?userId=" in r.getMessage() for r in debug_logs.records)


@pytest.mark.slow
def test_the_token_never_leaks_from_a_debug_subprocess(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Real stderr, with the CLI's own --debug logging set-up (not pytest's handlers)."""
    token = TOKENS[1]
    ids = sorted(make_id(i, "leak-sub") for i in range(12))
    api = failing_sandbox(sandbox, token, ids)
    csv_path = write_ids(tmp_path / "ids.csv", ids)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUSTONEAPI_", "XHS_"))}
    env["JUSTONEAPI_TOKEN"] = token
    args = run_args(csv_path, out, api.base_url, "--debug", "--concurrency", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", *args, "--max-attempts", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr
    assert "DEBUG pipeline.client: GET " in proc.stderr and "?userId=" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert leaks_in_text({"stdout": proc.stdout, "stderr": proc.stderr}, token) == []
    assert leaks_in_files(out, token) == []


def test_a_wrong_token_stops_with_code_100_and_is_never_shown(
    sandbox: SandboxFactory, tmp_path: Path, debug_logs: pytest.LogCaptureFixture
) -> None:
    wrong = "tok_WRONG_zzz987QQQ"
    api = sandbox(token=TOKENS[0])
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(i) for i in range(5)])
    out = tmp_path / "out"
    result = invoke(run_args(csv_path, out, api.base_url, "--debug"), token=wrong)
    assert (result.exit_code, result.stderr.splitlines()[-1]) == (
        3,
        "xhs-profiles: stopped: token invalid or inactive (code 100): check JUSTONEAPI_TOKEN",
    )
    assert leaks_in_text(captured(result, debug_logs), wrong) == []
    assert leaks_in_files(out, wrong) == []
    assert failures_csv(out) == []  # an account-level stop fails no id


def test_an_unexpected_error_with_debug_shows_a_traceback_without_the_token(
    sandbox: SandboxFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    """A bug that lets a URL escape into an exception: the message and traceback are masked."""
    token = TOKENS[0]
    api = sandbox(token=token)

    def broken_flatten(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(f"cannot flatten GET {api.base_url}/x?token={token}&userId=1")

    monkeypatch.setattr(pipeline.runner, "flatten", broken_flatten)
    csv_path = write_ids(tmp_path / "ids.csv", [make_id(1)])
    out = tmp_path / "out"
    result = invoke(run_args(csv_path, out, api.base_url, "--debug"), token=token)
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "token=***" in result.stderr
    assert leaks_in_text(captured(result, debug_logs), token) == []


def test_config_repr_and_help_never_show_the_token(tmp_path: Path) -> None:
    token = TOKENS[1]
    config = RunConfig(
        input_path=tmp_path / "ids.csv",
        out_dir=tmp_path / "out",
        token=Secret(token),
        base_url="http://127.0.0.1:9",
        snapshot_date=dt.date(2026, 11, 28),
    )
    for text in (repr(config), str(config), repr(config.token), f"{config.token}"):
        assert leaks_in_text({"text": text}, token) == [], text
    assert config.token.reveal() == token
    help_text = CliRunner().invoke(cli, ["run", "--help"], env={"JUSTONEAPI_TOKEN": token})
    assert help_text.exit_code == 0
    assert "JUSTONEAPI_TOKEN" in help_text.output
    assert leaks_in_text({"help": help_text.output}, token) == []
