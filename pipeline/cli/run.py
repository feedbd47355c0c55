"""``run``: its options → a frozen ``RunConfig`` (``_make_config``) → ``runner.run``, or with
``--dask`` one config per shard → ``cluster.run_on_dask``; ``--sandbox``; the closing lines."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

import click

from pipeline import cluster, runner, sink, storage
from pipeline.cli.group import (
    EXIT_CODES_HELP,
    META_EVENTS,
    META_LOG_FORMAT,
    Seams,
    configure_logging,
    debug_option,
)
from pipeline.cli.locations import OutLocation
from pipeline.config import (
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    REGION_HOSTS,
    TOKEN_ENV,
    RunConfig,
    Secret,
    parse_snapshot_date,
    validate_base_url,
)
from pipeline.errors import FailureThresholdExceeded, Interrupted, StorageError, UsageError
from pipeline.events import EventLog
from pipeline.ids import open_id_file
from pipeline.progress import PROGRESS_MODES, Display, choose_display, make_progress
from pipeline.run_report import Outcome, RunReport
from pipeline.sandbox import Sandbox, SandboxConfig, drift_config_for
from pipeline.shards import INDEX_ENV, MAX_SHARDS, Shard, resolve_shard, shard_token
from pipeline.timestamps import utcnow


@click.command("run", epilog=EXIT_CODES_HELP)
@click.argument("input_csv", metavar="INPUT.csv", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    metavar="DIR|URL",
    type=OutLocation(path_type=Path),
    help="Output folder, or an object store URL such as s3://bucket/prefix (credentials from "
    "the AWS environment): tables, failures, manifests, run summaries.",
)
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    show_envvar=True,
    default=None,
    help=f"API token; prefer the {TOKEN_ENV} environment variable.",
)
@click.option(
    "--base-url",
    envvar=BASE_URL_ENV,
    show_envvar=True,
    default=None,
    help=f"API base URL (http or https). Default {DEFAULT_BASE_URL}.",
)
@click.option(
    "--region",
    type=click.Choice(sorted(REGION_HOSTS)),
    default=None,
    help="global: api.justoneapi.com; cn: the documented mainland host (plain HTTP).",
)
@click.option("--api-version", type=click.Choice(["v4", "v3"]), default="v4", show_default=True)
@click.option(
    "--id-column",
    default=None,
    help="Column holding the ids. Default: user_id, userId, userid or id.",
)
@click.option(
    "--snapshot-date",
    default=None,
    metavar="YYYY-MM-DD",
    help="Partition date (dt=...). Default: today, UTC.",
)
@click.option(
    "--concurrency",
    "--max-concurrency",
    "concurrency",
    type=click.IntRange(min=1, max=1024),
    default=512,
    show_default=True,
    help="At most this many calls in flight; the controller finds how many pay off below it.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="At most this many requests per second; the controller finds the rate below it.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1, max=50),
    default=5,
    show_default=True,
    help="Attempts per id for retryable failures (301, 500, 503, timeouts).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds per call (the vendor advises 60).",
)
@click.option(
    "--max-calls",
    type=click.IntRange(min=0),
    default=None,
    help="Stop cleanly after this many calls (each is billed); exit 4.",
)
@click.option(
    "--max-failure-rate",
    type=click.FloatRange(min=0, max=1),
    default=None,
    metavar="FRACTION",
    help="Exit 6 when a completed snapshot has more failed ids than this share (all is written).",
)
@click.option(
    "--max-failures",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Exit 6 when a completed snapshot has more than N failed ids (all is written).",
)
@click.option("--dry-run", is_flag=True, help="Print how many calls the run would make; make none.")
@click.option(
    "--batch-rows",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Profiles per Parquet part before compaction.",
)
@click.option(
    "--progress",
    "progress_mode",
    type=click.Choice(PROGRESS_MODES),
    default="auto",
    show_default=True,
    help="bar: a live bar; log: a line every 15 s or 10%; auto: the bar on an interactive "
    "terminal, lines otherwise (a file or pipe, TERM=dumb, CI, TTY_INTERACTIVE=0).",
)
@click.option("--no-progress", is_flag=True, help="The same as --progress none.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    is_eager=True,
    callback=lambda ctx, _param, value: _remember(ctx, META_LOG_FORMAT, value),
    help="json: every stderr line is one JSON object (events, progress, summary, errors).",
)
@click.option(
    "--shard-index",
    type=click.IntRange(min=0),
    default=None,
    metavar="K",
    help=f"Fetch only shard K's ids (0-based; default ${INDEX_ENV}, as Kubernetes sets it).",
)
@click.option(
    "--shard-count",
    type=click.IntRange(min=1, max=MAX_SHARDS),
    default=None,
    metavar="N",
    help="Split the ids into N shards by a stable hash; the last shard to finish commits.",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Read the API token from this file's first line (a shard's JUSTONEAPI_TOKEN_<K> "
    "comes first).",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the checkpoint (SQLite) and its lock live, on a local disk. Default: "
    "OUT/_state; for a URL --out, $XDG_CACHE_HOME/xhs-profiles/<hash of the URL>.",
)
@click.option(
    "--sandbox",
    "use_sandbox",
    is_flag=True,
    help="Run against the built-in sandbox API on 127.0.0.1 (no real calls).",
)
@click.option(
    "--dask",
    "dask_address",
    default=None,
    metavar="SCHEDULER",
    help="Run the --shard-count shards as tasks on this Dask scheduler (tcp://host:8786); "
    "shard K's token from JUSTONEAPI_TOKEN_K. Needs the dask extra.",
)
@debug_option("Debug logging (tokens masked) and tracebacks.")
@click.pass_obj
def run_command(obj: Seams | None, /, **options: Any) -> None:
    """Fetch the profiles of the ids in INPUT.csv into --out (resumes a killed run)."""
    debug = bool(options.pop("debug"))
    json_logs = options.pop("log_format") == "json"
    events = EventLog(runner.new_run_id())
    click.get_current_context().meta[META_EVENTS] = events
    seams = obj or Seams()
    display = _display(options.pop("progress_mode"), options.pop("no_progress"), json_logs)
    dask_address = options.pop("dask_address")
    if dask_address is not None:
        with configure_logging(debug, events if json_logs else None):
            _run_on_dask(dask_address, options, seams, events, json_logs)
        return
    with configure_logging(debug, events if json_logs else None):
        if options.pop("use_sandbox"):
            snapshot = options["snapshot_date"]
            day = parse_snapshot_date(snapshot) if snapshot else utcnow().date()
            sandbox_config = _drifting_sandbox(
                options["input_csv"], options["id_column"], options["out_dir"], day
            )
            with Sandbox(sandbox_config) as sandbox:
                options["base_url"] = sandbox.base_url
                options["token"] = sandbox.config.token
                notice = (
                    f"Sandbox mode: running {options['input_csv']} against the built-in sandbox "
                    f"API at {sandbox.base_url} (no real calls, no token needed)."
                )
                if not json_logs:
                    click.echo(notice, err=True)
                config = _make_config(options, sandbox=True)
                report = _run(config, seams, display, events, json_logs, notice)
        else:
            config = _make_config(options, sandbox=False)
            report = _run(config, seams, display, events, json_logs)
    _print_report(report)
    if report.stopped_by is not None:
        raise report.stopped_by
    if report.interrupted:
        raise Interrupted()
    if report.failure_check is not None and report.failure_check.exceeded:
        raise FailureThresholdExceeded(report.failure_check.message())


def _run_on_dask(
    address: str,
    options: dict[str, Any],
    seams: Seams,
    events: EventLog,
    json_logs: bool,
) -> None:
    """``--dask``: one config per shard (each with its own token) → ``cluster.run_on_dask``."""
    shard_count = options["shard_count"]
    if shard_count is None:
        raise UsageError("--dask needs --shard-count N (one task per shard; N = your accounts)")
    if options["shard_index"] is not None:
        raise UsageError("--dask runs every shard: give --shard-count, not --shard-index")
    if options["use_sandbox"]:
        raise UsageError(
            "--sandbox cannot go with --dask (the workers may not reach this machine's "
            "127.0.0.1): start `xhs-profiles sandbox --host HOST` and give --base-url"
        )
    if options["dry_run"]:
        raise UsageError("--dry-run cannot go with --dask: run it without --dask")
    cluster.import_distributed()  # before anything else: without the extra, one line says so
    # The workers open these paths: absolute, so that a worker's own folder does not matter
    # (an --out URL is the same everywhere; the workers' state then goes to --state-dir, or to
    # the cache folder as this machine names it).
    for name in ("input_csv", "out_dir", "state_dir"):
        if isinstance(options[name], Path):
            options[name] = options[name].absolute()
    configs = []
    for index in range(shard_count):
        shard = Shard(index, shard_count)
        if not shard_token(shard, os.environ, options["token_file"], options["token"]):
            raise UsageError(f"no API token for {shard.label}: set {TOKEN_ENV}_{index}")
        config = _make_config({**options, "shard_index": index}, sandbox=False)
        configs.append(dataclasses.replace(config, **seams.config_overrides))
    events.bind(snapshot_date=configs[0].snapshot_date, secret=None)
    tokens = len({config.token for config in configs})
    if tokens < len(configs):
        _notice(
            events,
            json_logs,
            f"{len(configs)} shards share {tokens} token{'s' * (tokens != 1)}: shards on one "
            f"token share its rate limit (set {TOKEN_ENV}_<K> for each shard K)",
        )
    result = cluster.run_on_dask(
        address, configs, on_shard=lambda shard: _notice(events, json_logs, shard.line())
    )
    for line in result.lines():
        click.echo(line)
    error = result.error()
    if error is not None:
        raise error


def _notice(events: EventLog, json_logs: bool, text: str) -> None:
    """A line for the user on stderr (a ``log`` event with --log-format json)."""
    if json_logs:
        events.log(text)
    else:
        click.echo(text, err=True)


def _drifting_sandbox(
    input_csv: Path, id_column: str | None, out: Path | str, day: dt.date
) -> SandboxConfig:
    """``--sandbox`` answers as of the snapshot date, in a history that starts at the oldest
    complete snapshot in --out: a series of daily runs sees its creators grow, and the demo
    plan's events (a spike, a rename, a deletion, ...) on days 3 to 6 of the series."""
    ids = [row.user_id for row in open_id_file(input_csv, id_column) if row.user_id]
    try:
        dates = sink.manifest_dates(storage.open_store(out))
    except StorageError:
        dates = []  # an OUT that cannot be read: the run's own check of it says why, next
    start = min([*dates, day])
    return drift_config_for(
        day, ids, start=start, latency=(0.01, 0.05), fault_mix="301:0.1,500:0.05"
    )


