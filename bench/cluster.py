"""``python -m bench.cluster``: 4 shards on a Dask LocalCluster against 1 process, same ids.

Each account has its own rate limit, so shards on N accounts should finish N times sooner: the
sandbox (a separate ``xhs-profiles sandbox`` process on 127.0.0.1, fresh for each run) has one
token per shard, each limited to ``--rate`` requests/s (``--rate-scope token``), against one
token at the same limit for the single process.  Both runs use the defaults (no ``--rate``, no
``--concurrency``): each shard's controller finds its own account's ceiling.

- 1 process: ``xhs-profiles run IDS --out OUT --base-url SANDBOX --token tok-0`` in a child
  process, timed from fork to exit (start-up included).
- N shards: ``pipeline.cluster.run_on_dask`` against a ``LocalCluster`` of N worker processes
  (one thread each), timed from the submission to the last shard's result; the cluster's
  start-up and its workers' first import of the pipeline (a cluster that is up has done both)
  are reported apart.
- ``--shared``: also N shards on one token under one server-wide limit (what more shards than
  accounts get: no faster than one process).

Not part of ``make bench`` (the single process alone takes ids ÷ rate seconds: 400 s for the
defaults); ``make bench-cluster`` runs it and writes ``bench/RESULTS-cluster.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.harness import (
    REPO,
    XHS,
    SandboxProcess,
    child_env,
    http_json,
    load_average,
    machine,
    make_ids,
    run_child,
    use_bytecode_cache,
)
from pipeline import cluster
from pipeline.config import RunConfig, Secret
from pipeline.shards import Shard

SNAPSHOT = dt.date(2026, 11, 28)
RATE_CONTROL_KEYS = ("rate", "ceiling_estimate", "phase", "cuts", "rate_limited", "in_flight_max")


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _tokens(n: int) -> list[str]:
    return [f"tok-{k}" for k in range(n)]


def _sandbox_options(tokens: Sequence[str], rate: float, latency: str, scope: str) -> list[str]:
    options = [f"--token={token}" for token in tokens]
    return [*options, "--rate-limit", f"{rate:g}", "--rate-scope", scope, "--latency", latency]


def _ledger(box: SandboxProcess) -> dict[str, Any]:
    raw = http_json(box.base_url + "/_sandbox/stats")
    by_code = {int(k): int(v) for k, v in raw["by_code"].items()}
    return {
        "calls": int(raw["calls"]),
        "ok": by_code.get(0, 0),
        "302": by_code.get(302, 0),
        "calls_by_token": raw.get("calls_by_token", {}),
        "rate_limited_by_token": raw.get("rate_limited_by_token", {}),
        "max_calls_per_second": raw.get("max_calls_per_second"),
    }


def _rate_control(summary: Mapping[str, Any] | None) -> str:
    control = (summary or {}).get("rate_control", {})
    return ", ".join(f"{k} {control.get(k)}" for k in RATE_CONTROL_KEYS)


def _import_pipeline() -> None:
    import pipeline.runner  # noqa: F401  (what a worker's first task would import)


def one_process(ids: Path, work: Path, rate: float, latency: str, cap_s: float) -> dict[str, Any]:
    """The whole file in one process, one token limited to ``rate``."""
    out = work / "out-1"
    with SandboxProcess(_sandbox_options(_tokens(1), rate, latency, "server")) as box:
        argv = [XHS, "run", str(ids), "--out", str(out), "--base-url", box.base_url]
        argv += ["--token", "tok-0", "--no-progress", "--snapshot-date", SNAPSHOT.isoformat()]
        child = run_child(argv, log_dir=work / "log-1", cap_s=cap_s)
        ledger = _ledger(box)
    summaries = sorted((out / "_runs").glob("*.json"))
    summary = json.loads(summaries[-1].read_text()) if summaries else None
    return {
        "name": "1 process, 1 token",
        "wall_s": child.wall_s,
        "exit": child.returncode,
        "capped": child.capped,
        "fetched": (summary or {}).get("requests", {}).get("fetched", 0),
        "ledger": ledger,
        "rate_control": [("run", _rate_control(summary))],
        "shards": [],
        "argv": shlex.join(argv[1:]),
    }


def shards_on_dask(
    ids: Path, work: Path, shards: int, rate: float, latency: str, *, shared: bool
) -> dict[str, Any]:
    """``shards`` shards as Dask tasks on a LocalCluster of as many single-threaded workers."""
    import distributed

    tokens = _tokens(1 if shared else shards)
    out = work / ("out-shared" if shared else "out-shards")
    scope = "server" if shared else "token"
    with SandboxProcess(_sandbox_options(tokens, rate, latency, scope)) as box:
        configs = [
            RunConfig(
                input_path=ids,
                out_dir=out,
                token=Secret(tokens[k % len(tokens)]),
                base_url=box.base_url,
                snapshot_date=SNAPSHOT,
                shard=Shard(k, shards),
            )
            for k in range(shards)
        ]
        started = time.perf_counter()
        with distributed.LocalCluster(
            n_workers=shards, threads_per_worker=1, processes=True, dashboard_address=None
        ) as local:
            cluster_start_s = time.perf_counter() - started
            # A cluster that is up has workers that have imported the pipeline: warm them the way
            # a first task would, and report it apart (the single process's wall includes its
            # own start-up, about a second).
            warm = time.perf_counter()
            with distributed.Client(local, set_as_default=False) as client:
                client.run(_import_pipeline)
            warm_up_s = time.perf_counter() - warm
            submitted = time.perf_counter()
            result = cluster.run_on_dask(
                local.scheduler_address, configs, on_shard=lambda s: log(s.line())
            )
            wall = time.perf_counter() - submitted
        ledger = _ledger(box)
    tokens_text = "1 shared token" if shared else f"{shards} token{'s' * (shards != 1)}"
    name = f"{shards} shard{'s' * (shards != 1)} on Dask, {tokens_text}"
    return {
        "name": name,
        "wall_s": wall,
        "cluster_start_s": cluster_start_s,
        "warm_up_s": warm_up_s,
        "exit": result.exit_code,
        "capped": False,
        "fetched": result.requests["fetched"],
        "ledger": ledger,
        "rate_control": [(s.shard.label, _rate_control(s.summary)) for s in result.shards],
        "shards": [
            (
                s.shard.label,
                s.count("requests", "fetched"),
                float((s.summary or {}).get("duration_s") or 0.0),
                s.outcome,
            )
            for s in result.shards
        ],
        "argv": "pipeline.cluster.run_on_dask(LocalCluster(...).scheduler_address, configs)",
    }


def render(
    runs: Sequence[Mapping[str, Any]],
    ids: int,
    rate: float,
    latency: str,
    header: Mapping[str, str],
) -> str:
    base = runs[0]
    lines = [
        "# Shards on Dask against one process",
        "",
        f"Generated by `python -m bench.cluster {shlex.join(sys.argv[1:])}`. {ids:,} ids; the "
        f"sandbox (a separate process on 127.0.0.1) answers in {latency} s and limits each "
        f"token to {rate:g} requests/s (code 302 beyond); both sides run with the defaults (no "
        "`--rate`, no `--concurrency`), so every shard's controller finds its own ceiling.",
        "",
        "## Machine",
        "",
        *(f"- {k}: {v}" for k, v in header.items()),
        "",
        "## Wall time",
        "",
        "| run | wall s | ids fetched | ids/s | × 1 process | calls | 302s | most calls in 1 s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        ledger = run["ledger"]
        lines.append(
            f"| {run['name']} | {run['wall_s']:.1f} | {run['fetched']:,} | "
            f"{run['fetched'] / run['wall_s']:.1f} | {base['wall_s'] / run['wall_s']:.2f} | "
            f"{ledger['calls']:,} | {ledger['302']:,} | {ledger['max_calls_per_second']} |"
        )
    lines += ["", "Ratio (1 process wall ÷ each run's wall):", ""]
    lines += [f"- {run['name']}: **{base['wall_s'] / run['wall_s']:.2f}×**" for run in runs[1:]]
    for run in runs[1:]:
        if run["shards"]:
            lines += [
                "",
                f"### {run['name']}: shards",
                "",
                "Not in the wall time: the LocalCluster's start-up, "
                f"{run['cluster_start_s']:.1f} s, and its workers' first import of the "
                f"pipeline, {run['warm_up_s']:.1f} s.",
                "",
                "| shard | ids fetched | its run s | ids/s | outcome |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {label} | {n:,} | {secs:.1f} | {n / secs if secs else 0:.1f} | {outcome} |"
                for label, n, secs, outcome in run["shards"]
            ]
    lines += ["", "## What each run's rate controller ended with (`rate_control`)", ""]
    for run in runs:
        lines.append(f"- {run['name']}:")
        lines += [f"  - {label}: {text}" for label, text in run["rate_control"]]
        ledger = run["ledger"]
        if len(ledger["calls_by_token"]) > 1:
            lines.append(
                f"  - the sandbox's ledger per token: calls {ledger['calls_by_token']}, "
                f"302s {ledger['rate_limited_by_token']}"
            )
    lines += ["", "Commands:", ""]
    lines += [f"- {run['name']}: `{run['argv']}`" for run in runs]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--ids", type=int, default=20_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rate", type=float, default=50.0, help="each token's limit, req/s")
    parser.add_argument("--latency", default="0.05:0.15", help="the sandbox's latency, s")
    parser.add_argument("--shared", action="store_true", help="also N shards on one token")
    parser.add_argument("--cap", type=float, default=1800.0, help="wall cap of the 1 process, s")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "RESULTS-cluster.md")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="xhs-bench-cluster-"))
    use_bytecode_cache(work / "pycache")
    # The LocalCluster's workers inherit this process's environment: loopback only, no token.
    for name in [n for n in os.environ if n.startswith("JUSTONEAPI_")]:
        del os.environ[name]
    os.environ.update({k: v for k, v in child_env().items() if "PROXY" in k.upper()})
    header = machine()
    ids = make_ids(args.ids, work / f"ids-{args.ids}.csv", salt="cluster")
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    log(f"{args.shards} shards on Dask, {args.shards} tokens at {args.rate:g}/s each")
    sharded = shards_on_dask(ids, work, args.shards, args.rate, args.latency, shared=False)
    log(f"1 process, 1 token at {args.rate:g}/s (about {args.ids / args.rate:.0f} s)")
    runs.append(one_process(ids, work, args.rate, args.latency, args.cap))
    runs.append(sharded)
    if args.shared:
        log(f"{args.shards} shards on Dask sharing 1 token at {args.rate:g}/s")
        runs.append(shards_on_dask(ids, work, args.shards, args.rate, args.latency, shared=True))
    header = {
        **header,
        "load average at the end": load_average(),
        "total": f"{(time.perf_counter() - started) / 60:.1f} min",
    }
    text = render(runs, args.ids, args.rate, args.latency, header)
    args.output.write_text(text, encoding="utf-8")
    print(text)
    log(f"written to {args.output}")
    return 0 if all(run["exit"] == 0 and not run["capped"] for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
