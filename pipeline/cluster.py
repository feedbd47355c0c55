"""Shards as tasks on a Dask cluster: ``run IDS --out OUT --dask ADDRESS --shard-count N``.

``run_on_dask`` connects a ``distributed.Client`` to the scheduler, submits one task per shard
(``pure=False``, the key ``xhs-profiles-<snapshot>-shard-<K>-of-<N>-<batch>``), waits for all of
them and returns a ``ClusterResult``: the sum of the shards' counts, each shard's outcome, and
the combined exit code.  Each task is ``run_shard(config)``, which calls exactly the
``runner.run(config)`` of a local run (imported inside the task, so a worker loads the pipeline
when it first runs one) and returns a small picklable dict: the shard's run summary (its
``_runs/*.json`` object), its exit code and a one-line message.  Whichever shard finishes last
writes the snapshot's combined manifest, failures.csv and ``_SUCCESS`` (the runner does that,
as it does for shards started any other way).

A worker that dies: the scheduler reschedules the tasks it was running on another worker (or
on the same one once its Nanny has restarted it), counting each death against the task; past
``distributed.scheduler.allowed-failures`` deaths (default 3: up to four attempts) the task
ends with ``KilledWorker`` (``distributed/scheduler.py``, ``Scheduler.remove_worker``).  That
is Dask's own retry; a task that raises is not retried (``retries=0``), since the runner's
errors are decisions (a stopped account, a full disk) that a rerun on another worker would only
repeat.  A retried shard resumes from its checkpoint (``OUT/_state`` or ``--state-dir``) when
the worker that retries it can open it: on one machine (a ``LocalCluster``, or workers sharing
a disk) it always can, and the checkpoint's lock (``flock``) died with the killed process.  A
retry that finds no checkpoint (another machine with its own disk) starts the shard over: its
earlier parts are orphans to the new checkpoint and are removed, and every id of the shard is
called (and paid for) again.  So on a real cluster either give the workers one file system for
the state on which SQLite works (POSIX locks; not NFS or SMB), or accept that cost.

Tokens: each shard's token is resolved here, on the submitting side, and travels in its
``RunConfig`` as a ``Secret``: the task key names only the snapshot and the shard, and the
config's ``repr`` (what Dask shows of a task's arguments in logs and on the dashboard) masks
it.  The pickled task does carry it, to the scheduler and the worker, as it must: use
``tls://`` on a network you do not trust.

The combined exit code is the worst shard's, in the order of ``EXIT_PRECEDENCE``: 1 (a bug, or
a shard lost with its workers) before 2 (bad usage, e.g. another run holds the shard's lock),
5 (storage), 3 (the API stopped the account), 130 (interrupted), 4 (``--max-calls``), 6
(failures over the limit) and 0; the message names that shard and says why.

``distributed`` is imported only here, inside the functions that need it, so a run without
``--dask`` never loads it; without it installed ``--dask`` is a one-line usage error.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from pipeline.assemble import add_up
from pipeline.config import RunConfig
from pipeline.errors import (
    EXIT_BUDGET,
    EXIT_FAILURES,
    EXIT_INTERRUPTED,
    EXIT_STOPPED,
    EXIT_STORAGE,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    CallBudgetExhausted,
    FailureThresholdExceeded,
    Interrupted,
    StopRun,
    StorageError,
    UsageError,
    XhsProfilesError,
)
from pipeline.redaction import mask
from pipeline.shards import Shard

TASK_PREFIX: Final = "xhs-profiles"
# The worst exit code first: what the combined run ends with (see the module's docstring).
EXIT_PRECEDENCE: Final = (
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    EXIT_STORAGE,
    EXIT_STOPPED,
    EXIT_INTERRUPTED,
    EXIT_BUDGET,
    EXIT_FAILURES,
    0,
)
NO_DASK: Final = "--dask needs the dask extra: pip install 'xhs-profiles[dask]'"
_ERRORS: Final[Mapping[int, type[XhsProfilesError]]] = {
    EXIT_UNEXPECTED: XhsProfilesError,
    EXIT_USAGE: UsageError,
    EXIT_STORAGE: StorageError,
    EXIT_STOPPED: StopRun,
    EXIT_INTERRUPTED: Interrupted,
    EXIT_BUDGET: CallBudgetExhausted,
    EXIT_FAILURES: FailureThresholdExceeded,
}
_COUNTS: Final = ("calls", "fetched", "failed", "retried", "rate_limited", "wrong_user")
_SNAPSHOT: Final = ("pending", "fetched", "written", "failed", "rejected")


def task_key(config: RunConfig, batch: str) -> str:
    """The task's name on the cluster: the tool, the snapshot, the shard and the submission."""
    label = config.shard.label if config.shard is not None else "all"
    return f"{TASK_PREFIX}-{config.snapshot_date.isoformat()}-{label}-{batch}"


