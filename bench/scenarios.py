"""The benchmark's scenarios (issue 3, ``make bench`` items 1 to 4), each returning Measures.

Rules:
- Every contender run gets a fresh sandbox process with the scenario's options, the same id
  file and the same machine; ``ours`` is the installed CLI, ``naive`` and ``dlt`` are the
  scripts in this package, all run as subprocesses and measured by ``harness.run_child``.
- Repeated runs are interleaved across contenders (naive, dlt, ours, naive, ...) so slow drift
  of the machine hits every contender alike; the median run (by wall time) is reported.
- A run that hits its wall-clock cap is SIGKILLed; its figures are then taken over the ids the
  sandbox ledger saw succeed before the cap, and marked as extrapolated.
- Every run's output is read back and its profile rows counted, so a contender that drops ids
  (the naive loop under faults) shows it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from bench.harness import (
    TOKEN,
    XHS,
    ChildRun,
    Ledger,
    OtherLoad,
    SandboxProcess,
    make_ids,
    run_child,
)

CONCURRENCY = 16
# Little's law: at 0.1 s a call, the 50× latency target needs about 50 calls in flight.
WIDE_CONCURRENCY = 100
FAULT_MIX = "301:0.04,500:0.03,502:0.02,reset:0.01"
NEVER_SUCCEED = "0.02"
LATENCY = "0.05:0.15"
SNAPSHOT = "2026-01-01"
CONTENDERS = ("naive", "dlt", "ours")


@dataclass
class Settings:
    work: Path
    quick: bool
    repeats: int
    cap_s: float  # wall-clock cap of any contender run
    slow_cap_s: float  # cap of naive/dlt in the big run
    rate_ids: int
    small_ids: int
    big_ids: int
    fault_ids: int
    latency_ids: int
    latency_naive_ids: int
    flatten_ids: int
    crash_ids: int
    resume_ids: int


@dataclass
class Measure:
    """One reported run (the median one when the scenario was repeated)."""

    section: str
    contender: str
    ids: int
    run: ChildRun | None
    ledger: Ledger | None = None
    sandbox_argv: list[str] = field(default_factory=list)
    sandbox_cpu_s: float = 0.0
    out_rows: int | None = None
    out_unique: int | None = None
    note: str = ""
    repeat_walls: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def capped(self) -> bool:
        return self.run is not None and self.run.capped

    @property
    def ids_done(self) -> int:
        """Ids the ledger saw succeed (all asked ids when the run finished normally)."""
        if self.capped and self.ledger is not None:
            return self.ledger.ids_succeeded
        return self.ids

    @property
    def wall_s(self) -> float:
        return self.run.wall_s if self.run else float("nan")

    @property
    def ids_per_s(self) -> float:
        return self.ids_done / self.wall_s if self.run else float("nan")

    @property
    def projected_wall_s(self) -> float:
        """Wall time for all ids; extrapolated from the rate at the cap when capped."""
        return self.ids / self.ids_per_s if self.capped else self.wall_s

    @property
    def cpu_per_1k(self) -> float:
        return 1000 * self.run.cpu_s / max(self.ids_done, 1) if self.run else float("nan")

    @property
    def sandbox_cpu_per_1k(self) -> float:
        return 1000 * self.sandbox_cpu_s / max(self.ids_done, 1)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ contenders


def contender_argv(name: str, ids: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    """``ours`` runs at ``--concurrency 16`` unless told otherwise (the figures of issue 3 were
    taken so); ``ours-defaults`` with no setting at all (section ``control``)."""
    if name in ("ours", "ours-defaults"):
        fixed = name == "ours" and "--concurrency" not in extra
        concurrency = ["--concurrency", str(CONCURRENCY)] if fixed else []
        progress = [] if "--progress" in extra else ["--no-progress"]
        return [XHS, "run", str(ids), "--out", str(out), "--base-url", base_url,
                "--token", TOKEN, *concurrency, *progress, *extra]  # fmt: skip
    common = [str(ids), str(out), "--base-url", base_url, "--token", TOKEN]
    if name == "naive":
        return [sys.executable, "-m", "bench.naive", *common]
    if name == "dlt":
        workers = [] if "--workers" in extra else ["--workers", str(CONCURRENCY)]
        return [sys.executable, "-m", "bench.dlt_job", *common, *workers, *extra]
    raise ValueError(f"unknown contender {name!r}")


def profile_files(name: str, out: Path) -> list[Path]:
    if name.startswith("ours"):
        return sorted(out.glob("profiles/dt=*/*.parquet"))
    if name == "naive":
        return sorted(out.glob("profiles.parquet"))
    return sorted(out.glob("data/xhs/profiles/*.parquet"))


def count_profiles(name: str, out: Path) -> tuple[int | None, int | None]:
    files = profile_files(name, out)
    if not files:
        return None, None
    id_column = "user_id" if name.startswith("ours") else "userid"
    frame = pl.scan_parquet(files).select(
        pl.len().alias("rows"), pl.col(id_column).n_unique().alias("unique")
    )
    row = frame.collect().row(0)
    return int(row[0]), int(row[1])


def measure_once(
    section: str,
    name: str,
    ids_path: Path,
    n: int,
    sandbox_options: Sequence[str],
    run_dir: Path,
    *,
    cap_s: float,
    extra_args: Sequence[str] = (),
    on_tick: Callable[[SandboxProcess, float], bool] | None = None,
    tick_s: float = 0.1,
) -> Measure:
    out = run_dir / "out"
    shutil.rmtree(out, ignore_errors=True)
    with SandboxProcess(sandbox_options) as sandbox:
        argv = contender_argv(name, ids_path, out, sandbox.base_url, *extra_args)
        at_cap: list[Ledger] = []

        def tick(elapsed: float) -> bool:
            if elapsed > cap_s:
                at_cap.append(sandbox.stats())  # ids done when the cap is hit
                return True
            return on_tick(sandbox, elapsed) if on_tick is not None else False

        others = OtherLoad()
        run = run_child(argv, log_dir=run_dir, cap_s=cap_s, on_tick=tick, tick_s=tick_s)
        sandbox_cpu = sandbox.cpu_since_mark()
        measure = Measure(section, name, n, run, None, sandbox.argv, sandbox_cpu)
        measure.extra.update(others.finish(run.cpu_s + sandbox_cpu))
        measure.ledger = at_cap[0] if at_cap else sandbox.stats()
    if not run.capped and not run.killed:
        measure.out_rows, measure.out_unique = count_profiles(name, out)
        if run.returncode not in (0, None):
            measure.note = f"exit {run.returncode}: {run.stderr.strip().splitlines()[-1:]}"
    for summary in sorted(out.glob("_runs/*.json"))[-1:]:  # what the rate controller did
        measure.extra["rate_control"] = orjson.loads(summary.read_bytes()).get("rate_control", {})
    shutil.rmtree(out, ignore_errors=True)  # keep the disk flat across a long bench
    walls = f"{run.wall_s:.1f} s" + (" (capped)" if run.capped else "")
    log(
        f"  [{section}] {name}: {walls}, {measure.ids_per_s:,.0f} ids/s, "
        f"{measure.cpu_per_1k:.2f} CPU s/1k ids, {run.peak_rss_mb:.0f} MB, "
        f"rows {measure.out_rows}, exit {run.returncode}"
    )
    return measure


def median_of(measures: list[Measure]) -> Measure:
    ordered = sorted(measures, key=lambda m: m.wall_s)
    chosen = ordered[(len(ordered) - 1) // 2]  # the lower middle when the count is even
    chosen.repeat_walls = [m.wall_s for m in measures]
    return chosen


# ------------------------------------------------------------------ 1. rate efficiency


def rate_efficiency(s: Settings) -> list[Measure]:
    n = s.rate_ids
    ids = make_ids(n, s.work / f"ids-{n}.csv")
    options = ["--rate-limit", "50", "--latency", LATENCY]
    measures = []
    # The last run is not a target: it shows what a wide --concurrency costs in 302s.
    for told, concurrency in (
        ("50", CONCURRENCY),
        ("1000", CONCURRENCY),
        ("1000", WIDE_CONCURRENCY),
    ):
        samples: list[tuple[float, int, int]] = []
        poll = _ledger_poller(samples)

        m = measure_once(
            "rate",
            "ours",
            ids,
            n,
            options,
            s.work / f"rate-{told}-{concurrency}",
            cap_s=s.cap_s,
            extra_args=["--rate", told, "--concurrency", str(concurrency)],
            on_tick=poll,
        )
        m.extra.update(_held_rate(samples), told=float(told), limit=50.0, concurrency=concurrency)
        m.extra["success_calls"] = m.ledger.by_code.get(0, 0) if m.ledger else 0
        m.note = f"--rate {told} --concurrency {concurrency}"
        measures.append(m)
    return measures


def _ledger_poller(
    samples: list[tuple[float, int, int]],
) -> Callable[[SandboxProcess, float], bool]:
    def poll(sandbox: SandboxProcess, elapsed: float) -> bool:
        ledger = sandbox.stats()
        samples.append((elapsed, ledger.calls, ledger.by_code.get(0, 0)))
        return False

    return poll


def _held_rate(samples: list[tuple[float, int, int]]) -> dict[str, float]:
    """Successes per second from the first call seen to the last success seen (100 ms polls)."""
    first = next((t for t, calls, _ in samples if calls > 0), None)
    final = samples[-1][2] if samples else 0
    last = next((t for t, _, ok in samples if ok == final), None)
    start_ok = next((ok for t, _, ok in samples if t == first), 0)
    if first is None or last is None or last <= first:
        return {"held_rate": float("nan"), "window_s": 0.0}
    return {"held_rate": (final - start_ok) / (last - first), "window_s": last - first}


# ------------------------------------------------------------------ 2. end to end


def end_to_end(
    s: Settings,
    section: str,
    n: int,
    sandbox_options: Sequence[str],
    *,
    repeats: int,
    caps: dict[str, float],
    sizes: dict[str, int] | None = None,
    timeline: bool = False,
) -> list[Measure]:
    """Each contender on the same scenario; ``sizes`` lets a slow contender run fewer ids.

    ``timeline`` polls the ledger every 0.5 s to find when half, 95% and all of the ids that
    end up fetched were fetched (how long the tail of retries is).
    """
    runs: dict[str, list[Measure]] = {name: [] for name in CONTENDERS}
    for i in range(repeats):
        for name in CONTENDERS:
            count = (sizes or {}).get(name, n)
            ids = make_ids(count, s.work / f"ids-{count}.csv")
            samples: list[tuple[float, int, int]] = []
            m = measure_once(
                section,
                name,
                ids,
                count,
                sandbox_options,
                s.work / f"{section}-{name}-{i}",
                cap_s=caps.get(name, s.cap_s),
                on_tick=_ledger_poller(samples) if timeline else None,
                tick_s=0.5 if timeline else 0.1,
            )
            if timeline and m.ledger is not None:
                m.extra["timeline"] = _milestones(samples, m.ledger.by_code.get(0, 0))
            runs[name].append(m)
    return [median_of(runs[name]) for name in CONTENDERS]


def extra_run(
    s: Settings, section: str, n: int, sandbox_options: Sequence[str], name: str, *args: str
) -> Measure:
    """One more run of a contender with other options (reported as its own, labelled row)."""
    ids = make_ids(n, s.work / f"ids-{n}.csv")
    m = measure_once(
        section,
        name,
        ids,
        n,
        sandbox_options,
        s.work / f"{section}-{name}-extra",
        cap_s=s.cap_s,
        extra_args=args,
    )
    m.contender = f"{name} " + " ".join(args)
    return m


def warm_up(s: Settings) -> None:
    """One tiny run of each contender: fills the bytecode cache, fails early if one is broken."""
    ids = make_ids(50, s.work / "ids-50.csv")
    for name in CONTENDERS:
        m = measure_once(
            "warm-up", name, ids, 50, ["--latency", "0"], s.work / f"warm-{name}", cap_s=120
        )
        if m.run is None or m.run.returncode != 0 or m.out_unique != 50:
            tail = m.run.stderr.strip().splitlines()[-3:] if m.run else []
            raise RuntimeError(f"the {name} contender is broken: {tail}")


def _milestones(samples: list[tuple[float, int, int]], final_ok: int) -> dict[str, float]:
    """Seconds until 50%, 95% and 100% of the run's successful calls were made."""
    marks: dict[str, float] = {}
    for label, share in (("t50", 0.5), ("t95", 0.95), ("t100", 1.0)):
        hit = next((t for t, _, ok in samples if final_ok and ok >= share * final_ok), None)
        marks[label] = float("nan") if hit is None else hit
    return marks


