"""What every scenario needs: id files, a sandbox in its own process, a measured child process.

Rules:
- The sandbox is always a separate process (``xhs-profiles sandbox``) on 127.0.0.1, started fresh
  for each measured run, so its ledger (``GET /_sandbox/stats``) counts only that run and its
  profile cache starts cold for every contender alike.
- A child's figures come from the kernel: a small launcher process forks it, and ``os.wait4``
  gives its user+sys CPU seconds and its peak RSS (``ru_maxrss``, descendants it waited for
  included); wall time runs from the fork to the reap.  (Spawned straight from the bench, a
  child's ``ru_maxrss`` would include the bench's own peak: see ``_LAUNCHER``.)
- Every wait is bounded: sandbox start-up, each child (``cap_s``: the child is SIGKILLed and the
  run is marked capped), each HTTP request to the ledger.
- Children get ``NO_PROXY`` for loopback and no ``JUSTONEAPI_*`` variables, so nothing can leave
  the machine and no real token is ever handed to a benchmark process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
XHS = str(BIN / "xhs-profiles")
TOKEN = "sandbox"
POLL_S = 0.01
SANDBOX_START_TIMEOUT_S = 20.0


_bytecode_cache: list[Path] = []


def use_bytecode_cache(folder: Path) -> None:
    """Children keep compiled bytecode in ``folder`` (outside the repo and the venv).

    Installs made by ``uv sync`` hold no ``.pyc`` files, and with ``PYTHONDONTWRITEBYTECODE``
    set (as on this machine) every process would compile each imported module again: about a
    second of start-up for polars, pyarrow, aiohttp and httpx.  A normal install has bytecode,
    so every contender gets the same warm cache.
    """
    _bytecode_cache[:] = [folder]


def child_env() -> dict[str, str]:
    """The environment of every benchmark child: loopback only, no real token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUSTONEAPI_")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    if _bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(_bytecode_cache[0])
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # never write .pyc files into the repo
    return env


def make_ids(n: int, path: Path, salt: str = "bench") -> Path:
    """A CSV of ``n`` distinct valid ids (24 hex), the same for the same ``n`` and ``salt``."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write("user_id\n")
        for i in range(n):
            digest = hashlib.blake2b(f"{salt}:{i}".encode(), digest_size=12).hexdigest()
            handle.write(digest + "\n")
    tmp.replace(path)
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(url: str, timeout: float = 30.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
        return json.loads(response.read())


@dataclass
class Ledger:
    """The sandbox's ``/_sandbox/stats``, with the figures the bench needs."""

    calls: int
    by_code: dict[int, int]
    successes_by_id: dict[str, int]
    distinct_ids_called: int
    max_in_flight: int = 0  # the most requests the sandbox held at once
    max_calls_per_second: int = 0  # the most requests that arrived within any one second
    latency_median_s: float | None = None  # of the latencies the sandbox applied
    in_flight: int = 0  # requests the sandbox holds now
    age_s: float = 0.0  # the sandbox's clock: seconds since it started

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Ledger:
        return cls(
            calls=int(raw["calls"]),
            by_code={int(k): int(v) for k, v in raw["by_code"].items()},
            successes_by_id={str(k): int(v) for k, v in raw["successes_by_id"].items()},
            distinct_ids_called=len(raw["calls_by_id"]),
            max_in_flight=int(raw.get("max_in_flight", 0)),
            max_calls_per_second=int(raw.get("max_calls_per_second", 0)),
            latency_median_s=raw.get("latency_median_s"),
            in_flight=int(raw.get("in_flight", 0)),
            age_s=float(raw.get("age_s", 0.0)),
        )

    @property
    def successes(self) -> int:
        return sum(self.successes_by_id.values())

    @property
    def ids_succeeded(self) -> int:
        return len(self.successes_by_id)

    def share(self, code: int) -> float:
        return self.by_code.get(code, 0) / self.calls if self.calls else 0.0


class SandboxProcess:
    """``xhs-profiles sandbox`` in a child process; use as a context manager."""

    def __init__(self, options: Sequence[str]) -> None:
        self.options = list(options)
        self.port = 0
        self.argv: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._ps: psutil.Process | None = None
        self._cpu_mark = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SandboxProcess:
        for _ in range(5):  # another process may take the free port between probe and bind
            self.port = _free_port()
            self.argv = [XHS, "sandbox", "--port", str(self.port), *self.options]
            proc = subprocess.Popen(
                self.argv,
                env=child_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=REPO,
            )
            deadline = time.monotonic() + SANDBOX_START_TIMEOUT_S
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    http_json(self.base_url + "/_sandbox/stats", timeout=1.0)
                except OSError:
                    time.sleep(0.05)
                    continue
                self._proc, self._ps = proc, psutil.Process(proc.pid)
                self.mark_cpu()
                return self
            _stop(proc)
        raise RuntimeError(f"the sandbox did not start: {shlex.join(self.argv)}")

    def stats(self) -> Ledger:
        return Ledger.from_json(http_json(self.base_url + "/_sandbox/stats"))

    def mark_cpu(self) -> None:
        self._cpu_mark = self._cpu_seconds()

    def cpu_since_mark(self) -> float:
        return self._cpu_seconds() - self._cpu_mark

    def _cpu_seconds(self) -> float:
        if self._ps is None:
            return 0.0
        times = self._ps.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        if self._proc is not None:
            _stop(self._proc)
            self._proc = self._ps = None

    def __enter__(self) -> SandboxProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass
class ChildRun:
    """One measured child process."""

    argv: list[str]
    returncode: int | None
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    capped: bool = False
    killed: bool = False
    stdout: str = ""
    stderr: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def last_json_line(self) -> dict[str, Any]:
        for line in reversed(self.stdout.strip().splitlines()):
            if line.startswith("{"):
                value = json.loads(line)
                return value if isinstance(value, dict) else {}
        return {}