def run_shard(config: RunConfig) -> dict[str, Any]:
    """The task a worker runs: one shard, by the same ``runner.run`` as a local run.

    Returns the shard's run summary, exit code and a one-line message (never the token).  The
    runner's own errors (usage, storage) are returned too, so that Dask does not log the task
    as failed; anything else (a bug) raises a ``RuntimeError`` with the token masked and no
    chained cause, since Dask logs and ships the exception and its traceback.
    """
    from pipeline import runner  # on a worker: loaded by the first task it runs

    facts: dict[str, Any] = {"worker": _worker_address(), "pid": os.getpid()}
    secret = config.token.reveal()
    try:
        report = runner.run(config)
    except XhsProfilesError as exc:
        message = mask(f"{exc.prefix}{exc}", secret)
        return {**facts, "summary": None, "exit_code": exc.exit_code, "message": message}
    except Exception as exc:
        raise RuntimeError(mask(f"{type(exc).__name__}: {exc}", secret)) from None
    message = ""
    if report.stopped_by is not None:
        message = f"{report.stopped_by.prefix}{report.stopped_by}"
    elif report.interrupted:
        message = str(Interrupted())
    elif report.failure_check is not None and report.failure_check.exceeded:
        message = report.failure_check.message()
    summary = report.to_json()
    return {
        **facts,
        "summary": summary,
        "exit_code": report.exit_code,
        "message": mask(message, secret),
    }


def _worker_address() -> str | None:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):  # not on a Dask worker (a test calling it directly)
        return None


@dataclass(frozen=True, slots=True)
class ShardResult:
    """What the submitting side knows of one shard once its task is over."""

    shard: Shard
    key: str
    exit_code: int
    message: str = ""  # why it did not end with 0 (or what went wrong with its task)
    summary: Mapping[str, Any] | None = None  # the shard's _runs/*.json object
    worker: str | None = None  # the worker that ran the last attempt
    attempts: int | None = None  # 1 + the workers that died running it (None: not known)
    lost: bool = False  # the task never finished (its workers died, or the cluster went away)

    @property
    def outcome(self) -> str:
        if self.summary is not None:
            return str(self.summary.get("outcome", "unknown"))
        return "lost" if self.lost else "error"

    @property
    def resumed(self) -> bool:
        """This shard's last attempt found its input already in its checkpoint."""
        if self.summary is None:
            return False
        return not bool(self.summary.get("input", {}).get("ingested", True))

    @property
    def assembled(self) -> bool:
        """This shard finished last and wrote the snapshot's manifest and ``_SUCCESS``."""
        if self.summary is None:
            return False
        return bool(self.summary.get("shards", {}).get("assembled", False))

    @property
    def retried(self) -> bool:
        return self.attempts is not None and self.attempts > 1

    def count(self, section: str, name: str) -> int:
        if self.summary is None:
            return 0
        value = self.summary.get(section, {}).get(name, 0)
        return int(value) if isinstance(value, int) else 0

    def line(self) -> str:
        """One line: the shard, its outcome and counts, and whether Dask retried it."""
        head = f"{self.shard.label}  {self.outcome} (exit {self.exit_code})"
        if self.summary is not None:
            head += (
                f"  {self.count('requests', 'calls'):,} calls, "
                f"{self.count('requests', 'fetched'):,} fetched, "
                f"{self.count('snapshot', 'pending'):,} pending, "
                f"{float(self.summary.get('duration_s') or 0.0):.1f} s"
            )
        notes = []
        if self.retried:
            notes.append(f"retried by Dask: attempt {self.attempts}, after its worker died")
        if self.resumed:
            pending = self.summary.get("pending_at_start", 0) if self.summary else 0
            notes.append(f"resumed from its checkpoint ({pending:,} ids left)")
        if self.assembled:
            notes.append("the last to finish: committed the snapshot")
        if self.worker:
            notes.append(f"on {self.worker}")
        if self.message:
            notes.append(self.message)
        return head + "".join(f"; {note}" for note in notes)


