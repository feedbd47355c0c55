"""The SQLite checkpoint of one snapshot: which ids are pending, fetched, written or failed.

One file per ``--out`` and snapshot date, ``OUT/_state/dt=YYYY-MM-DD.sqlite``.  Rules it follows:

- A paid response is durable the moment ``record_success`` returns: its body is committed in WAL
  mode (``synchronous=NORMAL`` survives a process kill; only a power cut can lose the last
  commits).  Every method that changes more than one row does so in ONE transaction.
- An id only moves forward: pending → fetched → written, or pending → failed; ``requeue_retryable``
  is the only way back (failed and retryable → pending).  A late ``record_*`` for an id that is
  already fetched or written changes nothing, so a profile can never reach Parquet twice.
- Memory stays flat however many ids there are: ingest streams in chunks, ``iter_pending`` pages
  with a keyset (``user_id > ?``) over the ``(status, user_id)`` index.
- The file is versioned (``PRAGMA user_version``): older files are migrated in one transaction, a
  newer or foreign file is refused with ``StateVersionError``, never silently started over.
- ``OUT/_state/lock`` (``--state-dir``'s when given; a remote OUT's is always local) is held
  with ``flock`` while a ``State`` is open, so two runs never share an OUT (any date); the
  holder's pid is written in it for the message.  (Two machines writing one remote OUT do not
  see each other's lock: run one writer per OUT, or one per shard.)
- sqlite3 and OS errors leave this module as ``StateError`` / ``StorageError`` (``raise ... from``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from pipeline.config import TOOL_VERSION
from pipeline.errors import (
    CODE_INVALID_INPUT,
    CODE_NO_RESPONSE,
    CODE_UNAVAILABLE,
    StateError,
    StateLockedError,
    StateVersionError,
    StorageError,
)
from pipeline.records import Failure, FetchedProfile, InputRow, Part
from pipeline.shards import Shard
from pipeline.timestamps import from_epoch_us, to_epoch_us, utcnow

SCHEMA_VERSION: Final = 1
STATE_DIR: Final = "_state"
LOCK_NAME: Final = "lock"
INGEST_CHUNK: Final = 20_000
MAX_MESSAGE_CHARS: Final = 2_000  # a hostile body's message must not bloat the state
BUSY_TIMEOUT_MS: Final = 10_000
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_EXPECTED_TABLES: Final = ("ids", "meta", "parts", "rejects", "responses")

_STATUS_INDEX: Final = "CREATE INDEX ids_status ON ids (status, user_id)"
_SCHEMA_V1: Final = (
    """CREATE TABLE ids (
        user_id TEXT PRIMARY KEY,
        line INTEGER,
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'fetched', 'written', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        code INTEGER,
        message TEXT,
        retryable INTEGER NOT NULL DEFAULT 0,
        last_attempt_at INTEGER  -- epoch µs
    ) WITHOUT ROWID""",
    _STATUS_INDEX,
    # ``data`` comes last so that reading the other columns never walks a body's overflow pages.
    """CREATE TABLE responses (
        user_id TEXT PRIMARY KEY,
        request_id TEXT,
        fetched_at INTEGER NOT NULL,  -- epoch µs
        data BLOB  -- NULL once the id is written: the Parquet raw_json holds it
    )""",
    "CREATE TABLE rejects (raw TEXT PRIMARY KEY, line INTEGER, reason TEXT) WITHOUT ROWID",
    """CREATE TABLE parts (
        path TEXT PRIMARY KEY, tbl TEXT NOT NULL, rows INTEGER NOT NULL, created_at INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
)

# MIGRATIONS[i] upgrades a file from version i + 1 to i + 2; all pending ones run in one
# transaction, so they must not commit (no executescript) and must not change journal mode.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = []

# Guards an id must pass before a record_* may change it: never move a fetched/written id back.
_OPEN_STATUSES: Final = "ids.status IN ('pending', 'failed')"


class Status(StrEnum):
    PENDING = "pending"
    FETCHED = "fetched"
    WRITTEN = "written"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class PendingId:
    user_id: str
    attempts: int