# The launcher forks the measured command from a small process.  Linux carries the peak RSS of
# the address space a process had before ``exec`` into its ``ru_maxrss``, and Python spawns
# children with vfork from the parent's address space: without this step every child's peak
# RSS would read at least the bench's own (over 1 GB after the in-process scenarios).  The
# launcher (``python -I -S``, a few MB) also times the child from fork to reap.
_LAUNCHER = """
import json, os, sys, time
result, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
with open(result + ".pid.tmp", "w") as handle:
    handle.write(str(pid))
os.replace(result + ".pid.tmp", result + ".pid")
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(result + ".tmp", "w") as handle:
    json.dump({"status": status, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
               "maxrss_kib": usage.ru_maxrss}, handle)
os.replace(result + ".tmp", result)
"""
LAUNCH_TIMEOUT_S = 10.0


def run_child(
    argv: Sequence[str],
    *,
    log_dir: Path,
    cap_s: float,
    on_tick: Callable[[float], bool] | None = None,
    tick_s: float = 0.05,
) -> ChildRun:
    """Run ``argv`` to its end (or SIGKILL it at ``cap_s``, or when ``on_tick`` says so).

    ``on_tick(elapsed)`` is called about every ``tick_s``; returning True kills the child.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / "stdout.txt", log_dir / "stderr.txt"
    result_path = log_dir / "rusage.json"
    pid_path = Path(f"{result_path}.pid")
    for stale in (result_path, pid_path):
        stale.unlink(missing_ok=True)
    capped = killed = False
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(result_path), *argv]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(launcher, env=child_env(), stdout=out, stderr=err, cwd=REPO)
        child = _read_pid(pid_path, proc)
        next_tick = started + tick_s
        while proc.poll() is None:
            now = time.perf_counter()
            elapsed = now - started
            if elapsed > cap_s and not killed:
                capped = killed = True
                if on_tick is not None:
                    on_tick(elapsed)
                _kill(child)
            elif on_tick is not None and now >= next_tick and not killed:
                next_tick = now + tick_s
                if on_tick(elapsed):
                    killed = True
                    _kill(child)
            time.sleep(POLL_S)
    try:
        usage = json.loads(result_path.read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"the launcher failed (exit {proc.returncode}): {argv[:3]}") from exc
    return ChildRun(
        argv=list(argv),
        returncode=os.waitstatus_to_exitcode(usage["status"]),
        wall_s=float(usage["wall"]),
        cpu_s=float(usage["cpu"]),
        peak_rss_mb=usage["maxrss_kib"] / 1024,  # KiB on Linux
        capped=capped,
        killed=killed,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )


def _read_pid(pid_path: Path, launcher: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            return int(pid_path.read_text())
        if launcher.poll() is not None:
            break
        time.sleep(POLL_S / 10)
    launcher.kill()
    launcher.wait(timeout=5)
    raise RuntimeError(f"the launcher did not start the child (exit {launcher.returncode})")


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may have just exited
        os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------ the machine


class OtherLoad:
    """CPU that processes outside the measured run used meanwhile (other work on the machine).

    Machine-wide busy CPU seconds (``/proc/stat``) minus the child's, the sandbox's and the
    bench's own, plus the hypervisor's steal; reported in cores (CPU seconds per wall second).
    """

    def __init__(self) -> None:
        self._machine = psutil.cpu_times()
        self._own = time.process_time()
        self._started = time.perf_counter()

    def finish(self, measured_cpu_s: float) -> dict[str, float]:
        now = psutil.cpu_times()
        wall = max(time.perf_counter() - self._started, 1e-9)
        busy = _busy(now) - _busy(self._machine)
        own = time.process_time() - self._own
        steal = float(getattr(now, "steal", 0.0) - getattr(self._machine, "steal", 0.0))
        return {
            "other_cores": max(busy - measured_cpu_s - own, 0.0) / wall,
            "steal_cores": steal / wall,
        }


def _busy(times: Any) -> float:
    idle = float(times.idle) + float(getattr(times, "iowait", 0.0))
    guest = float(getattr(times, "guest", 0.0)) + float(getattr(times, "guest_nice", 0.0))
    return float(sum(times)) - idle - guest  # guest time is already counted in user


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    versions = []
    for package in ("polars", "pyarrow", "httpx", "httpx-aiohttp", "aiohttp", "dlt", "requests"):
        try:
            versions.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--", "pipeline")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpus": f"{os.cpu_count()} (nproc {len(os.sched_getaffinity(0))})",
        "cpu model": cpu,
        "memory": memory,
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "packages": ", ".join(versions),
        "load average at the start (1/5/15 min)": load_average(),
        "commit": f"{commit}{' + uncommitted changes in pipeline/' if dirty else ''}",
        "pipeline sources hash at the start": pipeline_fingerprint(),
    }


def pipeline_fingerprint() -> str:
    """A short hash of the pipeline's sources, to tell whether they changed during a run."""
    digest = hashlib.blake2b(digest_size=6)
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        # Each field with its length (or a flag for an unreadable file): a plain concatenation
        # of name and text would hash the same when bytes move from one file's text to the next
        # file's name.
        name = path.relative_to(REPO).as_posix().encode()
        digest.update(len(name).to_bytes(8, "big") + name)
        try:
            text = path.read_bytes()
        except OSError:
            digest.update(b"\x00")
        else:
            digest.update(b"\x01" + len(text).to_bytes(8, "big") + text)
    return digest.hexdigest()


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    return done.stdout.strip() or ("" if args[0] == "status" else "?")