def _remember(ctx: click.Context, key: str, value: str) -> str:
    ctx.meta[key] = value
    return value


def _display(mode: str, no_progress: bool, json_logs: bool) -> Display:
    """--progress and --no-progress (the same as --progress none) → what stderr shows."""
    if no_progress and mode not in ("auto", "none"):
        raise UsageError(f"give --progress {mode} or --no-progress, not both")
    if no_progress or mode == "none":
        return "none"
    if json_logs:
        if mode == "bar":
            raise UsageError(
                "--progress bar cannot go with --log-format json (a bar is not JSON): "
                "use --progress log or none"
            )
        return "log"
    return choose_display(mode, sys.stderr, os.environ)


def _run(
    config: RunConfig,
    seams: Seams,
    display: Display,
    events: EventLog,
    json_logs: bool,
    notice: str | None = None,
) -> RunReport:
    if seams.config_overrides:
        config = dataclasses.replace(config, **seams.config_overrides)
    events.bind(snapshot_date=config.snapshot_date, secret=None if config.sandbox else config.token)
    if json_logs and notice is not None:
        events.log(notice)
    progress = make_progress(
        "none" if config.dry_run else display, emit=events.emit if json_logs else None
    )
    report = runner.run(
        config, transport=seams.transport, progress=progress, events=events, run_id=events.run_id
    )
    progress.finish(report)
    return report


