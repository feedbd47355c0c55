"""Section ``control`` (issue 11): the rate controller with the defaults, scenario by scenario.

Rules:
- Every run is ``xhs-profiles run`` with no ``--rate`` and no ``--concurrency`` (contender
  ``ours-defaults``) unless the scenario is about those caps, against a fresh sandbox process.
- Figures come from the sandbox's ledger, polled every 0.1 s with its own clock (``age_s``, the
  clock of ``--rate-schedule``): accepted calls (code 0) are counted when the sandbox decides,
  so a rate is what the server accepted, not what came back.  The 302 share is the ledger's.
- The held rate is accepted calls per second from the first call the ledger saw to the last
  acceptance (as section 1's); ids/s is ids over the run's wall time, start-up included.
- Each scenario's figures are checked against the issue's targets here, and the report prints
  them as one table (``rows``).
"""

from __future__ import annotations

import re
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.harness import TOKEN, XHS, SandboxProcess, make_ids, run_child
from bench.scenarios import (
    LATENCY,
    Measure,
    Settings,
    log,
    measure_once,
    median_of,
)

SCHEDULE = "50@0,10@20,80@40"
SCHEDULE_PHASES = ((0.0, 50.0, 20.0), (20.0, 10.0, 40.0), (40.0, 80.0, 60.0))
CAPACITY_SLOTS, CAPACITY_LATENCY = 40, 0.2
_IN_FLIGHT = re.compile(r"in flight (\d[\d,]*)/(\d[\d,]*)")


@dataclass
class Check:
    """One figure of one scenario against its target."""

    figure: str
    measured: str
    goal: str
    passed: bool | None


@dataclass
class Samples:
    """The ledger every 0.1 s: (server age s, calls, accepted, in flight)."""

    points: list[tuple[float, int, int, int]] = field(default_factory=list)

    def poll(self, sandbox: SandboxProcess, _elapsed: float) -> bool:
        ledger = sandbox.stats()
        self.points.append((ledger.age_s, ledger.calls, ledger.by_code.get(0, 0), ledger.in_flight))
        return False

    def held(self) -> float:
        """Accepted/s from the first call seen to the last acceptance seen."""
        pts = self.points
        first = next((p for p in pts if p[1] > 0), None)
        if first is None or not pts:
            return float("nan")
        final = pts[-1][2]
        last = next(p for p in pts if p[2] == final)
        span = last[0] - first[0]
        return (final - first[2]) / span if span > 0 else float("nan")

    def accepted_between(self, start: float, end: float) -> float:
        """Accepted/s between two server ages (nan when the run did not span them)."""
        a = next((p for p in self.points if p[0] >= start), None)
        b = next((p for p in self.points if p[0] >= end), None)
        if a is None or b is None or b[0] <= a[0]:
            return float("nan")
        return (b[2] - a[2]) / (b[0] - a[0])

    def reached(self, change: float, level: float, window: float = 2.0) -> float:
        """Seconds from ``change`` until the accepted rate over ``window`` s first reaches
        ``level`` (nan: never, before the run ended)."""
        for p in self.points:
            if p[0] < change:
                continue
            rate = self.accepted_between(p[0], p[0] + window)
            if rate != rate:  # nan: the run ended
                break
            if rate >= level:
                return p[0] - change
        return float("nan")


def _defaults_run(
    s: Settings,
    key: str,
    n: int,
    sandbox_options: Sequence[str],
    *,
    extra: Sequence[str] = (),
    samples: Samples | None = None,
    name: str = "ours-defaults",
) -> Measure:
    ids = make_ids(n, s.work / f"ids-{n}.csv")
    m = measure_once(
        "control",
        name,
        ids,
        n,
        sandbox_options,
        s.work / f"control-{key}",
        cap_s=s.cap_s,
        extra_args=extra,
        on_tick=samples.poll if samples is not None else None,
        tick_s=0.1,
    )
    m.contender = key
    return m


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{value:.2%}"


def _share(m: Measure) -> float:
    return m.ledger.share(302) if m.ledger is not None else float("nan")


def _ratio_check(figure: str, value: float, goal: float, text: str, *, at_least: bool) -> Check:
    if value != value:
        return Check(figure, "n/a", text, None)
    passed = value >= goal if at_least else value <= goal
    return Check(figure, f"{value:.3f}", text, passed)


