"""The README's tables are the ones the code declares: columns, options and exit codes."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import EXIT_CODES
from pipeline.schema import markdown

README = Path(__file__).parent.parent.joinpath("README.md").read_text(encoding="utf-8")


def readme_table(heading: str) -> list[list[str]]:
    """The cells of the first table after ``heading`` (header and rule rows left out)."""
    section = README.split(f"\n{heading}\n", 1)[1]
    rows = []
    for line in section.lstrip("\n").splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows[2:]


def test_readme_columns_section_matches_the_declared_schemas() -> None:
    section = README.split("<!-- schema:start", 1)[1].split("-->", 1)[1]
    section = section.split("<!-- schema:end -->", 1)[0]
    assert section.strip() == markdown().strip()


def test_readme_option_table_lists_exactly_the_options_of_run_help() -> None:
    help_text = CliRunner().invoke(cli, ["run", "--help"]).stdout
    in_help = set(re.findall(r"^\s+(--[a-z][a-z-]*)", help_text, re.MULTILINE)) - {"--help"}
    in_readme = {re.findall(r"`(--[a-z-]+)", row[0])[0] for row in readme_table("## The command")}
    assert {"--out", "--token", "--debug"} <= in_help  # the help was parsed
    assert in_readme == in_help


def test_readme_exit_code_table_lists_exactly_the_declared_exit_codes() -> None:
    codes = [int(row[0]) for row in readme_table("### Exit codes")]
    assert codes == list(EXIT_CODES)


def test_help_epilog_lists_every_declared_exit_code() -> None:
    help_text = CliRunner().invoke(cli, ["--help"]).stdout
    for code, meaning in EXIT_CODES.items():
        assert f"  {code:<2} {meaning[:30]}" in help_text
