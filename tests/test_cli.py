"""The command line: exact messages and exit codes, through click's CliRunner."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import click
import httpx
import pytest
from click.testing import CliRunner, Result

from pipeline.cli import Seams, cli
from pipeline.errors import StorageError
from tests.helpers import QUICK_START, make_id, read_table, write_ids

SNAPSHOT = "2026-11-28"


def invoke(
    args: list[str],
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    token: str | None = "sandbox",
) -> Result:
    env = {"JUSTONEAPI_TOKEN": token, "JUSTONEAPI_BASE_URL": None}
    return CliRunner().invoke(
        cli, args, obj=Seams(transport=transport, config_overrides=QUICK_START), env=env
    )


def run_args(ids_csv: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return [
        "run",
        str(ids_csv),
        "--out",
        str(out),
        "--base-url",
        base_url,
        "--snapshot-date",
        SNAPSHOT,
        "--no-progress",
        *extra,
    ]


@pytest.fixture
def ids_csv(tmp_path: Path) -> Path:
    return write_ids(tmp_path / "ids.csv", [make_id(i) for i in range(6)])


def test_a_completed_run_exits_0_and_prints_a_three_line_summary(
    sandbox, ids_csv: Path, tmp_path: Path
) -> None:
    api = sandbox()
    result = invoke(run_args(ids_csv, tmp_path / "out", api.base_url))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"snapshot {SNAPSHOT}: 6 profiles, 0 failed, 0 pending"
    assert lines[1].startswith("this run: 6 calls, 6 fetched, 0 failed, 0 retried, 0 rate-limited")
    assert lines[2] == (
        f"output: {tmp_path / 'out'}  (failures: failures/dt={SNAPSHOT}/failures.csv, 0 rows)"
    )
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--region", "cn", "--base-url", "http://127.0.0.1:9"],
            "xhs-profiles: give --region or --base-url, not both\n",
        ),
    ],
)
def test_bad_options_exit_2_with_one_line(
    ids_csv: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    base = ["run", str(ids_csv), "--out", str(tmp_path / "out"), "--no-progress"]
    result = invoke(base + args)
    assert result.exit_code == 2
    assert result.stderr == message


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (100, "token invalid or inactive (code 100): check JUSTONEAPI_TOKEN"),
        (303, "daily quota exceeded (code 303): rerun after the quota resets; progress is kept"),
        (600, "permission denied (code 600): this token may not call get-user/v4"),
        (601, "insufficient balance (code 601): top up the account, then rerun; progress is kept"),
    ],
)
def test_account_level_codes_exit_3_with_what_to_do(
    sandbox, tmp_path: Path, code: int, message: str
) -> None:
    ids = sorted(make_id(i) for i in range(5))
    api = sandbox(scripts={ids[2]: [f"code:{code}"]})
    csv_path = write_ids(tmp_path / "ids.csv", ids)
    result = invoke(run_args(csv_path, tmp_path / "out", api.base_url, "--concurrency", "1"))
    assert result.exit_code == 3
    assert result.stderr == f"xhs-profiles: stopped: {message}\n"
    assert result.stdout.splitlines()[0] == f"snapshot {SNAPSHOT}: 2 profiles, 0 failed, 3 pending"


def test_a_removed_endpoint_exits_3_and_suggests_v3(sandbox, ids_csv: Path, tmp_path: Path) -> None:
    api = sandbox(gone_versions=frozenset({"v4"}))
    result = invoke(run_args(ids_csv, tmp_path / "out", api.base_url))
    assert result.exit_code == 3
    assert result.stderr == (
        "xhs-profiles: stopped: the get-user/v4 endpoint answered HTTP 404: it may have been "
        "removed; try --api-version v3\n"
    )


def test_max_calls_exits_4_and_dry_run_then_counts_what_is_left(
    sandbox, ids_csv: Path, tmp_path: Path
) -> None:
    api = sandbox()
    out = tmp_path / "out"
    result = invoke(run_args(ids_csv, out, api.base_url, "--max-calls", "2", "--concurrency", "1"))
    assert result.exit_code == 4
    assert result.stderr == (
        "xhs-profiles: stopped: --max-calls 2 reached; the rest stays pending: "
        "rerun the same command to go on\n"
    )
    dry = invoke(run_args(ids_csv, out, api.base_url, "--dry-run"))
    assert dry.exit_code == 0
    assert dry.stdout == (
        f"dry run: 4 ids would be called (snapshot {SNAPSHOT}, {out}); no call made\n"
    )
    assert api.stats().calls == 2


def test_the_http_transport_is_injectable_through_the_cli(ids_csv: Path, tmp_path: Path) -> None:
    """The same seam the unit tests use: no server at all, an httpx.MockTransport answers."""
    seen: list[str] = []
    sample = json.loads(Path("tests/golden/seed-get-user-v4-response.json").read_text())

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.params["userId"])
        data = {**sample["data"], "userid": request.url.params["userId"]}
        return httpx.Response(200, json={"code": 0, "data": data})

    out = tmp_path / "out"
    result = invoke(
        run_args(ids_csv, out, "http://api.invalid"), transport=httpx.MockTransport(answer)
    )
    assert result.exit_code == 0, result.output
    assert sorted(seen) == sorted(make_id(i) for i in range(6))
    assert read_table(out, "profiles")["nickname"].to_list() == ["小顾小小家"] * 6


def test_sandbox_flag_runs_without_a_token_and_says_so(ids_csv: Path, tmp_path: Path) -> None:
    result = invoke(
        ["run", str(ids_csv), "--out", str(tmp_path / "out"), "--sandbox", "--no-progress"],
        token=None,
    )
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(
        f"Sandbox mode: running {ids_csv} against the built-in sandbox API at http://127.0.0.1:"
    )
    assert "no real calls" in result.stderr


def test_help_lists_the_exit_codes() -> None:
    result = invoke(["run", "--help"])
    assert result.exit_code == 0
    for line in (
        "0  completed",
        "2  bad usage or bad input",
        "3  stopped early",
        "4  --max-calls reached",
        "5  output or state could not be written",
    ):
        assert line in result.stdout


# --- the one error boundary ------------------------------------------------------------------


@pytest.fixture
def throwaway_command() -> Iterator[Callable[[BaseException], None]]:
    """Adds ``xhs-profiles boom`` raising the given error; removed again after the test."""
    raised: list[BaseException] = []

    @click.command("boom")
    @click.option("--debug", is_flag=True, callback=lambda ctx, _p, v: ctx.meta.update(
        {"xhs_profiles.debug": v}))  # fmt: skip
    def boom(debug: bool) -> None:
        raise raised[0]

    cli.add_command(boom)
    try:
        yield raised.append
    finally:
        cli.commands.pop("boom")


def test_a_new_subcommand_gets_the_storage_error_exit_code_and_message(
    throwaway_command: Callable[[BaseException], None],
) -> None:
    throwaway_command(StorageError("disk full while writing x: free space and rerun"))
    result = invoke(["boom"])
    assert result.exit_code == 5
    assert result.stdout == ""
    assert result.stderr == "xhs-profiles: disk full while writing x: free space and rerun\n"


def test_an_unexpected_error_is_one_line_and_its_traceback_shows_only_with_debug(
    throwaway_command: Callable[[BaseException], None],
) -> None:
    throwaway_command(RuntimeError("token=abc123 leaked"))
    plain = invoke(["boom"])
    assert plain.exit_code == 1
    assert plain.stderr == (
        "xhs-profiles: unexpected error: RuntimeError: token=*** leaked "
        "(rerun with --debug for the traceback)\n"
    )
    debug = invoke(["boom", "--debug"])
    assert debug.exit_code == 1
    assert debug.stderr.startswith("Traceback (most recent call last):\n")
    assert "RuntimeError: token=*** leaked" in debug.stderr
    assert "abc123" not in debug.stderr


def test_ctrl_c_in_any_subcommand_exits_130_with_the_resume_hint(
    throwaway_command: Callable[[BaseException], None],
) -> None:
    throwaway_command(KeyboardInterrupt())
    result = invoke(["boom"])
    assert result.exit_code == 130
    assert result.stderr == (
        "xhs-profiles: interrupted; progress kept, rerun the same command to resume\n"
    )


def test_sandbox_errors_go_through_the_same_boundary() -> None:
    result = invoke(["sandbox", "--latency", "x"])
    assert result.exit_code == 2
    assert result.stderr == "xhs-profiles: sandbox: could not convert string to float: 'x'\n"
    faults = invoke(["sandbox", "--faults", "301:2"])
    assert faults.exit_code == 2
    assert faults.stderr == (
        "xhs-profiles: sandbox: fault_mix probabilities must be in 0..1 and sum to <= 1\n"
    )


def test_a_taken_port_is_a_one_line_usage_error(sandbox) -> None:
    port = urlsplit(sandbox().base_url).port
    result = invoke(["sandbox", "--port", str(port)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"sandbox API on http://127.0.0.1:{port} (token 'sandbox'); Ctrl-C stops it\n"
        f"xhs-profiles: sandbox: cannot listen on 127.0.0.1:{port}: error while attempting to "
        f"bind on address ('127.0.0.1', {port}): address already in use; choose another port\n"
    )


def test_the_sandbox_takes_several_tokens_each_with_its_own_limit(sandbox) -> None:
    port = urlsplit(sandbox().base_url).port
    args = ["sandbox", "--port", str(port), "--token", "a", "--token", "b", "--rate-limit", "5"]
    result = invoke([*args, "--rate-scope", "token"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (
        f"sandbox API on http://127.0.0.1:{port} (tokens 'a', 'b'; a rate limit per token); "
        "Ctrl-C stops it"
    )
    shared = invoke(args)
    assert shared.stderr.splitlines()[0] == (
        f"sandbox API on http://127.0.0.1:{port} (tokens 'a', 'b'); Ctrl-C stops it"
    )


# --- failure thresholds ----------------------------------------------------------------------


def run_with_failures(sandbox, tmp_path: Path, *extra: str, snapshot: str = SNAPSHOT) -> Result:
    """10 ids: two answer 404 (permanent), one 500 on every attempt (transient)."""
    ids = [make_id(i, "thresholds") for i in range(10)]
    api = sandbox(scripts={ids[0]: ["404"] * 9, ids[1]: ["404"] * 9, ids[2]: ["500"] * 9})
    csv_path = write_ids(tmp_path / "ids.csv", ids)
    args = run_args(csv_path, tmp_path / "out", api.base_url, "--max-attempts", "2", *extra)
    args[args.index("--snapshot-date") + 1] = snapshot
    seams = Seams(config_overrides={"backoff_base": 0.001, "backoff_cap": 0.001, **QUICK_START})
    env = {"JUSTONEAPI_TOKEN": "sandbox", "JUSTONEAPI_BASE_URL": None}
    return CliRunner().invoke(cli, args, obj=seams, env=env)


def test_over_the_failure_rate_exits_6_after_writing_everything(sandbox, tmp_path: Path) -> None:
    result = run_with_failures(sandbox, tmp_path, "--max-failure-rate", "0.2")
    assert result.exit_code == 6, result.output
    assert result.stderr == (
        "xhs-profiles: failed 30.0% of ids (3 of 10: 2 permanent, 1 transient), over "
        "--max-failure-rate 0.2; no previous snapshot; everything is written\n"
    )
    out = tmp_path / "out"
    assert (out / "profiles" / f"dt={SNAPSHOT}" / "_SUCCESS").exists()
    assert result.stdout.splitlines()[0] == f"snapshot {SNAPSHOT}: 7 profiles, 3 failed, 0 pending"
    [summary_file] = (out / "_runs").glob("*.json")
    summary = json.loads(summary_file.read_text())
    assert summary["exit_code"] == 6
    assert summary["failure_check"] == {
        "rate": 0.3,
        "max_failure_rate": 0.2,
        "max_failures": None,
        "previous_rate": None,
        "exceeded": True,
    }
    assert (summary["snapshot"]["failed_permanent"], summary["snapshot"]["failed_transient"]) == (
        2,
        1,
    )


def test_within_the_limits_exits_0_and_the_next_snapshot_compares_with_it(
    sandbox, tmp_path: Path
) -> None:
    first = run_with_failures(sandbox, tmp_path, "--max-failure-rate", "0.3", "--max-failures", "3")
    assert first.exit_code == 0, first.output
    second = run_with_failures(sandbox, tmp_path, "--max-failures", "2", snapshot="2026-11-29")
    assert second.exit_code == 6, second.output
    assert second.stderr == (
        "xhs-profiles: failed 30.0% of ids (3 of 10: 2 permanent, 1 transient), over "
        "--max-failures 2; previous snapshot 30.0%; everything is written\n"
    )


def test_a_failure_rate_above_1_is_a_usage_error(ids_csv: Path, tmp_path: Path) -> None:
    result = invoke(
        run_args(ids_csv, tmp_path / "out", "http://127.0.0.1:9", "--max-failure-rate", "1.5")
    )
    assert result.exit_code == 2
    assert result.stderr == (
        "xhs-profiles: Invalid value for '--max-failure-rate': 1.5 is not in the range "
        "0<=x<=1. (see xhs-profiles run --help)\n"
    )