def _limit_scenario(
    s: Settings, key: str, n: int, limit: float, latency: str, held_goal: float, share_goal: float,
    extra: Sequence[str] = (),
) -> Measure:  # fmt: skip
    samples = Samples()
    options = ["--rate-limit", f"{limit:g}", "--latency", latency]
    m = _defaults_run(s, key, n, options, extra=extra, samples=samples)
    held = samples.held() / limit
    share = _share(m)
    m.extra["checks"] = [
        _ratio_check("held ÷ limit", held, held_goal, f"≥ {held_goal}", at_least=True),
        Check("302 share", _pct(share), f"≤ {share_goal:.0%}", share <= share_goal),
    ]
    m.extra["held"] = held
    return m


def control(s: Settings, earlier: Sequence[Measure] = ()) -> list[Measure]:
    """Every scenario of issue 11 with the defaults; ``earlier`` may hold section 2a's runs."""
    q = s.quick
    measures: list[Measure] = []
    log("  limit 50/s, latency 50–150 ms")
    measures.append(
        _limit_scenario(s, "limit 50/s, 50–150 ms", 600 if q else 3000, 50, LATENCY, 0.95, 0.02)
    )
    log("  limit 20/s, latency 2–5 s")
    measures.append(
        _limit_scenario(s, "limit 20/s, 2–5 s", 300 if q else 1000, 20, "2:5", 0.90, 0.02)
    )
    log("  no limit, latency 1 s")
    measures.append(_no_limit(s, 1500 if q else 5000))
    log(f"  no limit, capacity {CAPACITY_SLOTS} in flight at {CAPACITY_LATENCY} s")
    measures.append(_capacity(s, 2000 if q else 8000))
    log(f"  limit schedule {SCHEDULE}")
    measures.append(_schedule(s, 3000))
    log("  --rate 1000 --concurrency 100 against 50/s")
    measures.append(
        _limit_scenario(
            s, "--rate 1000 --concurrency 100 vs 50/s", 600 if q else 1200, 50, LATENCY, 0.9,
            0.05, extra=("--rate", "1000", "--concurrency", "100"),
        )
    )  # fmt: skip
    log("  SIGKILL at 20/s, 2–5 s, then resume")
    measures.append(_crash(s, 300 if q else 600))
    log("  --rate 20 --concurrency 8 as caps")
    measures.append(_caps(s, 200 if q else 400))
    log("  zero latency vs dlt")
    measures += _zero(s, 4000 if q else s.small_ids, earlier)
    return measures


def _no_limit(s: Settings, n: int) -> Measure:
    m = _defaults_run(s, "no limit, 1 s", n, ["--latency", "1"])
    ids_per_s = m.ids_per_s
    m.extra["checks"] = [
        Check("ids/s (wall)", f"{ids_per_s:,.1f}", "≥ 150", ids_per_s >= 150),
    ]
    return m


def _capacity(s: Settings, n: int) -> Measure:
    samples = Samples()
    options = ["--latency", f"{CAPACITY_LATENCY:g}", "--capacity", str(CAPACITY_SLOTS)]
    key = f"no limit, capacity {CAPACITY_SLOTS} at {CAPACITY_LATENCY:g} s"
    m = _defaults_run(s, key, n, options, samples=samples)
    full = CAPACITY_SLOTS / CAPACITY_LATENCY
    held = samples.held() / full
    median = m.ledger.latency_median_s if m.ledger is not None else None
    stretch = float("nan") if median is None else median / CAPACITY_LATENCY
    m.extra["checks"] = [
        _ratio_check("held ÷ capacity", held, 0.9, f"≥ 0.9 of {full:.0f}/s", at_least=True),
        _ratio_check("median latency ÷ unloaded", stretch, 1.5, "≤ 1.5", at_least=False),
    ]
    return m


def _schedule(s: Settings, n: int) -> Measure:
    samples = Samples()
    options = ["--rate-schedule", SCHEDULE, "--latency", LATENCY]
    m = _defaults_run(s, f"limit {SCHEDULE}", n, options, samples=samples)
    checks = []
    for change, limit, end in SCHEDULE_PHASES:
        rate = samples.accepted_between(change + 10, end)
        reach = samples.reached(change, 0.85 * limit)
        label = f"{limit:g}/s from {change:g} s: accepted ÷ limit, {change + 10:g}–{end:g} s"
        checks.append(_ratio_check(label, rate / limit, 0.85, "≥ 0.85", at_least=True))
        checks.append(
            Check(
                f"{limit:g}/s from {change:g} s: seconds to 0.85 of it",
                "n/a" if reach != reach else f"{reach:.1f}",
                "≤ 10",
                None if reach != reach else reach <= 10,
            )
        )
    share = _share(m)
    checks.append(Check("302 share", _pct(share), "≤ 5%", share <= 0.05))
    m.extra["checks"] = checks
    return m


