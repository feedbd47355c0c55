"""``python -m bench``: run every scenario, print the results and write ``bench/RESULTS.md``.

``make bench`` runs it after installing the ``bench`` dependency group (dlt, psutil, requests).
``--quick`` runs small sizes (a few minutes) and writes to a temporary file unless ``--output``
is given, so it never replaces the full results.  ``--only`` picks sections.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import changes_scale, control, report, scenarios
from bench.harness import (
    REPO,
    load_average,
    machine,
    pipeline_fingerprint,
    use_bytecode_cache,
)
from bench.scenarios import FAULT_MIX, LATENCY, NEVER_SUCCEED, Measure, Settings, log

SECTIONS = (
    "rate", "zero", "big", "faults", "latency", "logging", "control", "flatten", "changes",
    "crash", "resume",
)  # fmt: skip


def _settings(args: argparse.Namespace, work: Path) -> Settings:
    if args.quick:
        return Settings(
            work=work,
            quick=True,
            repeats=args.repeats or 1,
            cap_s=args.cap,
            slow_cap_s=min(args.slow_cap, 60.0),
            rate_ids=300,
            small_ids=2_000,
            big_ids=args.big or 10_000,
            fault_ids=300,
            latency_ids=300,
            latency_naive_ids=40,
            flatten_ids=5_000,
            crash_ids=400,
            resume_ids=100_000,
        )
    return Settings(
        work=work,
        quick=False,
        repeats=args.repeats or 3,
        cap_s=args.cap,
        slow_cap_s=args.slow_cap,
        rate_ids=1_200,
        small_ids=20_000,
        big_ids=args.big or 200_000,
        fault_ids=args.fault_ids,
        latency_ids=2_000,
        latency_naive_ids=200,
        flatten_ids=20_000,
        crash_ids=2_000,
        resume_ids=1_000_000,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for iterating")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    parser.add_argument("--repeats", type=int, default=0, help="runs per repeated scenario")
    parser.add_argument("--cap", type=float, default=900.0, help="wall cap of any run, s")
    parser.add_argument(
        "--slow-cap", type=float, default=120.0, help="wall cap of naive/dlt in the big run, s"
    )
    parser.add_argument("--big", type=int, default=0, help="ids of the big run (200,000)")
    parser.add_argument("--fault-ids", type=int, default=5_000, help="ids of the fault-mix run")
    parser.add_argument("--output", type=Path, default=None, help="results file to write")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temp)")
    args = parser.parse_args(argv)
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    if unknown := only - set(SECTIONS):
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    output = args.output or (
        Path(tempfile.gettempdir()) / "xhs-bench-quick.md"
        if args.quick
        else REPO / "bench" / "RESULTS.md"
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="xhs-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    s = _settings(args, work)
    args_text = shlex.join(argv if argv is not None else sys.argv[1:])
    invocation = f"python -m bench {args_text}".strip()
    started = time.perf_counter()
    described = machine()
    measures: list[Measure] = []
    zero = ["--latency", "0"]
    faults = ["--latency", "0", "--faults", FAULT_MIX, "--never-succeed", NEVER_SUCCEED]
    use_bytecode_cache(work / "pycache")
    try:
        log("warm-up: each contender on 50 ids (bytecode cache, sanity)")
        scenarios.warm_up(s)
        if "rate" in only:
            log(f"1. rate efficiency, {s.rate_ids:,} ids")
            measures += scenarios.rate_efficiency(s)
        if "zero" in only:
            log(f"2a. zero latency, {s.small_ids:,} ids x {s.repeats}")
            measures += scenarios.end_to_end(
                s, "zero-small", s.small_ids, zero, repeats=s.repeats, caps={}
            )
        if "big" in only:
            log(f"2a. zero latency, {s.big_ids:,} ids (naive/dlt capped at {s.slow_cap_s:.0f} s)")
            caps = {"naive": s.slow_cap_s, "dlt": s.slow_cap_s}
            measures += scenarios.end_to_end(s, "zero-big", s.big_ids, zero, repeats=1, caps=caps)
        if "faults" in only:
            log(f"2b. fault mix, {s.fault_ids:,} ids")
            measures += scenarios.end_to_end(
                s, "faults", s.fault_ids, faults, repeats=1, caps={}, timeline=True
            )
        if "latency" in only:
            log(f"2c. latency {LATENCY}, {s.latency_ids:,} ids (naive {s.latency_naive_ids:,})")
            measures += scenarios.end_to_end(
                s,
                "latency",
                s.latency_ids,
                ["--latency", LATENCY],
                repeats=1,
                caps={},
                sizes={"naive": s.latency_naive_ids},
            )
            wide = str(scenarios.WIDE_CONCURRENCY)
            for name, option in (("ours", "--concurrency"), ("dlt", "--workers")):
                measures.append(
                    scenarios.extra_run(
                        s, "latency", s.latency_ids, ["--latency", LATENCY], name, option, wide
                    )
                )
        if "logging" in only:
            log(f"2d. progress + JSON logs vs plain, {s.small_ids:,} ids x {s.repeats}")
            measures += scenarios.logging_cost(s, zero)
        if "control" in only:
            log("5. rate and concurrency control with the defaults (issue 11)")
            measures += control.control(s, measures)
        if "flatten" in only:
            log(f"3. flatten and write, {s.flatten_ids:,} profiles")
            measures += scenarios.flatten_and_write(s)
        if "changes" in only:
            creators, days = (1_000, 10) if s.quick else (10_000, 30)
            log(f"3b. changes over {days} daily snapshots of {creators:,} creators")
            measures += changes_scale.measure(work, creators, days)
        if "crash" in only:
            log(f"4. crash cost, {s.crash_ids:,} ids")
            measures += scenarios.crash_cost(s)
        if "resume" in only:
            log(f"4. resume start-up, {s.resume_ids:,} ids")
            measures += scenarios.resume_start(s)
    except BaseException:
        # A failed or interrupted run must not replace complete results with partial ones.
        output = Path(tempfile.gettempdir()) / "xhs-bench-partial.md"
        raise
    finally:
        total = time.perf_counter() - started
        described["load average at the end"] = load_average()
        end_hash = pipeline_fingerprint()
        if end_hash != described["pipeline sources hash at the start"]:
            end_hash += " (**changed during the run**: figures mix two versions)"
        described["pipeline sources hash at the end"] = end_hash
        text = report.render(measures, s, described, total, invocation)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        print(text)
        log(f"results written to {output} ({total / 60:.1f} min)")
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