@dataclass(frozen=True, slots=True)
class IngestReport:
    rows: int  # cells read from the input
    valid: int  # cells holding a valid id (duplicates included)
    invalid: int  # cells recorded as rejects (code 400)
    duplicates: int  # valid cells repeating an id seen earlier in the same input
    new: int  # ids added to the state by this ingest (already known ones keep their status)


def _now_us() -> int:
    return time.time_ns() // 1_000


class State:
    """The open checkpoint of one snapshot; holds OUT's lock until ``close``."""

    path: Path

    def __init__(
        self, path: Path, out_dir: Path | str, conn: sqlite3.Connection, locks: list[int]
    ) -> None:
        self.path = path
        self._out_dir = out_dir
        self._conn = conn
        self._locks = locks

    # ---------------------------------------------------------------- opening and closing

    @classmethod
    def open(
        cls,
        out_dir: Path | str,
        snapshot_date: dt.date,
        *,
        shard: Shard | None = None,
        state_dir: Path | None = None,
    ) -> State:
        """Open (creating) the snapshot's checkpoint, or the shard's, holding the lock.

        An unsharded run holds OUT's lock exclusively; a shard holds it shared (the shards of
        one OUT run side by side, and never beside an unsharded run) and its own shard's lock
        exclusively (two copies of one shard never run at once).

        A remote OUT (``out_dir`` a URL, for messages) keeps its checkpoint in ``state_dir``, on
        this machine: SQLite's locks and WAL need a local disk.
        """
        if state_dir is None:
            if not isinstance(out_dir, Path):
                raise ValueError(f"a remote OUT ({out_dir}) needs a local state_dir")
            state_dir = out_dir / STATE_DIR
        path = state_dir / state_file_name(snapshot_date, shard)
        _make_state_dir(out_dir, state_dir)
        out_lock = _acquire_lock(out_dir, state_dir / LOCK_NAME, shared=shard is not None)
        locks = [out_lock]
        try:
            if shard is not None:
                locks.append(
                    _acquire_lock(out_dir, state_dir / f"{LOCK_NAME}.{shard.label}", shard=shard)
                )
            conn = _connect(path)
        except BaseException:
            for fd in reversed(locks):
                _release_lock(fd)
            raise
        return cls(path, out_dir, conn, locks)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        for fd in reversed(self._locks):
            _release_lock(fd, clear=True)
        self._locks = []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------- plumbing

    @contextlib.contextmanager
    def _sql(self, doing: str) -> Iterator[sqlite3.Connection]:
        """The connection for one call; sqlite3 errors leave as the project's errors."""
        try:
            yield self._conn
        except sqlite3.Error as exc:
            raise _translate(exc, self.path, doing) from exc

    @contextlib.contextmanager
    def _transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._sql(doing) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    # ---------------------------------------------------------------- meta

    def meta(self, key: str) -> str | None:
        with self._sql("reading meta") as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def input_fingerprint(self) -> str | None:
        return self.meta("input_fingerprint")

    # ---------------------------------------------------------------- input

    def ingest(self, rows: Iterable[InputRow], fingerprint: str) -> IngestReport:
        """Add the input's ids as pending (known ids keep their status) and its rejects, atomically.

        If ``rows`` raises (e.g. ``InputError`` on a ragged row) nothing of this input is kept.
        """
        total = valid = invalid = 0
        with self._transaction("recording the input ids") as conn:
            # Ids are staged in a temp table (file-backed: memory stays flat) and moved into
            # ``ids`` sorted, so the primary key grows by appends instead of random inserts:
            # about twice as fast for a million ids.
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS ingest_stage (user_id TEXT NOT NULL, line INTEGER)"
            )
            conn.execute("DELETE FROM temp.ingest_stage")
            source = iter(rows)
            while chunk := list(islice(source, INGEST_CHUNK)):
                good = [(r.user_id, r.line) for r in chunk if r.user_id is not None]
                bad = [
                    (r.raw, r.line, r.reason or "not a valid user id")
                    for r in chunk
                    if r.user_id is None
                ]
                total += len(chunk)
                valid += len(good)
                invalid += len(bad)
                conn.executemany(
                    "INSERT INTO temp.ingest_stage (user_id, line) VALUES (?, ?)", good
                )
                if bad:
                    conn.executemany(
                        "INSERT OR IGNORE INTO rejects (raw, line, reason) VALUES (?, ?, ?)", bad
                    )
            # A first ingest builds the status index once at the end, and every id it inserts
            # is distinct; a later one must count the input's distinct ids itself.
            first = not conn.execute("SELECT 1 FROM ids LIMIT 1").fetchone()
            if first:
                conn.execute("DROP INDEX ids_status")
            new = conn.execute(
                "INSERT OR IGNORE INTO ids (user_id, line) "
                "SELECT user_id, line FROM temp.ingest_stage ORDER BY user_id, line"
            ).rowcount
            if first:
                conn.execute(_STATUS_INDEX)
                distinct = new
            else:
                # GROUP BY sorts; count(DISTINCT) would build a b-tree and take twice as long.
                distinct = int(
                    conn.execute(
                        "SELECT count(*) FROM (SELECT 1 FROM temp.ingest_stage GROUP BY user_id)"
                    ).fetchone()[0]
                )
            conn.execute("DROP TABLE temp.ingest_stage")
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('input_fingerprint', ?)",
                (fingerprint,),
            )
        return IngestReport(total, valid, invalid, valid - distinct, new)

    def requeue_retryable(self) -> int:
        """Failed ids whose last error was retryable become pending with a fresh attempt count."""
        with self._transaction("requeueing retryable failures") as conn:
            cursor = conn.execute(
                "UPDATE ids SET status = 'pending', attempts = 0, retryable = 0 "
                "WHERE status = 'failed' AND retryable = 1"
            )
        return cursor.rowcount

    # ---------------------------------------------------------------- fetching

    def pending_count(self) -> int:
        return self._count("SELECT count(*) FROM ids WHERE status = 'pending'")

    def retryable_count(self) -> int:
        """Failed ids that ``requeue_retryable`` would give another try."""
        return self._count("SELECT count(*) FROM ids WHERE status = 'failed' AND retryable = 1")

    def fetched_count(self) -> int:
        return self._count("SELECT count(*) FROM ids WHERE status = 'fetched'")

    def _count(self, sql: str) -> int:
        with self._sql("counting ids") as conn:
            return int(conn.execute(sql).fetchone()[0])

    def iter_pending(self, chunk: int = 1000) -> Iterator[PendingId]:
        """Pending ids by user_id, one page per query; no statement stays open across a yield."""
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {chunk}")
        after = ""
        while True:
            with self._sql("reading pending ids") as conn:
                page = conn.execute(
                    "SELECT user_id, attempts FROM ids WHERE status = 'pending' AND user_id > ? "
                    "ORDER BY user_id LIMIT ?",
                    (after, chunk),
                ).fetchall()
            if not page:
                return
            for user_id, attempts in page:
                yield PendingId(user_id, attempts)
            after = page[-1][0]

    def record_success(self, profile: FetchedProfile, attempts: int) -> None:
        """Store the body and mark the id fetched; committed before this returns."""
        fetched_us = to_epoch_us(profile.fetched_at)
        with self._transaction("storing a fetched profile") as conn:
            changed = conn.execute(
                "INSERT INTO ids (user_id, status, attempts, code, message, retryable, "
                "last_attempt_at) VALUES (?, 'fetched', ?, 0, NULL, 0, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET status = 'fetched', "
                "attempts = excluded.attempts, code = 0, message = NULL, retryable = 0, "
                f"last_attempt_at = excluded.last_attempt_at WHERE {_OPEN_STATUSES}",
                (profile.user_id, attempts, fetched_us),
            ).rowcount
            if changed:
                conn.execute(
                    "INSERT OR REPLACE INTO responses (user_id, data, request_id, fetched_at) "
                    "VALUES (?, ?, ?, ?)",
                    (profile.user_id, profile.data_json, profile.request_id, fetched_us),
                )

    def record_retry(self, user_id: str, attempts: int, code: int | None, message: str) -> None:
        """The id stays pending; its last error is kept for failures.csv should it fail later."""
        self._record_attempt(user_id, Status.PENDING, attempts, code, message, retryable=True)

    def record_failure(
        self, user_id: str, attempts: int, code: int | None, message: str, *, retryable: bool
    ) -> None:
        self._record_attempt(user_id, Status.FAILED, attempts, code, message, retryable=retryable)

    def record_wrong_user(
        self, user_id: str, attempts: int, message: str, body: bytes, request_id: str | None
    ) -> None:
        """Fail the id for good (code 0) and keep the other user's answer beside it, for audit:
        ``fetched_batch`` takes only fetched ids, so the body never reaches a table."""
        now = _now_us()
        with self._transaction("recording an answer for another user") as conn:
            changed = conn.execute(
                "INSERT INTO ids (user_id, status, attempts, code, message, retryable, "
                "last_attempt_at) VALUES (?, 'failed', ?, ?, ?, 0, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET status = 'failed', "
                "attempts = excluded.attempts, code = excluded.code, message = excluded.message, "
                f"retryable = 0, last_attempt_at = excluded.last_attempt_at WHERE {_OPEN_STATUSES}",
                (user_id, attempts, CODE_UNAVAILABLE, message[:MAX_MESSAGE_CHARS], now),
            ).rowcount
            if changed:
                conn.execute(
                    "INSERT OR REPLACE INTO responses (user_id, data, request_id, fetched_at) "
                    "VALUES (?, ?, ?, ?)",
                    (user_id, body, request_id, now),
                )

    def wrong_user_count(self) -> int:
        """Failed ids whose answer was another user's profile (their bodies are kept)."""
        return self._count(
            "SELECT count(*) FROM ids JOIN responses r ON r.user_id = ids.user_id "
            "WHERE ids.status = 'failed' AND r.data IS NOT NULL"
        )

    def _record_attempt(
        self,
        user_id: str,
        status: Status,
        attempts: int,
        code: int | None,
        message: str,
        *,
        retryable: bool,
    ) -> None:
        with self._transaction(f"recording a {status} id") as conn:
            conn.execute(
                "INSERT INTO ids (user_id, status, attempts, code, message, retryable, "
                "last_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET status = excluded.status, "
                "attempts = excluded.attempts, code = excluded.code, message = excluded.message, "
                "retryable = excluded.retryable, last_attempt_at = excluded.last_attempt_at "
                f"WHERE {_OPEN_STATUSES}",
                (
                    user_id,
                    str(status),
                    attempts,
                    code,
                    message[:MAX_MESSAGE_CHARS],
                    int(retryable),
                    _now_us(),
                ),
            )

    # ---------------------------------------------------------------- writing Parquet

    def fetched_batch(self, limit: int) -> list[FetchedProfile]:
        """Up to ``limit`` fetched (not yet written) profiles, oldest first."""
        with self._sql("reading fetched profiles") as conn:
            # Pick the ids first, so only the bodies returned are read (not every fetched one).
            rows = conn.execute(
                "SELECT r.user_id, r.data, r.request_id, r.fetched_at FROM ("
                "  SELECT i.user_id FROM ids i JOIN responses f ON f.user_id = i.user_id"
                "  WHERE i.status = 'fetched' ORDER BY f.fetched_at, f.user_id LIMIT ?"
                ") pick JOIN responses r ON r.user_id = pick.user_id "
                "ORDER BY r.fetched_at, r.user_id",
                (limit,),
            ).fetchall()
        return [
            FetchedProfile(user_id, bytes(data), request_id, from_epoch_us(at))
            for user_id, data, request_id, at in rows
        ]

    def mark_written(self, user_ids: Sequence[str], parts: Sequence[Part]) -> None:
        """Record the parts and mark their ids written, dropping the bodies, in one transaction."""
        now = _now_us()
        with self._transaction("recording written parts") as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO parts (path, tbl, rows, created_at) VALUES (?, ?, ?, ?)",
                [(p.path, p.table, p.rows, now) for p in parts],
            )
            keys = [(user_id,) for user_id in user_ids]
            conn.executemany(
                "UPDATE ids SET status = 'written' WHERE user_id = ? AND status = 'fetched'", keys
            )
            conn.executemany("UPDATE responses SET data = NULL WHERE user_id = ?", keys)

    def parts(self, table: str | None = None) -> list[Part]:
        where, args = ("WHERE tbl = ?", (table,)) if table is not None else ("", ())
        with self._sql("reading parts") as conn:
            rows = conn.execute(
                f"SELECT tbl, path, rows FROM parts {where} ORDER BY created_at, path", args
            ).fetchall()
        return [Part(tbl, path, n) for tbl, path, n in rows]

    def replace_parts(self, old: Sequence[Part], new: Sequence[Part]) -> None:
        """The compaction swap: ``old`` leave the snapshot and ``new`` join it atomically."""
        now = _now_us()
        with self._transaction("recording compacted parts") as conn:
            conn.executemany("DELETE FROM parts WHERE path = ?", [(p.path,) for p in old])
            conn.executemany(
                "INSERT OR REPLACE INTO parts (path, tbl, rows, created_at) VALUES (?, ?, ?, ?)",
                [(p.path, p.table, p.rows, now) for p in new],
            )

    # ---------------------------------------------------------------- reporting

    def iter_failures(self) -> Iterator[Failure]:
        """Failed ids and rejected input cells, in input order (unknown lines last)."""
        with self._sql("reading failures") as conn:
            cursor = conn.execute(
                "SELECT * FROM (SELECT user_id, code, message, attempts, last_attempt_at, line "
                "FROM ids WHERE status = 'failed' UNION ALL "
                f"SELECT raw, {CODE_INVALID_INPUT}, reason, 0, NULL, line FROM rejects) "
                "ORDER BY line IS NULL, line, user_id"
            )
        try:
            while True:
                with self._sql("reading failures"):
                    rows = cursor.fetchmany(1000)
                if not rows:
                    return
                for user_id, code, message, attempts, last_at, _line in rows:
                    last = None if last_at is None else from_epoch_us(last_at)
                    yield Failure(user_id, code, message or "", attempts, last)
        finally:
            with contextlib.suppress(sqlite3.Error):
                cursor.close()

    def counts(self) -> dict[str, int]:
        """Ids by status (every status present, zero included) plus ``rejected`` input cells."""
        result = {str(status): 0 for status in Status}
        with self._sql("counting ids") as conn:
            for status, n in conn.execute("SELECT status, count(*) FROM ids GROUP BY status"):
                result[status] = n
            result["rejected"] = int(conn.execute("SELECT count(*) FROM rejects").fetchone()[0])
        return result

    def failure_kinds(self) -> tuple[int, int]:
        """Failed ids as (permanent, transient): transient ones failed after every attempt and
        are tried again by the next run."""
        with self._sql("counting failures") as conn:
            rows = dict(
                conn.execute(
                    "SELECT retryable, count(*) FROM ids WHERE status = 'failed' GROUP BY 1"
                ).fetchall()
            )
        return int(rows.get(0, 0)), int(rows.get(1, 0))

    def failure_codes(self) -> dict[int, int]:
        """Failed ids and rejects by code; a failure recorded without a code counts as -1."""
        with self._sql("counting failures") as conn:
            rows = conn.execute(
                f"SELECT coalesce(code, {CODE_NO_RESPONSE}), count(*) FROM ids "
                "WHERE status = 'failed' GROUP BY 1"
            ).fetchall()
            rejected = int(conn.execute("SELECT count(*) FROM rejects").fetchone()[0])
        result = {int(code): int(n) for code, n in rows}
        if rejected:
            result[CODE_INVALID_INPUT] = result.get(CODE_INVALID_INPUT, 0) + rejected
        return result