def _crash(s: Settings, n: int) -> Measure:
    """Killed right after a progress line past 40% of the ids (so the in-flight limit it states
    is current), then resumed; paid twice = ids the ledger saw succeed more than once."""
    ids = make_ids(n, s.work / f"ids-{n}.csv")
    out = s.work / "control-crash" / "out"
    shutil.rmtree(out, ignore_errors=True)
    options = ["--rate-limit", "20", "--latency", "2:5"]
    base = [XHS, "run", str(ids), "--out", str(out), "--token", TOKEN, "--snapshot-date",
            "2026-01-01"]  # fmt: skip
    stated: dict[str, int] = {}
    with SandboxProcess(options) as sandbox:
        argv = [*base, "--base-url", sandbox.base_url, "--progress", "log"]
        err = s.work / "control-crash" / "1" / "stderr.txt"

        def kill_after_a_line(_elapsed: float) -> bool:
            text = err.read_text(errors="replace") if err.exists() else ""
            lines = [line for line in text.splitlines() if " progress " in line]
            if not lines:
                return False
            last = lines[-1]
            pct = float(last.split(" progress ", 1)[1].split("%", 1)[0])
            found = _IN_FLIGHT.search(last)
            if pct < 40 or found is None:
                return False
            stated["in_flight"] = int(found.group(1).replace(",", ""))
            stated["limit"] = int(found.group(2).replace(",", ""))
            stated["server_in_flight"] = sandbox.stats().in_flight
            return True

        first = run_child(
            argv, log_dir=s.work / "control-crash" / "1", cap_s=s.cap_s, on_tick=kill_after_a_line
        )
        at_kill = sandbox.stats()
        resumed = run_child(
            [*base, "--base-url", sandbox.base_url, "--no-progress"],
            log_dir=s.work / "control-crash" / "2",
            cap_s=s.cap_s,
        )
        final = sandbox.stats()
        sandbox_argv = sandbox.argv
    shutil.rmtree(out, ignore_errors=True)
    twice = {uid: k for uid, k in final.successes_by_id.items() if k > 1}
    m = Measure("control", "SIGKILL at 20/s, 2–5 s, resume", n, resumed, final, sandbox_argv)
    m.extra.update(
        first_run=first,
        calls_at_kill=at_kill.calls,
        paid_twice=sum(k - 1 for k in twice.values()),
        stated=stated,
    )
    limit = stated.get("limit")
    m.extra["checks"] = [
        Check(
            "calls paid twice ≤ the in-flight limit its last progress line stated",
            f"{m.extra['paid_twice']} (limit {limit}, in flight {stated.get('in_flight')}; "
            f"the sandbox held {stated.get('server_in_flight')})",
            "≤ the limit stated",
            None if limit is None or not first.killed else m.extra["paid_twice"] <= limit,
        ),
        Check(
            "every id fetched after the resume",
            f"{len(final.successes_by_id):,} of {n:,}",
            f"{n:,}",
            len(final.successes_by_id) == n and resumed.returncode == 0,
        ),
    ]
    log(
        f"  [control] killed after {at_kill.calls} calls stating {stated}; "
        f"{m.extra['paid_twice']} calls paid twice"
    )
    return m


def _caps(s: Settings, n: int) -> Measure:
    options = ["--latency", "0.2:0.6"]
    m = _defaults_run(
        s,
        "--rate 20 --concurrency 8 (caps)",
        n,
        options,
        extra=("--rate", "20", "--concurrency", "8"),
    )
    ledger = m.ledger
    per_second = ledger.max_calls_per_second if ledger else -1
    in_flight = ledger.max_in_flight if ledger else -1
    m.extra["checks"] = [
        Check(
            "most calls the sandbox saw in any second", str(per_second), "≤ 20", per_second <= 20
        ),
        Check("most calls the sandbox held at once", str(in_flight), "≤ 8", in_flight <= 8),
    ]
    return m


