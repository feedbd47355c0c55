"""The benchmark still runs: each contender fetches 20 ids from a sandbox process and writes them.

``make test`` installs the ``bench`` dependency group (dlt, psutil, requests) first, so this
runs in CI; a bare ``pytest`` in a venv without that group skips it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("dlt")
pytest.importorskip("psutil")
pytest.importorskip("requests")

from bench import report, scenarios
from bench.harness import machine, make_ids

IDS = 20


@pytest.mark.slow
@pytest.mark.parametrize("contender", scenarios.CONTENDERS)
def test_each_contender_fetches_and_writes_every_id_once(contender: str, tmp_path: Path) -> None:
    """One fresh sandbox per run; the ledger and the contender's Parquet both hold the 20 ids."""
    ids = make_ids(IDS, tmp_path / "ids.csv")
    m = scenarios.measure_once(
        "smoke", contender, ids, IDS, ["--latency", "0"], tmp_path / contender, cap_s=60
    )
    assert m.run is not None
    assert (m.run.returncode, m.run.capped) == (0, False), m.run.stderr[-2000:]
    assert m.ledger is not None
    assert (m.ledger.calls, m.ledger.ids_succeeded) == (IDS, IDS)
    assert (m.out_rows, m.out_unique) == (IDS, IDS)
    assert m.run.cpu_s > 0 and m.run.peak_rss_mb > 10


def test_report_renders_targets_for_what_was_measured(tmp_path: Path) -> None:
    """A partial run renders: unmeasured targets say so instead of passing."""
    settings = scenarios.Settings(
        work=tmp_path, quick=True, repeats=1, cap_s=60, slow_cap_s=60, rate_ids=10,
        small_ids=IDS, big_ids=IDS, fault_ids=IDS, latency_ids=IDS, latency_naive_ids=IDS,
        flatten_ids=IDS, crash_ids=IDS, resume_ids=IDS,
    )  # fmt: skip
    text = report.render([], settings, machine(), 1.0, "python -m bench --quick")
    unmeasured = (
        "| resume start-up, 20 ids half done | < 3 s (process start to exit) | not measured |"
    )
    assert unmeasured in text
    assert "**pass**" not in text


def test_the_control_section_renders_each_figure_against_its_target(tmp_path: Path) -> None:
    """Section 5's table comes from the checks each scenario recorded (no run needed)."""
    from bench.control import Check

    measure = scenarios.Measure("control", "limit 20/s, 2–5 s", 1000, None)
    measure.extra["checks"] = [
        Check("held ÷ limit", "0.964", "≥ 0.9", True),
        Check("302 share", "2.50%", "≤ 2%", False),
    ]
    settings = scenarios.Settings(
        work=tmp_path, quick=True, repeats=1, cap_s=60, slow_cap_s=60, rate_ids=10,
        small_ids=IDS, big_ids=IDS, fault_ids=IDS, latency_ids=IDS, latency_naive_ids=IDS,
        flatten_ids=IDS, crash_ids=IDS, resume_ids=IDS,
    )  # fmt: skip
    text = report.render([measure], settings, machine(), 1.0, "python -m bench --only control")
    assert "## 5. Rate and concurrency control with the defaults (issue 11)" in text
    assert "| limit 20/s, 2–5 s | held ÷ limit | 0.964 | ≥ 0.9 | **pass** |" in text
    assert "| limit 20/s, 2–5 s | 302 share | 2.50% | ≤ 2% | **FAIL** |" in text