# ------------------------------------------------------------------ 2d. progress and logs

LOGGED = ("--progress", "log", "--log-format", "json")


def logging_cost(s: Settings, sandbox_options: Sequence[str]) -> list[Measure]:
    """Ours plain (``--no-progress``) and with ``--progress log --log-format json``, interleaved
    on the same zero-latency sandbox; the median of each.  The logged runs' stderr is checked:
    every line must parse as JSON, and the last one be ``run.finished``."""
    n = s.small_ids
    ids = make_ids(n, s.work / f"ids-{n}.csv")
    variants = {"ours": (), "ours " + " ".join(LOGGED): LOGGED}
    runs: dict[str, list[Measure]] = {name: [] for name in variants}
    for i in range(s.repeats):
        for name, extra in variants.items():
            m = measure_once(
                "logging",
                "ours",
                ids,
                n,
                sandbox_options,
                s.work / f"logging-{len(extra)}-{i}",
                cap_s=s.cap_s,
                extra_args=extra,
            )
            m.contender = name
            if extra and m.run is not None:
                m.extra.update(_json_lines(m.run.stderr))
            runs[name].append(m)
    measures = [median_of(runs[name]) for name in variants]
    measures[1].extra["display_us_per_update"] = display_cost_us(200_000)
    return measures


