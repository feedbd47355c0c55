"""pipeline.schema and ``xhs-profiles schema``: one declaration per table, printed two ways."""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.schema import FAILURE_COLUMNS, TABLES, Column, Table, markdown


def test_schema_prints_the_markdown_data_dictionary() -> None:
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0
    assert result.stdout == markdown()
    assert result.stdout.startswith("#### `profiles`\n\nOne row per user fetched in the snapshot.")


def test_schema_json_lists_every_declared_table_column_type_and_meaning() -> None:
    result = CliRunner().invoke(cli, ["schema", "--format", "json"])
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert [t["name"] for t in document["tables"]] == [t.name for t in TABLES]
    for table, printed in zip(TABLES, document["tables"], strict=True):
        assert printed["key"] == list(table.key)
        assert printed["compact_rows"] == table.compact_rows
        assert [
            (c["name"], c["type"], c["meaning"], c["dictionary"]) for c in printed["columns"]
        ] == [(c.name, str(c.dtype), c.doc, c.dictionary) for c in table.columns]
    assert [c["name"] for c in document["failures_csv"]["columns"]] == list(FAILURE_COLUMNS)
    assert document["tables"][0]["columns"][0] == {
        "name": "user_id",
        "type": "String",
        "meaning": "Xiaohongshu user id, 24 hex characters (`data.userid`)",
        "dictionary": False,
    }


def test_an_unknown_format_is_a_one_line_usage_error() -> None:
    result = CliRunner().invoke(cli, ["schema", "--format", "yaml"])
    assert result.exit_code == 2
    assert result.stderr == (
        "xhs-profiles: Invalid value for '--format': 'yaml' is not one of 'md', 'json'. "
        "(see xhs-profiles schema --help)\n"
    )


def test_a_table_declaration_refuses_a_key_of_undeclared_columns() -> None:
    with pytest.raises(ValueError, match="key"):
        Table("t", "doc", ("nope",), 10, (Column("a", pl.String(), "a"),))


def test_a_table_declaration_refuses_a_column_declared_twice() -> None:
    column = Column("a", pl.String(), "a")
    with pytest.raises(ValueError, match="twice"):
        Table("t", "doc", ("a",), 10, (column, column))