def _make_config(options: dict[str, Any], *, sandbox: bool) -> RunConfig:
    base_url = options["base_url"]
    if options["region"] is not None:
        if base_url is not None and not sandbox:
            raise UsageError("give --region or --base-url, not both")
        base_url = base_url if sandbox else REGION_HOSTS[options["region"]]
    snapshot = options["snapshot_date"]
    extra: dict[str, Any] = {}
    if snapshot is not None:
        extra["snapshot_date"] = parse_snapshot_date(snapshot)
    shard = resolve_shard(options["shard_index"], options["shard_count"], os.environ)
    token = options["token"]
    if not sandbox:
        token = shard_token(shard, os.environ, options["token_file"], token)
    out, state_dir = options["out_dir"], options["state_dir"]
    if isinstance(out, str):  # a URL: the checkpoint goes to a local folder, never to OUT
        state_dir = state_dir or storage.default_state_dir(out)
        extra.update(out_url=out, out_dir=state_dir)
    else:
        extra["out_dir"] = out
    return RunConfig(
        input_path=options["input_csv"],
        token=Secret(token or ""),
        base_url=validate_base_url(base_url or DEFAULT_BASE_URL),
        api_version=options["api_version"],
        id_column=options["id_column"],
        concurrency=options["concurrency"],
        rate=options["rate"],
        max_attempts=options["max_attempts"],
        timeout=options["timeout"],
        max_calls=options["max_calls"],
        max_failure_rate=options["max_failure_rate"],
        max_failures=options["max_failures"],
        dry_run=options["dry_run"],
        batch_rows=options["batch_rows"],
        sandbox=sandbox,
        shard=shard,
        state_dir=state_dir,
        **extra,
    )