@dataclass(frozen=True, slots=True)
class ClusterResult:
    """Every shard of one ``--dask`` run, their sum and the combined exit code."""

    address: str
    out_dir: Path | str  # the folder, or a remote OUT's URL
    snapshot_date: str
    shards: tuple[ShardResult, ...]
    duration_s: float = 0.0
    allowed_failures: int | None = None  # the scheduler's distributed.scheduler.allowed-failures
    requests: Mapping[str, int] = field(default_factory=dict)
    snapshot: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        address: str,
        configs: Sequence[RunConfig],
        shards: Iterable[ShardResult],
        *,
        duration_s: float = 0.0,
        allowed_failures: int | None = None,
    ) -> ClusterResult:
        ordered = tuple(sorted(shards, key=lambda s: s.shard.index))
        summaries = [s.summary or {} for s in ordered]
        return cls(
            address=address,
            out_dir=configs[0].out_url or configs[0].out_dir,
            snapshot_date=configs[0].snapshot_date.isoformat(),
            shards=ordered,
            duration_s=round(duration_s, 3),
            allowed_failures=allowed_failures,
            requests=add_up(summaries, "requests", _COUNTS),
            snapshot=add_up(summaries, "snapshot", _SNAPSHOT),
        )

    @property
    def worst(self) -> ShardResult | None:
        """The shard whose exit code ranks worst (the first of them), None when all are 0."""
        rank = {code: i for i, code in enumerate(EXIT_PRECEDENCE)}
        failing = [s for s in self.shards if s.exit_code != 0]
        if not failing:
            return None
        return min(failing, key=lambda s: (rank.get(s.exit_code, 0), s.shard.index))

    @property
    def exit_code(self) -> int:
        worst = self.worst
        return 0 if worst is None else worst.exit_code

    def error(self) -> XhsProfilesError | None:
        """The error the command ends with: the worst shard's code, its name and reason."""
        worst = self.worst
        if worst is None:
            return None
        others = sum(1 for s in self.shards if s.exit_code == worst.exit_code) - 1
        also = f" (and {others} more shard{'s' * (others != 1)})" if others else ""
        reason = worst.message or f"ended with {worst.outcome}"
        kind = _ERRORS.get(worst.exit_code, XhsProfilesError)
        if kind.prefix and reason.startswith(kind.prefix):  # the CLI puts it back
            reason = reason[len(kind.prefix) :]
        text = f"{worst.shard.label}{also}: {reason}"
        return Interrupted(text) if kind is Interrupted else kind(text)

    def lines(self) -> list[str]:
        """The summary for stdout: one line per shard, then the three closing lines."""
        outcomes: dict[str, int] = {}
        for shard in self.shards:
            outcomes[shard.outcome] = outcomes.get(shard.outcome, 0) + 1
        told = ", ".join(f"{n} {outcome}" for outcome, n in outcomes.items())
        retried = sum(1 for s in self.shards if s.retried)
        resumed = sum(1 for s in self.shards if s.resumed)
        head = (
            f"dask {self.address}: {_plural(len(self.shards), 'shard')} in "
            f"{self.duration_s:.1f} s: {told}; "
            f"{retried} retried by Dask, {resumed} resumed from a checkpoint; "
            f"exit {self.exit_code}"
        )
        req, snap = self.requests, self.snapshot
        # Two shards that finish at the same moment may both commit (the same files, at the
        # same names): name each.
        last = " and ".join(s.shard.label for s in self.shards if s.assembled)
        committed = f"  (snapshot committed by {last})" if last else "  (snapshot not committed)"
        uncounted = " (not counting the calls of attempts whose worker died)" if retried else ""
        return [
            head,
            *(f"  {shard.line()}" for shard in self.shards),
            f"snapshot {self.snapshot_date}: {snap['written']:,} profiles, "
            f"{snap['failed'] + snap['rejected']:,} failed, {snap['pending']:,} pending",
            f"these runs: {req['calls']:,} calls, {req['fetched']:,} fetched, "
            f"{req['failed']:,} failed, {req['retried']:,} retried, "
            f"{req['rate_limited']:,} rate-limited, {self.duration_s:.1f} s{uncounted}",
            f"output: {self.out_dir}{committed}",
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "out": str(self.out_dir),
            "snapshot_date": self.snapshot_date,
            "duration_s": self.duration_s,
            "allowed_failures": self.allowed_failures,
            "exit_code": self.exit_code,
            "requests": dict(self.requests),
            "snapshot": dict(self.snapshot),
            "shards": [
                {
                    "shard": s.shard.label,
                    "key": s.key,
                    "outcome": s.outcome,
                    "exit_code": s.exit_code,
                    "message": s.message,
                    "worker": s.worker,
                    "attempts": s.attempts,
                    "retried": s.retried,
                    "resumed": s.resumed,
                    "assembled": s.assembled,
                    "summary": None if s.summary is None else dict(s.summary),
                }
                for s in self.shards
            ],
        }


def import_distributed() -> ModuleType:
    """``distributed``, or the one-line usage error that says how to install it."""
    try:
        import distributed
    except ImportError:
        raise UsageError(NO_DASK) from None
    return distributed


