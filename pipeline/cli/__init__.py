"""The command line, ``xhs-profiles``: options → a frozen config → one call per subcommand;
errors → one line and an exit code.  This package is the only one that imports click, prints
for the user, or decides an exit code.

``group`` holds the group and its one error boundary, ``run`` the run command, ``outputs``
status, changes, report and schema, ``sandbox`` the fake API's server, ``locations`` DIR|URL.
Here the subcommands join the group.
"""

from __future__ import annotations

from pipeline.cli.group import Seams, cli
from pipeline.cli.outputs import changes_command, report_command, schema_command, status_command
from pipeline.cli.run import run_command
from pipeline.cli.sandbox import sandbox_command

__all__ = ["Seams", "cli", "main"]

for _command in (
    run_command,
    sandbox_command,
    changes_command,
    schema_command,
    status_command,
    report_command,
):
    cli.add_command(_command)


def main() -> None:
    cli(obj=Seams())