def display_cost_us(updates: int) -> float:
    """CPU µs per call that ``--progress log --log-format json`` adds, measured in-process: the
    fetch loop's ``progress.update`` after each call into a LogProgress that emits JSON
    ``progress`` events through the CLI's formatter (to /dev/null), minus the same loop into
    the ``NoProgress`` a plain run has.  Deterministic where the end-to-end ratio is noisy."""
    import logging

    from pipeline.config import RunConfig, Secret
    from pipeline.events import LOGGER_NAME, EventLog, JsonFormatter
    from pipeline.progress import LogProgress, NoProgress, Progress
    from pipeline.ratelimit import RateController
    from pipeline.records import Tally
    from pipeline.run_report import InputSummary, Outcome, RunReport

    config = RunConfig(Path("ids.csv"), Path("out"), Secret("x"), snapshot_date=dt.date(2026, 1, 1))
    source = InputSummary("ids.csv", "utf-8", "user_id", "0" * 64)
    report = RunReport("bench", "0", dt.datetime.now(dt.UTC), config, source, Outcome.COMPLETED)
    report = dataclasses.replace(report, pending_at_start=updates)
    events = EventLog("bench")
    logger = logging.getLogger(LOGGER_NAME)
    saved = logger.level, logger.propagate
    with Path(os.devnull).open("w") as sink:
        handler = logging.StreamHandler(sink)
        handler.setFormatter(JsonFormatter(events))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        try:
            cpu = []
            for progress in (NoProgress(), LogProgress(emit=events.emit)):
                shown: Progress = progress
                shown.start(report, RateController(None))
                tally = Tally()
                started = time.process_time()
                for i in range(updates):
                    tally.done = tally.calls = tally.fetched = i + 1
                    shown.update(tally)
                shown.stop()
                cpu.append(time.process_time() - started)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]
    return 1e6 * (cpu[1] - cpu[0]) / updates