# -------------------------------------------------------------------- opening helpers


def _make_state_dir(out_dir: Path | str, state_dir: Path) -> None:
    if isinstance(out_dir, Path) and out_dir.exists() and not out_dir.is_dir():
        raise StateError(f"--out {out_dir} is a file, not a folder; use another --out")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error(exc, state_dir, "creating") from exc


def state_file_name(snapshot_date: dt.date, shard: Shard | None = None) -> str:
    """``dt=YYYY-MM-DD.sqlite``, or ``dt=YYYY-MM-DD.shard-K-of-N.sqlite`` for a shard."""
    label = f".{shard.label}" if shard is not None else ""
    return f"dt={snapshot_date.isoformat()}{label}.sqlite"


def _acquire_lock(
    out_dir: Path | str, lock_path: Path, *, shared: bool = False, shard: Shard | None = None
) -> int:
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _os_error(exc, lock_path, "creating the lock") from exc
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        if shard is not None:
            message = (
                f"another xhs-profiles run is fetching {shard.label} into {out_dir} "
                f"(pid {holder}); wait for it or use another --out"
            )
        elif shared:
            message = (
                f"an unsharded xhs-profiles run is using {out_dir} (pid {holder}); shards wait "
                "for it to end, or use another --out"
            )
        else:
            message = (
                f"another xhs-profiles run is using {out_dir} (pid {holder}); "
                "wait for it or use another --out"
            )
        raise StateLockedError(message) from None
    except OSError as exc:
        os.close(fd)
        raise _os_error(exc, lock_path, "locking") from exc
    if shared:
        return fd  # its holders are many: the pid it names is the exclusive holder's
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        _release_lock(fd)
        raise _os_error(exc, lock_path, "writing") from exc
    return fd


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def _release_lock(fd: int, *, clear: bool = False) -> None:
    """Unlock; ``clear`` (an exclusive holder) first blanks the pid it wrote, so a run that
    later finds the lock held by shards does not name a pid that ended long ago."""
    if clear:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        os.close(fd)


