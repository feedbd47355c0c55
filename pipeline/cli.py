"""The command line: options → a frozen config → one call per subcommand; errors → exit codes.

Subcommands: ``run`` (``runner.run``), ``status`` (``status.read_status`` / ``status.check``),
``changes`` (``changes.rebuild``), ``report`` (``report.write_report``), ``schema`` and
``sandbox``.  Every one of them gets the same error boundary (``_Group.invoke``) and the same
``--debug`` rule.  This is the only module that imports click, prints for the user, or decides
an exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import sys
import textwrap
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar

import click
import httpx

from pipeline import changes, cluster, runner, schema, sink, status, storage
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
from pipeline.errors import (
    EXIT_CODES,
    EXIT_UNEXPECTED,
    CheckFailed,
    FailureThresholdExceeded,
    Interrupted,
    SandboxOptionError,
    StorageError,
    UsageError,
    XhsProfilesError,
)
from pipeline.events import LOGGER_NAME, EventLog, JsonFormatter, error_line
from pipeline.ids import open_id_file
from pipeline.progress import PROGRESS_MODES, Display, choose_display, make_progress
from pipeline.redaction import install_log_redaction, mask
from pipeline.report import DEFAULT_NAME as REPORT_NAME
from pipeline.report import write_report
from pipeline.run_report import Outcome, RunReport
from pipeline.sandbox import DriftPlan, Sandbox, SandboxConfig, drift_config_for, serve
from pipeline.sandbox.drift import parse_date
from pipeline.schema import DEFAULT_TIERS
from pipeline.shards import INDEX_ENV, MAX_SHARDS, Shard, resolve_shard, shard_token
from pipeline.timestamps import utcnow

# click's ``\b`` keeps the lines as they are instead of rewrapping them into one paragraph.
EXIT_CODES_HELP: Final = "\n".join(
    [
        "\b",
        "Exit codes:",
        *(
            line
            for code, meaning in EXIT_CODES.items()
            for line in textwrap.wrap(
                meaning, width=79, initial_indent=f"  {code:<2} ", subsequent_indent=" " * 5
            )
        ),
        "",
    ]
)
# Where the --debug flag of the running subcommand is kept (click shares ``meta`` with the group).
_DEBUG: Final = "xhs_profiles.debug"
# Where ``run`` keeps --log-format (read first: the option is eager) and its EventLog, for _fail.
_LOG_FORMAT: Final = "xhs_profiles.log_format"
_EVENTS: Final = "xhs_profiles.events"
_Command = TypeVar("_Command", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Seams:
    """What tests (and embedders) may inject: the HTTP transport used by every call, and
    ``RunConfig`` fields set over what the options give (those no option sets: the back-off)."""

    transport: httpx.AsyncBaseTransport | None = None
    config_overrides: Mapping[str, Any] = field(default_factory=dict)
    clock: Callable[[], dt.datetime] = utcnow  # "now" for status --check's --max-age


class _Group(click.Group):
    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_paragraph()
        formatter.write_text(EXIT_CODES_HELP)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """click's own usage errors as one line, like every other error (exit 2)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.format_message(), err=True)
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx else ""
            _fail(exc.exit_code, f"{exc.format_message()}{hint}")
        except click.ClickException as exc:
            _fail(exc.exit_code, exc.format_message())
        except click.Abort:
            _fail(Interrupted.exit_code, "aborted")
        sys.exit(result if isinstance(result, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        """The one error boundary of every subcommand: an error becomes one line and its exit
        code; an unexpected one also shows its traceback (token masked) under --debug."""
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own: ``main`` above words them
        except XhsProfilesError as exc:
            _fail(exc.exit_code, f"{exc.prefix}{exc}")
        except KeyboardInterrupt:
            _fail(Interrupted.exit_code, str(Interrupted()))
        except Exception as exc:
            _fail(
                EXIT_UNEXPECTED,
                f"unexpected error: {type(exc).__name__}: {exc} "
                "(rerun with --debug for the traceback)",
                trace=mask(traceback.format_exc()) if ctx.meta.get(_DEBUG) else None,
            )


def _debug_option(help_text: str) -> Callable[[_Command], _Command]:
    """``--debug``, recorded where the error boundary reads it."""

    def remember(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        ctx.meta[_DEBUG] = value
        return value

    return click.option("--debug", is_flag=True, callback=remember, help=help_text)


def _state_dir_option(help_text: str) -> Callable[[_Command], _Command]:
    return click.option(
        "--state-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help=f"{help_text} Default: DIR/_state; for a URL, the cache folder the run used.",
    )


@click.group(cls=_Group, name="xhs-profiles")
@click.version_option(package_name="xhs-profiles")
def cli() -> None:
    """Fetch Xiaohongshu creator profiles from Just One API into Hive-partitioned Parquet."""


class _OutLocation(click.Path):
    """``--out``: a folder, as ``click.Path`` always took it (``file:///path`` too), or an
    object store's URL (``s3://bucket/prefix``), kept as canonical text."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and storage.is_remote(value):
            return storage.canonical_url(value)
        if isinstance(value, str) and value[:7].lower() == "file://":
            value = str(storage.file_url_path(value))
        return super().convert(value, param, ctx)


@cli.command("run", epilog=EXIT_CODES_HELP)
@click.argument("input_csv", metavar="INPUT.csv", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    metavar="DIR|URL",
    type=_OutLocation(path_type=Path),
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
    callback=lambda ctx, _param, value: _remember(ctx, _LOG_FORMAT, value),
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
@_debug_option("Debug logging (tokens masked) and tracebacks.")
@click.pass_obj
def run_command(obj: Seams | None, /, **options: Any) -> None:
    """Fetch the profiles of the ids in INPUT.csv into --out (resumes a killed run)."""
    debug = bool(options.pop("debug"))
    json_logs = options.pop("log_format") == "json"
    events = EventLog(runner.new_run_id())
    click.get_current_context().meta[_EVENTS] = events
    seams = obj or Seams()
    display = _display(options.pop("progress_mode"), options.pop("no_progress"), json_logs)
    dask_address = options.pop("dask_address")
    if dask_address is not None:
        with _configure_logging(debug, events if json_logs else None):
            _run_on_dask(dask_address, options, seams, events, json_logs)
        return
    with _configure_logging(debug, events if json_logs else None):
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


@contextlib.contextmanager
def _configure_logging(debug: bool, json_events: EventLog | None = None) -> Iterator[None]:
    """Text: the usual ``basicConfig`` (run events show only with --debug).  JSON: one handler
    on the root logger renders every record, warnings included, as a JSON line on stderr.
    What is set here is put back at the end (tests run many commands in one process)."""
    install_log_redaction()
    level = logging.DEBUG if debug else logging.WARNING
    event_logger = logging.getLogger(LOGGER_NAME)
    saved_event_level = event_logger.level
    if json_events is None:
        logging.basicConfig(
            level=level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        event_logger.setLevel(logging.DEBUG if debug else logging.CRITICAL + 1)
        try:
            yield
        finally:
            event_logger.setLevel(saved_event_level)
        return
    root = logging.getLogger()
    saved_root_level = root.level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(json_events))
    root.addHandler(handler)
    root.setLevel(level)
    event_logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(saved_root_level)
        event_logger.setLevel(saved_event_level)


def _fail(code: int, message: str, *, trace: str | None = None) -> NoReturn:
    """The command's last words on stderr: ``xhs-profiles: <message>`` (after the traceback,
    if any), or with --log-format json one ``error`` event holding both."""
    text = mask(message)
    ctx = click.get_current_context(silent=True)
    if ctx is None:  # click's own usage errors are worded after their context has closed
        ctx = getattr(sys.exc_info()[1], "ctx", None)
    meta: dict[str, Any] = ctx.meta if isinstance(ctx, click.Context) else {}
    if meta.get(_LOG_FORMAT) == "json":
        click.echo(error_line(meta.get(_EVENTS), text, code, traceback=trace), err=True)
    else:
        if trace is not None:
            click.echo(trace, err=True)
        click.echo(f"xhs-profiles: {text}", err=True)
    sys.exit(code)


@cli.command("sandbox")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True)
@click.option(
    "--token",
    "tokens",
    multiple=True,
    default=("sandbox",),
    show_default=True,
    help="A valid token; repeat it for several accounts (see --rate-scope).",
)
@click.option(
    "--latency",
    default="0",
    show_default=True,
    metavar="MIN[:MAX]",
    help="Seconds per response, uniform between MIN and MAX.",
)
@click.option("--rate-limit", type=float, default=None, help="Requests/s before code 302.")
@click.option(
    "--rate-scope",
    type=click.Choice(["server", "token"]),
    default="server",
    show_default=True,
    help="server: one limit for all callers; token: each --token its own limit (and schedule).",
)
@click.option(
    "--rate-schedule",
    default=None,
    metavar="RATE@SECOND,...",
    help="A limit that changes: e.g. 50@0,10@20,80@40 (requests/s from that second on).",
)
@click.option(
    "--capacity",
    type=int,
    default=None,
    metavar="N",
    help="Past N calls in flight, latency grows with them (x in flight / N).",
)
@click.option("--retry-after", type=float, default=None, help="Retry-After seconds on 302.")
@click.option("--daily-quota", type=int, default=None, help="Successful calls before code 303.")
@click.option(
    "--faults",
    default="",
    metavar="MODE:P,...",
    help="Chance of each fault mode on an id's first call, e.g. 301:0.05,reset:0.02.",
)
@click.option("--never-succeed", type=float, default=0.0, help="Share of ids that always fail.")
@click.option("--script", default="", metavar="ID=MODE,MODE;...", help="Scripted answers per id.")
@click.option(
    "--gone",
    multiple=True,
    type=click.Choice(["v3", "v4"]),
    help="Answer HTTP 404 for this API version.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--drift",
    is_flag=True,
    help="Profiles change with the date: every id grows (or not) at its own rate, and the "
    "plan's scripted events happen (--drift-ids or --drift-plan, which imply --drift).",
)
@click.option(
    "--drift-ids",
    default=None,
    metavar="FILE.csv",
    help="The demo plan: its events go to ids of this CSV, on days 3-6 after --date.",
)
@click.option("--drift-plan", default=None, metavar="FILE.json", help="A drift plan to serve.")
@click.option(
    "--date",
    "as_of",
    default=None,
    metavar="YYYY-MM-DD",
    help="With --drift: the date answered for (default: today UTC, following the clock); "
    "POST /_sandbox/date moves it.",
)
@_debug_option("Tracebacks on unexpected errors.")
def sandbox_command(host: str, port: int, **options: Any) -> None:
    """Serve a realistic fake of get-user/v4 (and v3) on HOST:PORT until Ctrl-C."""
    drift = _sandbox_drift(options)
    first, *more = options["tokens"]
    config = SandboxConfig.from_options(
        token=first,
        tokens=tuple(more),
        latency=_latency(options["latency"]),
        rate_limit=options["rate_limit"],
        rate_scope=options["rate_scope"],
        rate_schedule=options["rate_schedule"],
        capacity=options["capacity"],
        retry_after=options["retry_after"],
        daily_quota=options["daily_quota"],
        fault_mix=options["faults"],
        never_succeed=options["never_succeed"],
        scripts=options["script"],
        gone_versions=frozenset(options["gone"]),
        seed=options["seed"],
        **drift,
    )
    if config.drift is not None:
        plan, on = config.drift, config.as_of
        when = on.isoformat() if on else "today UTC, following the clock"
        click.echo(
            f"drift: plan from {plan.start} (day 0) with {len(plan.events)} events; answering "
            f"as of {when}; POST /_sandbox/date moves it",
            err=True,
        )
        for line in plan.describe():
            click.echo(f"  {line}", err=True)
    valid = config.valid_tokens
    tokens = f"token {valid[0]!r}" if len(valid) == 1 else f"tokens {', '.join(map(repr, valid))}"
    if config.rate_limit is not None or config.rate_schedule:
        tokens += "; a rate limit per token" if config.rate_scope == "token" else ""
    click.echo(f"sandbox API on http://{host}:{port} ({tokens}); Ctrl-C stops it", err=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how this command is meant to end
        asyncio.run(serve(config, host, port))


@cli.command("changes")
@click.argument("out_dir", metavar="DIR|URL", type=_OutLocation(path_type=Path))
@click.option(
    "--to", "to_date", metavar="YYYY-MM-DD", help="Default: the latest complete snapshot."
)
@click.option(
    "--from",
    "from_date",
    metavar="YYYY-MM-DD",
    help="The baseline. Default: the complete snapshot before --to.",
)
@click.option(
    "--tier-bounds",
    metavar="N,N,N,N,N",
    default=None,
    help="Followers where nano, micro, mid, macro, mega start (1000,10000,50000,500000,1000000).",
)
@_state_dir_option("The runs' --state-dir, if they had one.")
@_debug_option("Tracebacks on unexpected errors.")
def changes_command(out_dir: Path | str, **options: Any) -> None:
    """Recompute DIR's profile_changes for one snapshot and list it in its manifest."""
    to_date, from_date, bounds = options["to_date"], options["from_date"], options["tier_bounds"]
    out, state_dir = _out_and_state(out_dir, options["state_dir"])
    result = changes.rebuild(
        out,
        parse_snapshot_date(to_date, option="--to") if to_date else None,
        parse_snapshot_date(from_date, option="--from") if from_date else None,
        tiers=changes.parse_tier_bounds(bounds) if bounds else DEFAULT_TIERS,
        state_dir=state_dir,
    )
    baseline = result.baseline_date
    against = (
        f"against {baseline} ({_days(result.snapshot_date - baseline)})"
        if baseline
        else "(no earlier snapshot: no rows)"
    )
    click.echo(
        f"profile_changes {result.snapshot_date} {against}: {result.part.rows:,} rows, "
        f"{result.flagged:,} flagged -> {_where(out_dir, result.part.path)}"
    )


def _out_and_state(
    out: Path | str, state_dir: Path | None
) -> tuple[Path | storage.Store, Path | None]:
    """A folder as it is; a URL as its store, with its checkpoints in the local cache folder
    that ``run`` used for it (unless ``--state-dir`` says otherwise)."""
    if isinstance(out, Path):
        return out, state_dir
    return storage.open_store(out), state_dir or storage.default_state_dir(out)


def _where(out: Path | str, key: str) -> str:
    return str(out / key) if isinstance(out, Path) else f"{out}/{key}"


def _days(span: dt.timedelta) -> str:
    return f"{span.days} day{'s' * (span.days != 1)}"


def _sandbox_drift(options: dict[str, Any]) -> dict[str, Any]:
    """The ``drift`` and ``as_of`` settings the sandbox options ask for (none without drift).

    The demo plan takes its ids from --drift-ids, not from the ids the server is asked about:
    those arrive in whatever order the client sends, and the plan must not depend on it.
    """
    ids_file, plan_file, date_text = options["drift_ids"], options["drift_plan"], options["as_of"]
    if not (options["drift"] or ids_file or plan_file):
        if date_text is not None:
            raise SandboxOptionError("--date needs --drift: without it every date answers the same")
        return {}
    if ids_file and plan_file:
        raise SandboxOptionError("give --drift-ids or --drift-plan, not both")
    as_of = parse_date(date_text, "--date") if date_text is not None else None
    if plan_file:
        return {"drift": DriftPlan.load(Path(plan_file)), "as_of": as_of}
    if not ids_file:
        raise SandboxOptionError(
            "--drift needs --drift-ids FILE.csv (the demo plan's events go to its ids) "
            "or --drift-plan FILE.json"
        )
    try:
        ids = [row.user_id for row in open_id_file(Path(ids_file)) if row.user_id is not None]
    except UsageError as exc:
        raise SandboxOptionError(f"--drift-ids: {exc}") from None
    if not ids:
        raise SandboxOptionError(f"--drift-ids: {ids_file} has no valid ids")
    start = as_of or utcnow().date()
    return {"drift": DriftPlan.demo(ids, start, options["seed"]), "as_of": as_of}


@cli.command("schema")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["md", "json"]),
    default="md",
    show_default=True,
    help="Markdown (the README's data dictionary) or JSON.",
)
@_debug_option("Tracebacks on unexpected errors.")
def schema_command(output_format: str, **_options: Any) -> None:
    """Print every table's columns, types and meanings (the data dictionary)."""
    if output_format == "json":
        click.echo(json.dumps(schema.as_json(), ensure_ascii=False, indent=2))
    else:
        click.echo(schema.markdown(), nl=False)