def _json_lines(stderr: str) -> dict[str, Any]:
    lines = stderr.splitlines()
    events: list[str] = []
    bad = 0
    for line in lines:
        try:
            events.append(orjson.loads(line)["event"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            bad += 1
    return {
        "stderr_lines": len(lines),
        "not_json": bad,
        "progress_events": events.count("progress"),
        "last_event": events[-1] if events else None,
    }


# ------------------------------------------------------------------ 3. flatten and write


def default_batch_rows() -> int:
    """The pipeline's ``--batch-rows`` default (profiles per Parquet part)."""
    from pipeline.config import RunConfig

    default = RunConfig.__dataclass_fields__["batch_rows"].default
    return default if isinstance(default, int) else 5000


def flatten_and_write(s: Settings) -> list[Measure]:
    from pipeline.flatten import flatten
    from pipeline.profile_data import read_typed
    from pipeline.records import FetchedProfile
    from pipeline.sandbox import build_profile
    from pipeline.sink import write_part

    n, batch_rows = s.flatten_ids, default_batch_rows()
    ids = [line for line in make_ids(n, s.work / f"ids-{n}.csv").read_text().split()[1:]]
    now = dt.datetime.now(dt.UTC)
    stored = [
        FetchedProfile(uid, orjson.dumps(build_profile(uid)), f"req-{i:012x}", now)
        for i, uid in enumerate(ids)
    ]
    batches = [stored[i : i + batch_rows] for i in range(0, n, batch_rows)]
    day = dt.date.fromisoformat(SNAPSHOT)

    def ours(out: Path) -> None:
        for batch in batches:
            for table, frame in flatten(batch).by_table():
                if frame.height:
                    write_part(out, table, day, frame)

    def naive(out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        for k, batch in enumerate(batches):
            rows = [orjson.loads(p.data_json) for p in batch]
            frame = pl.DataFrame(rows, infer_schema_length=None)
            frame.write_parquet(out / f"part-{k}.parquet")

    # Where ours spends its time: each step alone, on the same batches.
    def read_only(out: Path) -> None:
        for batch in batches:
            for p in batch:
                read_typed(p.data_json)

    def flatten_only(out: Path) -> None:
        for batch in batches:
            flatten(batch)

    flattened = [list(flatten(batch).by_table()) for batch in batches]

    def write_only(out: Path) -> None:
        for tables in flattened:
            for table, frame in tables:
                if frame.height:
                    write_part(out, table, day, frame)

    jobs = {
        "naive": (
            naive,
            f"pl.DataFrame(dicts) + write_parquet, 1 nested table, batches of {batch_rows:,}",
        ),
        "ours": (
            ours,
            f"flatten + write_part, 3 tables, batches of {batch_rows:,} (the CLI's default)",
        ),
        "ours: read only": (read_only, "profile_data.read_typed of each body (inside flatten)"),
        "ours: flatten only": (flatten_only, "flatten, no write"),
        "ours: write only": (
            write_only,
            "write_part of the flattened frames (zstd, fsync, rename)",
        ),
    }
    measures = []
    for name, (job, what) in jobs.items():
        walls, cpus = [], []
        for i in range(s.repeats):
            out = s.work / f"flatten-{name}-{i}"
            shutil.rmtree(out, ignore_errors=True)
            cpu0, t0 = time.process_time(), time.perf_counter()
            job(out)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - cpu0)
            shutil.rmtree(out, ignore_errors=True)
        wall = statistics.median(walls)
        run = ChildRun(["(in-process)"], 0, wall, statistics.median(cpus), float("nan"))
        m = Measure("flatten", name, n, run, repeat_walls=walls)
        m.note = what
        log(f"  [flatten] {name}: {wall:.2f} s, {n / wall:,.0f} profiles/s")
        measures.append(m)
    return measures


# ------------------------------------------------------------------ 4. crash cost


def crash_cost(s: Settings) -> list[Measure]:
    n = s.crash_ids
    ids = make_ids(n, s.work / f"ids-{n}.csv")
    options = ["--latency", LATENCY]
    out = s.work / "crash" / "out"
    shutil.rmtree(out, ignore_errors=True)
    kill_at = int(0.4 * n)
    with SandboxProcess(options) as sandbox:
        argv = contender_argv("ours", ids, out, sandbox.base_url, "--snapshot-date", SNAPSHOT)
        seen: list[int] = []

        def poll(elapsed: float) -> bool:
            calls = sandbox.stats().calls
            seen.append(calls)
            return calls >= kill_at

        first = run_child(argv, log_dir=s.work / "crash" / "1", cap_s=s.cap_s, on_tick=poll)
        at_kill = sandbox.stats()
        resumed = run_child(argv, log_dir=s.work / "crash" / "2", cap_s=s.cap_s)
        final = sandbox.stats()
        sandbox_argv = sandbox.argv
    rows, unique = count_profiles("ours", out)
    twice = {uid: k for uid, k in final.successes_by_id.items() if k > 1}
    m = Measure("crash", "ours", n, resumed, final, sandbox_argv)
    m.out_rows, m.out_unique = rows, unique
    m.extra.update(
        killed=first.killed,
        calls_at_kill=at_kill.calls,
        ids_paid_twice=len(twice),
        extra_paid_calls=sum(k - 1 for k in twice.values()),
        calls_total=final.calls,
        first_run=first,
    )
    log(
        f"  [crash] killed after {at_kill.calls} calls; resume {resumed.wall_s:.1f} s; "
        f"{len(twice)} ids paid twice; profiles {rows} rows / {unique} unique"
    )
    shutil.rmtree(out, ignore_errors=True)
    return [m]


def resume_start(s: Settings) -> list[Measure]:
    """Start-up on a state of ``resume_ids`` ids, half written, built through ``State``."""
    from pipeline.records import FetchedProfile
    from pipeline.state import State

    n = s.resume_ids
    ids = make_ids(n, s.work / f"ids-{n}.csv")
    out = s.work / "resume" / "out"
    shutil.rmtree(out, ignore_errors=True)
    argv = [
        XHS,
        "run",
        str(ids),
        "--out",
        str(out),
        "--dry-run",
        "--snapshot-date",
        SNAPSHOT,
        "--token",
        TOKEN,
        "--base-url",
        "http://127.0.0.1:9",
        "--no-progress",
    ]
    ingest = run_child(argv, log_dir=s.work / "resume" / "ingest", cap_s=s.cap_s)
    log(f"  [resume] first dry run (ingests {n:,} ids): {ingest.wall_s:.1f} s")

    day = dt.date.fromisoformat(SNAPSHOT)
    half, chunk = n // 2, 5000
    t0 = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    with State.open(out, day) as state:
        done = 0
        while done < half:
            page = [p.user_id for p in islice(state.iter_pending(chunk), min(chunk, half - done))]
            if not page:
                break
            for uid in page:
                state.record_success(FetchedProfile(uid, b"{}", None, now), 1)
            state.mark_written(page, [])
            done += len(page)
    build_s = time.perf_counter() - t0
    log(
        f"  [resume] {done:,} ids marked written (State.record_success + mark_written): "
        f"{build_s:.1f} s"
    )

    runs = [
        run_child(argv, log_dir=s.work / "resume" / f"dry-{i}", cap_s=s.cap_s)
        for i in range(s.repeats)
    ]
    in_process = []
    for _ in range(s.repeats):
        t0 = time.perf_counter()
        with State.open(out, day) as state:
            pending = state.pending_count()
            first_chunk = list(islice(state.iter_pending(1000), 1000))
        in_process.append(time.perf_counter() - t0)
    median_run = sorted(runs, key=lambda r: r.wall_s)[len(runs) // 2]
    m = Measure("resume", "ours", n, median_run)
    m.repeat_walls = [r.wall_s for r in runs]
    m.extra.update(
        ingest_run=ingest,
        build_s=build_s,
        written=done,
        pending=pending,
        first_chunk=len(first_chunk),
        in_process_s=statistics.median(in_process),
        in_process_all=in_process,
        dry_run_says=median_run.stdout.strip().splitlines()[-1:] or [""],
        state_mb=sum(p.stat().st_size for p in (out / "_state").glob("*")) / 2**20,
    )
    log(
        f"  [resume] dry run on {n:,} ids half written: {median_run.wall_s:.2f} s; "
        f"in-process open+count+first chunk {m.extra['in_process_s'] * 1000:.0f} ms"
    )
    shutil.rmtree(out, ignore_errors=True)
    return [m]