def check_configs(configs: Sequence[RunConfig]) -> None:
    """One snapshot into one --out, each shard of the same count exactly once."""
    if not configs:
        raise UsageError("--dask needs at least one shard")
    first = configs[0]
    shards = [c.shard for c in configs]
    if any(s is None for s in shards):
        raise UsageError("--dask runs shards: every config needs its shard (--shard-count)")
    counts = {s.count for s in shards if s is not None}
    indexes = sorted(s.index for s in shards if s is not None)
    if len(counts) != 1 or len(set(indexes)) != len(indexes):
        raise UsageError("--dask: the shards must be distinct shards of one --shard-count")
    if any(c.out != first.out or c.snapshot_date != first.snapshot_date for c in configs):
        raise UsageError("--dask: every shard must write the same snapshot into the same --out")


def run_on_dask(
    address: str,
    configs: Sequence[RunConfig],
    *,
    on_shard: Callable[[ShardResult], None] | None = None,
    timeout: float | None = None,
) -> ClusterResult:
    """Run each config (one shard each) as a task on the Dask cluster at ``address``; wait for
    all of them; return their combined result.  ``on_shard`` hears of each as it ends.

    ``timeout``: seconds to connect (default: Dask's ``distributed.comm.timeouts.connect``).
    """
    distributed = import_distributed()
    check_configs(configs)
    batch = secrets.token_hex(4)
    started = time.monotonic()
    try:
        connect = {} if timeout is None else {"timeout": timeout}
        client = distributed.Client(address, set_as_default=False, **connect)
    except (OSError, TimeoutError, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UsageError(f"cannot connect to the Dask scheduler at {address}: {reason}") from None
    with client:
        allowed = _allowed_failures(client)
        futures = {
            client.submit(run_shard, config, key=task_key(config, batch), pure=False): config
            for config in configs
        }
        results = []
        for future in distributed.as_completed(futures, loop=client.loop):
            result = _result_of(client, future, futures[future], allowed)
            results.append(result)
            if on_shard is not None:
                on_shard(result)
        del futures  # released: the scheduler forgets the tasks
    return ClusterResult.of(
        address,
        configs,
        results,
        duration_s=time.monotonic() - started,
        allowed_failures=allowed,
    )


def _result_of(client: Any, future: Any, config: RunConfig, allowed: int | None) -> ShardResult:
    shard = config.shard
    assert shard is not None  # check_configs
    key = str(future.key)
    attempts = _attempts(client, key)
    if future.status == "finished":
        facts = future.result()
        return ShardResult(
            shard=shard,
            key=key,
            exit_code=int(facts["exit_code"]),
            message=str(facts.get("message") or ""),
            summary=facts.get("summary"),
            worker=facts.get("worker"),
            attempts=attempts,
        )
    secret = config.token.reveal()
    try:
        error = future.exception()
    except Exception as exc:  # cancelled: the scheduler or the connection went away
        error = exc
    name = type(error).__name__
    if name == "KilledWorker":
        limit = "" if allowed is None else f" (distributed.scheduler.allowed-failures={allowed})"
        message = (
            f"lost: every worker that ran it died{limit}; rerun the same command to resume "
            "from its checkpoint"
        )
        return ShardResult(shard, key, EXIT_UNEXPECTED, message, attempts=attempts, lost=True)
    if name in ("CancelledError", "FutureCancelledError"):
        message = "lost: the task was cancelled (the scheduler or its connection went away)"
        return ShardResult(shard, key, EXIT_UNEXPECTED, message, attempts=attempts, lost=True)
    text = mask(" ".join(str(error).split()), secret)
    message = f"unexpected error on the worker: {name}: {text}"
    if name == "ModuleNotFoundError":
        message += " (install xhs-profiles on every worker)"
    return ShardResult(shard, key, EXIT_UNEXPECTED, message, attempts=attempts)


def _allowed_failures(client: Any) -> int | None:
    def read(dask_scheduler: Any) -> int:  # pickled by value: the scheduler needs no pipeline
        return int(dask_scheduler.allowed_failures)

    try:
        return int(client.run_on_scheduler(read))
    except Exception:  # an old or locked-down scheduler: the figure is only informative
        return None


def _attempts(client: Any, key: str) -> int | None:
    """1 + the workers that died while running the task (the scheduler's ``suspicious``)."""

    def read(dask_scheduler: Any, key: str) -> int | None:
        task = dask_scheduler.tasks.get(key)
        return None if task is None else int(task.suspicious)

    try:
        died = client.run_on_scheduler(read, key=key)
    except Exception:
        return None
    return None if died is None else int(died) + 1


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'s' * (n != 1)}"