def _connect(path: Path) -> sqlite3.Connection:
    _refuse_foreign_file(path)
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise _translate(exc, path, "opening") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(
            "PRAGMA journal_size_limit = 67108864"
        )  # the WAL shrinks back after a big ingest
        conn.execute("PRAGMA cache_size = -16384")  # 16 MiB: the ids index pages of a big run
        _prepare_schema(conn, path)
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise _translate(exc, path, "opening") from exc
        raise
    return conn


def _refuse_foreign_file(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            head = handle.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _os_error(exc, path, "reading") from exc
    if head and head != _SQLITE_MAGIC:
        raise StateVersionError(
            f"{path}: not an xhs-profiles state (not a SQLite database); "
            "move it away, or use another --out"
        )


def _prepare_schema(conn: sqlite3.Connection, path: Path) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if version > SCHEMA_VERSION:
        raise StateVersionError(
            f"{path}: written by a newer xhs-profiles (state v{version}; this version reads up to "
            f"v{SCHEMA_VERSION}); upgrade, or use another --out"
        )
    if version == 0:
        if not tables:
            _create(conn)
            return
        raise StateVersionError(
            f"{path}: not an xhs-profiles state (unversioned, tables: "
            f"{', '.join(sorted(tables))}); move it away, or use another --out"
        )
    missing = sorted(set(_EXPECTED_TABLES) - tables)
    if version == SCHEMA_VERSION and missing:
        raise StateVersionError(
            f"{path}: not an xhs-profiles state (no {', '.join(missing)} table); "
            "move it away, or use another --out"
        )
    if version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for migrate in MIGRATIONS[version - 1 :]:
                migrate(conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('migrated_by', ?)",
                (TOOL_VERSION,),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _create(conn: sqlite3.Connection) -> None:
    """Schema, version and meta in one transaction: a kill leaves an empty file, never half."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA_V1:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [
                ("tool_version", TOOL_VERSION),
                ("created_at", utcnow().isoformat(timespec="seconds")),
            ],
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _translate(exc: sqlite3.Error, path: Path, doing: str) -> StateError | StorageError:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_FULL:
        return StorageError(
            f"disk full while {doing} in the state {path}: free space and rerun; "
            "progress already stored is kept"
        )
    if code == sqlite3.SQLITE_NOTADB:
        return StateVersionError(
            f"{path}: not an xhs-profiles state (not a SQLite database); "
            "move it away, or use another --out"
        )
    if code == sqlite3.SQLITE_CORRUPT:
        return StateError(
            f"{path} is damaged ({exc}); move it away and rerun (its ids are fetched again), "
            "or use another --out"
        )
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_CANTOPEN):
        return StorageError(
            f"cannot write the state {path} ({exc}): make --out writable, or use another --out"
        )
    return StorageError(
        f"state {path}: {doing} failed ({exc}); check the disk and rerun, "
        "progress already stored is kept"
    )


def _os_error(exc: OSError, path: Path, doing: str) -> StateError | StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"disk full while {doing} {path}: free space and rerun")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST):
        # Nothing was done yet: a bad --out is a usage error (exit 2), not a storage failure.
        return StateError(
            f"cannot use --out: {doing} {path} failed ({exc.strerror}); "
            "make it a writable folder, or use another --out"
        )
    return StorageError(f"{doing} {path} failed ({exc.strerror or exc}); check the disk and rerun")
