"""``sandbox``: serve the built-in fake API (``pipeline.sandbox``) on HOST:PORT, its options
(rate limits, faults, drift) turned into a ``SandboxConfig``."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import click

from pipeline.cli.group import debug_option
from pipeline.errors import SandboxOptionError, UsageError
from pipeline.ids import open_id_file
from pipeline.sandbox import DriftPlan, SandboxConfig, serve
from pipeline.sandbox.drift import parse_date
from pipeline.timestamps import utcnow


@click.command("sandbox")
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
@debug_option("Tracebacks on unexpected errors.")
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


def _latency(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(":")
    try:
        return float(lo), float(hi or lo)
    except ValueError as exc:
        raise SandboxOptionError(str(exc)) from exc