def _zero(s: Settings, n: int, earlier: Sequence[Measure]) -> list[Measure]:
    """Ours with the defaults against dlt, and against ours at --concurrency 16 (the default
    until this issue, "today") for CPU per 1,000 ids, the three interleaved in each repeat: a
    baseline measured minutes earlier, under another load, made a ratio of the machine's mood
    (2a's runs under a load of 0.8 against these under 2.0 gave 1.14x the CPU)."""
    del earlier  # kept in the signature: every section takes what ran before it
    ids = make_ids(n, s.work / f"ids-{n}.csv")
    runs: dict[str, list[Measure]] = {"defaults": [], "16": [], "dlt": []}
    for i in range(max(1, s.repeats)):
        runs["defaults"].append(_defaults_run(s, f"zero-{i}", n, ["--latency", "0"]))
        runs["16"].append(_defaults_run(s, f"zero16-{i}", n, ["--latency", "0"], name="ours"))
        runs["dlt"].append(
            measure_once(
                "control",
                "dlt",
                ids,
                n,
                ["--latency", "0"],
                s.work / f"control-zero-dlt-{i}",
                cap_s=s.cap_s,
            )
        )
    ours = median_of(runs["defaults"])
    ours.contender = f"zero latency, {n:,} ids"
    today = median_of(runs["16"])
    dlt = median_of(runs["dlt"])
    factor = ours.ids_per_s / dlt.ids_per_s
    cpu = ours.cpu_per_1k / today.cpu_per_1k
    walls = statistics.median(m.wall_s for m in runs["defaults"])
    ours.extra["checks"] = [
        Check(
            "ids/s ÷ dlt's",
            f"{factor:.2f}× ({ours.ids_per_s:,.0f} vs {dlt.ids_per_s:,.0f} ids/s)",
            "≥ 2×",
            factor >= 2,
        ),
        Check(
            "CPU s per 1,000 ids ÷ --concurrency 16's (today's default)",
            f"{cpu:.3f} ({ours.cpu_per_1k:.3f} vs {today.cpu_per_1k:.3f})",
            "≤ 1.05 (noise)",
            cpu <= 1.05,
        ),
    ]
    ours.extra["median_wall"] = walls
    ours.extra["baselines"] = {"dlt": dlt, "today": today}
    return [ours]


def rows(measures: Sequence[Measure]) -> list[list[str]]:
    """One row per figure: scenario, figure, measured, target, result."""
    out = []
    for m in measures:
        if m.section != "control":
            continue
        for c in m.extra.get("checks", []):
            result = {True: "**pass**", False: "**FAIL**", None: "not measured"}[c.passed]
            out.append([m.contender, c.figure, c.measured, c.goal, result])
    return out


DETAIL_HEADER = (
    "run", "calls", "302s", "wall s", "ids/s", "CPU s / 1k ids", "most in flight (sandbox)",
    "most in a second (sandbox)", "median latency s (sandbox)", "final rate /s",
    "in-flight limit", "most in flight (ours)", "limit estimate /s", "cuts by reason",
)  # fmt: skip


def details(measures: Sequence[Measure]) -> list[list[str]]:
    """Per run: what the sandbox saw and what the controller's summary says it did."""
    out = []
    for m in measures:
        if m.section != "control" or m.run is None:
            continue
        ledger = m.ledger
        rc: dict[str, Any] = m.extra.get("rate_control", {})
        cuts = rc.get("cuts_by_reason") or {}
        median = None if ledger is None else ledger.latency_median_s
        out.append(
            [
                m.contender,
                f"{ledger.calls:,}" if ledger else "n/a",
                f"{ledger.by_code.get(302, 0):,}" if ledger else "n/a",
                f"{m.wall_s:.1f}",
                f"{m.ids_per_s:,.1f}",
                f"{m.cpu_per_1k:.2f}",
                str(ledger.max_in_flight) if ledger else "n/a",
                str(ledger.max_calls_per_second) if ledger else "n/a",
                "n/a" if median is None else f"{median:.3f}",
                _num(rc.get("rate")),
                _num(rc.get("in_flight_limit")),
                _num(rc.get("in_flight_max")),
                _num(rc.get("ceiling_estimate")),
                ", ".join(f"{k} {v}" for k, v in cuts.items()) or "none",
            ]
        )
    return out


def _num(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "n/a"
    return f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"


def targets(measures: Sequence[Measure]) -> list[tuple[str, str, str, bool | None]]:
    """For the top table: one line per scenario (all its figures must pass)."""
    out = []
    for m in measures:
        if m.section != "control":
            continue
        checks: list[Check] = m.extra.get("checks", [])
        passed: bool | None = None
        if checks and all(c.passed is not None for c in checks):
            passed = all(c.passed for c in checks)
        measured = "; ".join(f"{c.figure}: {c.measured}" for c in checks)
        out.append((m.contender, " and ".join(c.goal for c in checks), measured, passed))
    return out
