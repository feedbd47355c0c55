"""The subcommands about a run's output: ``status`` (what DIR holds; ``--check``), ``changes``
(recompute ``profile_changes``), ``report`` (the HTML page) and ``schema`` (the tables' data
dictionary); each reads its options and makes one call."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import click

from pipeline import changes, schema, status
from pipeline.cli.group import Seams, debug_option
from pipeline.cli.locations import OutLocation, out_and_state, where
from pipeline.config import parse_snapshot_date
from pipeline.errors import CheckFailed, UsageError
from pipeline.report import DEFAULT_NAME as REPORT_NAME
from pipeline.report import write_report
from pipeline.schema import DEFAULT_TIERS

_Command = TypeVar("_Command", bound=Callable[..., Any])


def _state_dir_option(help_text: str) -> Callable[[_Command], _Command]:
    return click.option(
        "--state-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help=f"{help_text} Default: DIR/_state; for a URL, the cache folder the run used.",
    )


STATUS_EXIT_HELP: Final = """\b
With --check, exit codes:
  0  the expected snapshot is complete, fresh and within the failure limits
  6  its failures are over --max-failure-rate / --max-failures (or the run's own)
  7  no snapshot, or it completed longer ago than --max-age
  8  the expected snapshot is not complete (a run is going, or must be resumed)
  2  DIR is not an output folder, or a bad option
"""


@click.command("status", epilog=STATUS_EXIT_HELP)
@click.argument("out_dir", metavar="DIR|URL", type=OutLocation(path_type=Path))
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
@debug_option("Tracebacks on unexpected errors.")
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
    found = status.read_status(*out_and_state(out_dir, options["state_dir"]))
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


@click.command("changes")
@click.argument("out_dir", metavar="DIR|URL", type=OutLocation(path_type=Path))
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
@debug_option("Tracebacks on unexpected errors.")
def changes_command(out_dir: Path | str, **options: Any) -> None:
    """Recompute DIR's profile_changes for one snapshot and list it in its manifest."""
    to_date, from_date, bounds = options["to_date"], options["from_date"], options["tier_bounds"]
    out, state_dir = out_and_state(out_dir, options["state_dir"])
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
        f"{result.flagged:,} flagged -> {where(out_dir, result.part.path)}"
    )


def _days(span: dt.timedelta) -> str:
    return f"{span.days} day{'s' * (span.days != 1)}"


@click.command("report")
@click.argument("out_dir", metavar="DIR", type=OutLocation(path_type=Path))
@click.option(
    "--out",
    "out_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help=f"The HTML file to write. Default DIR/{REPORT_NAME}.",
)
@debug_option("Tracebacks on unexpected errors.")
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


@click.command("schema")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["md", "json"]),
    default="md",
    show_default=True,
    help="Markdown (the README's data dictionary) or JSON.",
)
@debug_option("Tracebacks on unexpected errors.")
def schema_command(output_format: str, **_options: Any) -> None:
    """Print every table's columns, types and meanings (the data dictionary)."""
    if output_format == "json":
        click.echo(json.dumps(schema.as_json(), ensure_ascii=False, indent=2))
    else:
        click.echo(schema.markdown(), nl=False)