def _print_report(report: RunReport) -> None:
    if report.outcome is Outcome.DRY_RUN:
        click.echo(
            f"dry run: {report.calls_planned or 0:,} ids would be called "
            f"(snapshot {report.snapshot_date.isoformat()}, {report.out}); no call made"
        )
        return
    snap, req = report.snapshot, report.requests
    of_shard = f", {report.config.shard.label}" if report.config.shard is not None else ""
    click.echo(
        f"snapshot {report.snapshot_date.isoformat()}{of_shard}: {snap.written:,} profiles, "
        f"{snap.failures:,} failed, {snap.pending:,} pending"
    )
    click.echo(
        f"this run: {req.calls:,} calls, {req.fetched:,} fetched, {req.failed:,} failed, "
        f"{req.retried:,} retried, {req.rate_limited:,} rate-limited, {report.duration_s:.1f} s"
    )
    rows = report.failures_rows
    click.echo(
        f"output: {report.out}  (failures: {report.failures_file}, {rows:,} row{'s' * (rows != 1)})"
    )
    shard = report.config.shard
    if shard is not None and report.complete:
        if report.assembled:
            click.echo(f"{shard.label}: done, the last of {shard.count}: snapshot committed")
        else:
            waiting = [str(k) for k in range(shard.count) if k not in report.shards_done]
            which = (
                f"shard {waiting[0]} is"
                if len(waiting) == 1
                else f"shards {', '.join(waiting)} are"
            )
            click.echo(f"{shard.label}: done; the snapshot is committed when {which} done")