STATUS_EXIT_HELP: Final = """\b
With --check, exit codes:
  0  the expected snapshot is complete, fresh and within the failure limits
  6  its failures are over --max-failure-rate / --max-failures (or the run's own)
  7  no snapshot, or it completed longer ago than --max-age
  8  the expected snapshot is not complete (a run is going, or must be resumed)
  2  DIR is not an output folder, or a bad option
"""


@cli.command("status", epilog=STATUS_EXIT_HELP)
@click.argument("out_dir", metavar="DIR|URL", type=_OutLocation(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead.")
@click.option(
    "--check",
    is_flag=True,
    help="Judge the expected snapshot: one line, and exit 0, 6, 7 or 8 (for cron or a probe).",
)
@click.option(
    "--max-age",
    default=None,
    metavar="DURATION",
    help="With --check: it must have completed within this long (90m, 26h, 2d, 3600s). "
    "Default 26h.",
)
@click.option(
    "--date",
    "snapshot_date",
    default=None,
    metavar="YYYY-MM-DD",
    help="Only this snapshot; with --check, the one expected. Default: the newest.",
)
@click.option(
    "--max-failure-rate",
    type=click.FloatRange(min=0, max=1),
    default=None,
    metavar="FRACTION",
    help="With --check: exit 6 over this share of failed ids (default: the run's verdict).",
)
@click.option(
    "--max-failures",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="With --check: exit 6 over N failed ids (default: the run's verdict).",
)
@_state_dir_option("Where the runs kept their checkpoints, if not in DIR.")
@_debug_option("Tracebacks on unexpected errors.")
@click.pass_obj
def status_command(obj: Seams | None, /, out_dir: Path | str, **options: Any) -> None:
    """What the output folder DIR holds, per snapshot date; safe while a run is going on."""
    seams = obj or Seams()
    for name in ("max_age", "max_failure_rate", "max_failures"):
        if options[name] is not None and not options["check"]:
            raise UsageError(f"--{name.replace('_', '-')} applies to --check only: add --check")
    text = options["snapshot_date"]
    date = None if text is None else parse_snapshot_date(text, option="--date")
    max_age = status.DEFAULT_MAX_AGE
    if options["max_age"] is not None:
        max_age = status.parse_duration(options["max_age"])
    found = status.read_status(*_out_and_state(out_dir, options["state_dir"]))
    verdict: str | CheckFailed | None = None
    if options["check"]:
        try:
            verdict = status.check(
                found,
                now=seams.clock(),
                max_age=max_age,
                date=date,
                max_failure_rate=options["max_failure_rate"],
                max_failures=options["max_failures"],
            )
        except CheckFailed as exc:
            verdict = exc
    if options["as_json"]:
        document = found.to_json(date)
        if verdict is not None:
            code = verdict.exit_code if isinstance(verdict, CheckFailed) else 0
            document["check"] = {"exit_code": code, "message": str(verdict)}
        click.echo(json.dumps(document, ensure_ascii=False, indent=2))
    elif verdict is None:
        click.echo(found.to_text(date))
    elif isinstance(verdict, str):
        click.echo(verdict)
    if isinstance(verdict, CheckFailed):
        raise verdict  # one line on stderr and its exit code, from the error boundary


@cli.command("report")
@click.argument("out_dir", metavar="DIR", type=_OutLocation(path_type=Path))
@click.option(
    "--out",
    "out_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help=f"The HTML file to write. Default DIR/{REPORT_NAME}.",
)
@_debug_option("Tracebacks on unexpected errors.")
def report_command(out_dir: Path | str, out_file: Path | None, **_options: Any) -> None:
    """Write one self-contained HTML page about DIR: freshness, runs, outcomes, creators."""
    if isinstance(out_dir, str):
        raise UsageError(
            f"report reads a local folder, not {out_dir}: copy the snapshots it shows there "
            f"first (aws s3 sync {out_dir} DIR), then run xhs-profiles report DIR"
        )
    written = write_report(out_dir, out_file)
    click.echo(
        f"report: {written.path} ({written.size:,} bytes, snapshot "
        f"{written.snapshot_date.isoformat()})"
    )


def _latency(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(":")
    try:
        return float(lo), float(hi or lo)
    except ValueError as exc:
        raise SandboxOptionError(str(exc)) from exc


def main() -> None:
    cli(obj=Seams())
