"""The ``xhs-profiles`` group and what every subcommand shares: the one error boundary
(``_Group.invoke``, which alone turns an error into a line and an exit code), ``--debug``,
``Seams`` and the logging set-up."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sys
import textwrap
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn, TypeVar

import click
import httpx

from pipeline.errors import EXIT_CODES, EXIT_UNEXPECTED, Interrupted, XhsProfilesError
from pipeline.events import LOGGER_NAME, EventLog, JsonFormatter, error_line
from pipeline.redaction import install_log_redaction, mask
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
META_DEBUG: Final = "xhs_profiles.debug"
# Where ``run`` keeps --log-format (read first: the option is eager) and its EventLog, for _fail.
META_LOG_FORMAT: Final = "xhs_profiles.log_format"
META_EVENTS: Final = "xhs_profiles.events"
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
                trace=mask(traceback.format_exc()) if ctx.meta.get(META_DEBUG) else None,
            )


def debug_option(help_text: str) -> Callable[[_Command], _Command]:
    """``--debug``, recorded where the error boundary reads it."""

    def remember(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        ctx.meta[META_DEBUG] = value
        return value

    return click.option("--debug", is_flag=True, callback=remember, help=help_text)


@click.group(cls=_Group, name="xhs-profiles")
@click.version_option(package_name="xhs-profiles")
def cli() -> None:
    """Fetch Xiaohongshu creator profiles from Just One API into Hive-partitioned Parquet."""


@contextlib.contextmanager
def configure_logging(debug: bool, json_events: EventLog | None = None) -> Iterator[None]:
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
    if meta.get(META_LOG_FORMAT) == "json":
        click.echo(error_line(meta.get(META_EVENTS), text, code, traceback=trace), err=True)
    else:
        if trace is not None:
            click.echo(trace, err=True)
        click.echo(f"xhs-profiles: {text}", err=True)
    sys.exit(code)
