"""One run, start to finish: ids → checkpoint → fetch → flatten → Parquet → failures → manifest.

The commit protocol (why a kill at any moment loses nothing and duplicates nothing):
1. ``state.ingest`` records every input id as pending (the primary key dedupes), once per file.
2. Each successful response is committed to the state before it counts as done.
3. Every ``batch_rows`` fetched profiles (and at the end), ``flatten`` turns the stored bodies into
   one frame per table of ``schema.TABLES``; ``sink.write_part`` puts each in place by temp file
   + rename; then one state transaction records the parts and marks the ids written.  A part on
   disk that the state does not know is a crash orphan: deleted at start-up, its ids flushed
   again from the stored bodies.
4. At the end small parts are compacted (new file in, swap recorded, old files out), failures.csv
   is rewritten from the state, and a completed snapshot gets its manifest and ``_SUCCESS``.

What it reports on the way: ``run.started`` once the ids to call are known, the fetch loop's and
the rate controller's events while fetching, ``run.finished`` with the whole summary (the
``_runs/*.json`` object) at the end, all through the ``EventLog`` it is given; and the progress
display's start, updates (after each call, and every second while nothing answers, so a 302
pause still shows) and stop around the fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import re
import secrets
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import httpx

from pipeline import changes, sink
from pipeline.assemble import assemble
from pipeline.client import ProfileClient
from pipeline.config import TOOL_VERSION, RunConfig
from pipeline.crashpoints import crash_point
from pipeline.errors import UsageError
from pipeline.events import EventLog
from pipeline.fetcher import Fetcher, FetchOutcome, backoff_delay
from pipeline.flatten import flatten
from pipeline.ids import IdFile, open_id_file
from pipeline.progress import NoProgress, Progress
from pipeline.ratelimit import RateController
from pipeline.records import Tally
from pipeline.redaction import install_log_redaction
from pipeline.run_report import (
    FailureCheck,
    IngestCounts,
    InputSummary,
    Outcome,
    RequestCounts,
    RunReport,
    SnapshotCounts,
    outcome_of,
)
from pipeline.schema import TABLES
from pipeline.shards import Shard
from pipeline.state import STATE_DIR, State, state_file_name
from pipeline.storage import TMP_DIR, FsspecStore, LocalStore, Store, open_store
from pipeline.timestamps import utcnow
from pipeline.transport import env_proxy, make_transport

HEARTBEAT_S: Final = 1.0


def new_run_id() -> str:
    """The id of a run: its ``_runs/*.json`` name and every event's ``run_id``."""
    return secrets.token_hex(4)


def run(
    config: RunConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    progress: Progress | None = None,
    events: EventLog | None = None,
    run_id: str | None = None,
) -> RunReport:
    """Run the job described by ``config``; raise UsageError/StorageError, report the rest."""
    install_log_redaction()
    started_at = utcnow()
    started = time.monotonic()
    events = events or EventLog(enabled=False)
    progress = progress or NoProgress()
    # The sandbox's token is a public word, not a secret: masking it would mangle messages.
    events.bind(snapshot_date=config.snapshot_date, secret=None if config.sandbox else config.token)
    id_file = open_id_file(config.input_path, config.id_column)
    store = open_output(config)
    _check_out(config, store)
    _check_shard_layout(config, store)
    with State.open(
        config.out_url or config.out_dir,
        config.snapshot_date,
        shard=config.shard,
        state_dir=config.state_dir,
    ) as state:
        report = RunReport(
            run_id=run_id or events.run_id or new_run_id(),
            tool_version=TOOL_VERSION,
            started_at=started_at,
            config=config,
            input=_ingest(state, id_file, config.shard),
            outcome=Outcome.DRY_RUN,
        )
        if config.dry_run:
            # The input is recorded (as the real run would) but no call, table or file is made.
            planned = state.pending_count() + state.retryable_count()
            report = dataclasses.replace(report, calls_planned=planned)
            events.emit("run.started", _started(report, planned))
            events.emit("run.finished", _finished(report))
            return report
        requeued = state.requeue_retryable()
        _recover(state, config, store)
        pending = state.pending_count()
        report = dataclasses.replace(report, requeued_failures=requeued, pending_at_start=pending)
        sink.clear_success(store, config.snapshot_date, shard=config.shard)
        limiter = RateController(
            config.rate,
            max_in_flight=config.concurrency,
            start_rate=config.start_rate,
            on_event=events.emit,
        )
        outcome = FetchOutcome(Tally())
        events.emit("run.started", _started(report, pending))
        progress.start(report, limiter)
        try:
            if pending:
                outcome = asyncio.run(
                    _fetch(config, store, state, limiter, transport, progress, events, pending)
                )
        finally:
            progress.stop()
            # Whatever stopped the fetch, what was paid for goes to Parquet now.
            _flush(state, config, store, everything=True)
        report = _finish(state, config, store, outcome, limiter, report, started)
        events.emit("run.finished", _finished(report))
        return report


def _started(report: RunReport, ids: int) -> dict[str, Any]:
    config = report.config
    return {
        "ids": ids,
        "requeued_failures": report.requeued_failures,
        "out": config.out,
        "input": str(config.input_path),
        "endpoint": config.endpoint_url,
        "sandbox": config.sandbox,
        "concurrency": config.concurrency,
        "rate": config.rate,
        "max_calls": config.max_calls,
        "dry_run": config.dry_run,
        "tool_version": report.tool_version,
    }


def _finished(report: RunReport) -> dict[str, Any]:
    return {
        "outcome": str(report.outcome),
        "exit_code": report.exit_code,
        "summary": report.to_json(),
    }


def _finish(
    state: State,
    config: RunConfig,
    store: Store,
    outcome: FetchOutcome,
    limiter: RateController,
    report: RunReport,
    started: float,
) -> RunReport:
    """Compact, rewrite failures.csv, and write the run summary (and, if complete, the manifest)."""
    _compact(state, config, store)
    _ensure_every_table_has_a_file(state, config, store)
    failures_key, failures_rows = sink.write_failures(
        store, config.snapshot_date, state.iter_failures(), shard=config.shard
    )
    counts = state.counts()
    complete = counts["pending"] == 0 and outcome.stopped_by is None
    if complete and config.shard is None:
        changes.write(state, store, config.snapshot_date)
    permanent, transient = state.failure_kinds()
    snapshot = SnapshotCounts(
        **counts,
        failures_by_code=state.failure_codes(),
        failed_permanent=permanent,
        failed_transient=transient,
        wrong_user=state.wrong_user_count(),
    )
    report = dataclasses.replace(
        report,
        outcome=outcome_of(outcome.stopped_by, interrupted=outcome.interrupted, complete=complete),
        complete=complete,
        stopped_by=outcome.stopped_by,
        interrupted=outcome.interrupted,
        requests=RequestCounts.of(outcome.tally),
        rate_control=limiter.snapshot(),
        snapshot=snapshot,
        files={t.name: tuple(p.path for p in state.parts(t.name)) for t in TABLES},
        failures_file=failures_key,
        failures_rows=failures_rows,
        finished_at=utcnow(),
        duration_s=round(time.monotonic() - started, 3),
        failure_check=_failure_check(config, store, snapshot) if complete else None,
    )
    if complete and config.shard is not None:
        report = _assemble(state, config, store, report, failures_rows)
    elif complete:
        crash_point("before_manifest")
        sink.write_manifest(
            store, config.snapshot_date, state.parts(), failures_rows, report.to_json()
        )
    key = sink.write_run_summary(store, report.run_id, report.to_json(), shard=config.shard)
    return dataclasses.replace(report, summary_file=key)


def _assemble(
    state: State, config: RunConfig, store: Store, report: RunReport, failures_rows: int
) -> RunReport:
    """A shard with all its ids done: its manifest, then the snapshot's if it is the last."""
    assert config.shard is not None
    crash_point("before_manifest")
    sink.write_shard_manifest(
        store,
        config.snapshot_date,
        config.shard,
        state.parts(),
        failures_rows,
        report.to_json(),
    )
    assembly = assemble(store, config.snapshot_date, config.shard)
    return dataclasses.replace(
        report, shards_done=assembly.done, assembled=assembly.manifest is not None
    )


def _failure_check(config: RunConfig, store: Store, snapshot: SnapshotCounts) -> FailureCheck:
    earlier = [d for d in sink.manifest_dates(store) if d < config.snapshot_date]
    previous = sink.read_manifest(store, earlier[-1]) if earlier else None
    return FailureCheck(
        snapshot,
        max_failure_rate=config.max_failure_rate,
        max_failures=config.max_failures,
        previous_rate=_failure_rate_of(previous),
    )


def _failure_rate_of(manifest: Mapping[str, Any] | None) -> float | None:
    """The failure rate an earlier snapshot's manifest records (its run summary's counts)."""
    counts = (manifest or {}).get("summary", {}).get("snapshot")
    if not isinstance(counts, dict):
        return None
    try:
        valid = sum(int(counts[k]) for k in ("pending", "fetched", "written", "failed"))
        return int(counts["failed"]) / valid if valid else 0.0
    except (KeyError, TypeError, ValueError):
        return None


async def _fetch(
    config: RunConfig,
    store: Store,
    state: State,
    limiter: RateController,
    transport: httpx.AsyncBaseTransport | None,
    progress: Progress,
    events: EventLog,
    pending: int,
) -> FetchOutcome:
    fetched_since_flush = 0

    def on_success() -> None:
        nonlocal fetched_since_flush
        fetched_since_flush += 1
        if fetched_since_flush >= config.batch_rows:
            fetched_since_flush = 0
            _flush(state, config, store)

    if transport is None:
        transport = make_transport(concurrency=config.concurrency, proxy=env_proxy(config.base_url))
    async with transport:
        client = ProfileClient(
            transport,
            endpoint_url=config.endpoint_url,
            token=config.token,
            limiter=limiter,
            timeout=config.timeout,
            max_body_bytes=config.max_body_bytes,
        )
        fetcher = Fetcher(
            client,
            state,
            concurrency=config.concurrency,
            max_attempts=config.max_attempts,
            max_calls=config.max_calls,
            on_success=on_success,
            on_progress=progress.update,
            limiter=limiter,
            backoff=functools.partial(
                backoff_delay, base=config.backoff_base, cap=config.backoff_cap
            ),
            on_event=events.emit,
            call_events=events.wants("call.done"),
        )
        beat = _heartbeat(lambda: progress.update(fetcher.current_tally()))
        heartbeat = asyncio.create_task(beat)
        with _stop_on_signals(fetcher.request_stop):
            try:
                return await fetcher.run(state.iter_pending())
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat


async def _heartbeat(beat: Callable[[], None], every: float = HEARTBEAT_S) -> None:
    """Progress updates while no call answers (a 302 pause, a retry heap waiting out back-off)."""
    while True:
        await asyncio.sleep(every)
        beat()


@contextlib.contextmanager
def _stop_on_signals(request_stop: Callable[[], None]) -> Iterator[None]:
    """First SIGINT/SIGTERM: stop dispatching and finish cleanly; a second one kills as usual."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []

    def handler() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)
        request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests): signals stay as they are
    try:
        yield
    finally:
        for sig in installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


def _ingest(state: State, id_file: IdFile, shard: Shard | None) -> InputSummary:
    key = f"{id_file.fingerprint}:{id_file.column or ''}"
    if shard is not None:
        key += f":{shard.label}"
    summary = InputSummary(
        path=str(id_file.path),
        encoding=id_file.encoding,
        column=id_file.column,
        sha256=id_file.fingerprint,
    )
    if state.input_fingerprint() == key:
        return summary
    ingested = state.ingest(shard.rows(id_file) if shard is not None else id_file, key)
    counts = IngestCounts(
        rows=ingested.rows,
        valid=ingested.valid,
        invalid=ingested.invalid,
        duplicates=ingested.duplicates,
        new=ingested.new,
        blank_cells=id_file.blank_cells,
    )
    return dataclasses.replace(summary, counts=counts)


def _recover(state: State, config: RunConfig, store: Store) -> None:
    """Undo what a crash left half done: orphan parts out, stored bodies flushed again."""
    known = {part.path for part in state.parts()}
    sink.remove_orphans(store, config.snapshot_date, known, shard=config.shard)
    _flush(state, config, store, everything=True)


def _flush(state: State, config: RunConfig, store: Store, *, everything: bool = False) -> None:
    while batch := state.fetched_batch(config.batch_rows):
        parts = [
            sink.write_part(store, table, config.snapshot_date, frame, shard=config.shard)
            for table, frame in flatten(batch).by_table()
            if frame.height
        ]
        crash_point("after_part_rename")
        state.mark_written([profile.user_id for profile in batch], parts)
        if not everything or len(batch) < config.batch_rows:
            break


def _compact(state: State, config: RunConfig, store: Store) -> None:
    for table in TABLES:
        for group in sink.plan_compaction(state.parts(table.name), table.compact_rows):
            merged = sink.compact(store, table, config.snapshot_date, group, shard=config.shard)
            state.replace_parts(group, [merged])
            crash_point("after_compact_swap")
            sink.delete_parts(store, group)


def _ensure_every_table_has_a_file(state: State, config: RunConfig, store: Store) -> None:
    """A table with no rows still gets one empty, typed file, so readers' globs always match."""
    for table, frame in flatten([]).by_table():
        if not state.parts(table.name):
            part = sink.write_part(store, table, config.snapshot_date, frame, shard=config.shard)
            state.mark_written([], [part])


def _check_shard_layout(config: RunConfig, store: Store) -> None:
    """One snapshot is written by one unsharded run or by N shards, never by a mix: an
    unsharded run would take the shards' parts for orphans, and shards of another count would
    own other ids (each would be fetched again)."""
    state_dir = config.state_dir or config.out_dir / STATE_DIR
    day = config.snapshot_date
    counts = {s.count for s in sink.read_shard_manifests(store, day)}
    counts |= {
        int(m.group(1))
        for p in state_dir.glob(f"dt={day.isoformat()}.shard-*-of-*.sqlite")
        if (m := _SHARD_STATE.fullmatch(p.name))
    }
    unsharded = (state_dir / state_file_name(day)).exists()
    wanted = config.shard.count if config.shard is not None else None
    if config.shard is None and counts:
        raise UsageError(
            f"snapshot {day} in {config.out} is written by {_shards(counts)}: "
            f"run with --shard-count {max(counts)} and a --shard-index, or use another --out"
        )
    if config.shard is not None and unsharded:
        raise UsageError(
            f"snapshot {day} in {config.out} is written by an unsharded run: run it without "
            "--shard-count, or use another --out or --snapshot-date"
        )
    if wanted is not None and counts - {wanted}:
        raise UsageError(
            f"snapshot {day} in {config.out} is written by {_shards(counts - {wanted})}, "
            f"not {wanted}: keep the shard count of a snapshot, or use another --out"
        )


def _shards(counts: set[int]) -> str:
    return " and ".join(f"{n} shards" for n in sorted(counts))


_SHARD_STATE: Final = re.compile(r"dt=\d{4}-\d{2}-\d{2}\.shard-\d+-of-(\d+)\.sqlite")


def open_output(config: RunConfig) -> Store:
    """The store of the run's OUT: its folder, or the remote URL, whose temp files are staged
    in the local state folder."""
    if config.out_url is None:
        return LocalStore(config.out_dir)
    assert config.state_dir is not None  # RunConfig gives a remote OUT one
    return open_store(config.out_url, config.state_dir / TMP_DIR)


def _check_out(config: RunConfig, store: Store) -> None:
    """OUT can be written, or a one-line UsageError before anything is called: a folder is
    made and a temp file tried in it; an object store gets one small object, put and removed."""
    if isinstance(store, FsspecStore):
        store.probe()
    else:
        _check_out_dir(config.out_dir)


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise UsageError(f"--out {out_dir} is not writable: {exc.strerror or exc}") from exc
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out_dir} is not writable")
