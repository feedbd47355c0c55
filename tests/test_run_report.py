"""pipeline.run_report: real run summaries hold to the JSON Schema shipped with the package."""

from __future__ import annotations

import datetime as dt
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pipeline import runner
from pipeline.config import RunConfig, Secret
from tests.helpers import QUICK_START, make_id, write_ids

SNAPSHOT = dt.date(2026, 11, 28)
SCHEMA = json.loads(
    resources.files("pipeline").joinpath("run_summary.schema.json").read_text("utf-8")
)
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)


def summaries(out: Path) -> list[dict[str, Any]]:
    found = [json.loads(p.read_text("utf-8")) for p in sorted((out / "_runs").glob("*.json"))]
    found += [
        json.loads(p.read_text("utf-8"))["summary"]
        for p in sorted((out / "_manifests").glob("*.json"))
    ]
    return found


def config(api: Any, tmp_path: Path, **overrides: Any) -> RunConfig:
    ids = [make_id(i, "summary") for i in range(12)]
    csv_path = write_ids(tmp_path / "ids.csv", [*ids, ids[0], "not-an-id"])
    options: dict[str, Any] = {
        "input_path": csv_path,
        "out_dir": tmp_path / "out",
        "token": Secret("sandbox"),
        "base_url": api.base_url,
        "snapshot_date": SNAPSHOT,
        "concurrency": 4,
        "max_attempts": 2,
        "backoff_base": 0.001,
        "backoff_cap": 0.001,
        **QUICK_START,
    }
    return RunConfig(**{**options, **overrides})


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_summaries_of_completed_stopped_and_resumed_runs_match_the_schema(
    sandbox, tmp_path: Path
) -> None:
    doomed, flaky, refused = (make_id(i, "summary") for i in (3, 4, 5))
    api = sandbox(
        scripts={doomed: ["404"] * 9, flaky: ["500"] * 9, refused: ["code:601"]}, rate_limit=200
    )
    stopped = runner.run(config(api, tmp_path, concurrency=1))  # the account error stops it
    budget = runner.run(config(api, tmp_path, max_calls=2))
    done = runner.run(config(api, tmp_path, max_failure_rate=0.1))
    assert [r.exit_code for r in (stopped, budget, done)] == [3, 4, 6]
    found = summaries(tmp_path / "out")
    # Three runs and the manifest's copy of the last (runs started in one second sort by id).
    assert sorted(s["outcome"] for s in found) == ["budget", "completed", "completed", "stopped"]
    for summary in found:
        errors = sorted(VALIDATOR.iter_errors(summary), key=str)
        assert errors == [], [e.message for e in errors]


def test_a_renamed_or_unknown_key_fails_the_schema(sandbox, tmp_path: Path) -> None:
    runner.run(config(sandbox(), tmp_path))
    [summary, _] = summaries(tmp_path / "out")
    assert VALIDATOR.is_valid(summary)
    renamed = {**summary, "requests": {**summary["requests"], "calls_made": 1}}
    del renamed["requests"]["calls"]
    assert not VALIDATOR.is_valid(renamed)
    assert not VALIDATOR.is_valid({**summary, "surprise": 1})


@pytest.mark.parametrize("key", ["exit_code", "snapshot", "started_at"])
def test_every_documented_key_is_required(sandbox, tmp_path: Path, key: str) -> None:
    runner.run(config(sandbox(), tmp_path))
    summary = summaries(tmp_path / "out")[0]
    assert not VALIDATOR.is_valid({k: v for k, v in summary.items() if k != key})
