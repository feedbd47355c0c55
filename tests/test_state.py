"""pipeline.state: the SQLite checkpoint keeps every paid response and moves ids only forward."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import state as state_module
from pipeline.config import TOOL_VERSION
from pipeline.errors import (
    InputError,
    StateError,
    StateLockedError,
    StateVersionError,
    StorageError,
)
from pipeline.records import Failure, FetchedProfile, InputRow, Part
from pipeline.state import IngestReport, PendingId, State, Status

DAY = dt.date(2026, 1, 2)
REPO = Path(__file__).resolve().parent.parent
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def uid(n: int) -> str:
    return f"{n:024x}"


def rows_for(*ids: str, start_line: int = 2) -> list[InputRow]:
    return [InputRow(start_line + i, u, u) for i, u in enumerate(ids)]


def profile(user_id: str, at: dt.datetime = T0, body: bytes = b'{"userid":"x"}') -> FetchedProfile:
    return FetchedProfile(user_id, body, f"req-{user_id[-2:]}", at)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.fixture
def st(out: Path) -> Iterator[State]:
    with State.open(out, DAY) as opened:
        yield opened


def raw_sql(st: State, sql: str, *args: object) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(st.path)
    try:
        return connection.execute(sql, args).fetchall()
    finally:
        connection.close()


# ------------------------------------------------------------------ opening, versions, lock


def test_open_creates_a_versioned_wal_state_with_meta(out: Path) -> None:
    with State.open(out, DAY) as st:
        assert st.path == out / "_state" / "dt=2026-01-02.sqlite"
        assert st.meta("tool_version") == TOOL_VERSION
        created_at = st.meta("created_at")
        assert created_at is not None
        assert st.input_fingerprint() is None
    connection = sqlite3.connect(out / "_state" / "dt=2026-01-02.sqlite")
    assert connection.execute("PRAGMA user_version").fetchone()[0] == 1
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = {r[0] for r in connection.execute("SELECT name FROM sqlite_master")}
    assert {"ids", "responses", "rejects", "parts", "meta", "ids_status"} <= names
    connection.close()
    with State.open(out, DAY) as again:
        assert again.meta("created_at") == created_at  # reopened, not created again


def test_a_newer_state_version_is_refused_not_restarted(out: Path) -> None:
    State.open(out, DAY).close()
    path = out / "_state" / "dt=2026-01-02.sqlite"
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA user_version = 99")
    connection.close()
    with pytest.raises(StateVersionError) as caught:
        State.open(out, DAY)
    assert str(caught.value) == (
        f"{path}: written by a newer xhs-profiles (state v99; this version reads up to v1); "
        "upgrade, or use another --out"
    )
    # the refusal released the lock and left the file alone
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA user_version").fetchone()[0] == 99
    connection.close()


def test_a_garbage_state_file_is_refused(out: Path) -> None:
    path = out / "_state" / "dt=2026-01-02.sqlite"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database at all, just some text" * 10)
    with pytest.raises(StateVersionError, match="not a SQLite database"):
        State.open(out, DAY)
    assert path.read_bytes().startswith(b"this is not")


def test_a_foreign_sqlite_database_is_refused(out: Path) -> None:
    path = out / "_state" / "dt=2026-01-02.sqlite"
    path.parent.mkdir(parents=True)
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE other (x)")
    connection.close()
    with pytest.raises(StateVersionError, match=r"not an xhs-profiles state \(unversioned"):
        State.open(out, DAY)


def test_a_state_missing_its_tables_is_refused(out: Path) -> None:
    State.open(out, DAY).close()
    path = out / "_state" / "dt=2026-01-02.sqlite"
    connection = sqlite3.connect(path)
    connection.execute("DROP TABLE parts")
    connection.close()
    with pytest.raises(StateVersionError, match=r"not an xhs-profiles state \(no parts table\)"):
        State.open(out, DAY)


def test_an_empty_state_file_left_by_a_kill_at_creation_is_initialised(out: Path) -> None:
    path = out / "_state" / "dt=2026-01-02.sqlite"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    with State.open(out, DAY) as st:
        assert st.counts()["pending"] == 0


def test_older_states_are_migrated_in_one_transaction(
    out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    State.open(out, DAY).close()

    def add_column(connection: sqlite3.Connection) -> None:
        connection.execute("ALTER TABLE ids ADD COLUMN not_before INTEGER")

    def broken(connection: sqlite3.Connection) -> None:
        connection.execute("ALTER TABLE ids ADD COLUMN half_done INTEGER")
        raise sqlite3.OperationalError("migration failed")

    monkeypatch.setattr(state_module, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(state_module, "MIGRATIONS", [add_column, broken])
    with pytest.raises(StorageError, match="migration failed"):
        State.open(out, DAY)
    path = out / "_state" / "dt=2026-01-02.sqlite"
    connection = sqlite3.connect(path)
    columns = [r[1] for r in connection.execute("PRAGMA table_info(ids)")]
    assert "not_before" not in columns and "half_done" not in columns  # rolled back whole
    assert connection.execute("PRAGMA user_version").fetchone()[0] == 1
    connection.close()

    monkeypatch.setattr(state_module, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(state_module, "MIGRATIONS", [add_column])
    with State.open(out, DAY) as st:
        assert st.meta("migrated_by") == TOOL_VERSION
    connection = sqlite3.connect(path)
    assert "not_before" in [r[1] for r in connection.execute("PRAGMA table_info(ids)")]
    assert connection.execute("PRAGMA user_version").fetchone()[0] == 2
    connection.close()


def test_a_second_open_of_the_same_out_is_refused_whatever_the_date(out: Path) -> None:
    with State.open(out, DAY):
        message = (
            f"another xhs-profiles run is using {out} (pid {os.getpid()}); "
            "wait for it or use another --out"
        )
        with pytest.raises(StateLockedError) as same_day:
            State.open(out, DAY)
        assert str(same_day.value) == message
        with pytest.raises(StateLockedError) as other_day:
            State.open(out, DAY + dt.timedelta(days=1))
        assert str(other_day.value) == message
    State.open(out, DAY).close()  # released on close


@pytest.mark.slow
def test_the_lock_names_the_other_process_and_dies_with_it(out: Path) -> None:
    script = textwrap.dedent(
        f"""
        import datetime, sys, time
        from pathlib import Path
        from pipeline.state import State
        st = State.open(Path({str(out)!r}), datetime.date(2026, 1, 2))
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    # The with block closes the child's stdout pipe (no ResourceWarning) and reaps the child.
    with subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            with pytest.raises(StateLockedError) as caught:
                State.open(out, DAY)
            assert f"(pid {child.pid})" in str(caught.value)
        finally:
            child.kill()
            child.wait()
    State.open(out, DAY).close()  # the kernel dropped the dead holder's lock


def test_an_out_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("x")
    with pytest.raises(StateError, match="is a file, not a folder"):
        State.open(target, DAY)


# ------------------------------------------------------------------ ingest


def test_ingest_dedupes_records_rejects_and_the_fingerprint(st: State) -> None:
    rows = [
        InputRow(2, uid(3), uid(3)),
        InputRow(3, "bad-id", None, "not 24 hex characters"),
        InputRow(4, uid(1), uid(1)),
        InputRow(5, uid(3), uid(3)),  # duplicate
        InputRow(6, "=cmd", None, "not 24 hex characters"),
        InputRow(7, "bad-id", None, "not 24 hex characters"),  # same bad cell: one reject
    ]
    report = st.ingest(iter(rows), "fp-1")
    assert report == IngestReport(rows=6, valid=3, invalid=3, duplicates=1, new=2)
    assert st.input_fingerprint() == "fp-1"
    assert st.counts() == {"pending": 2, "fetched": 0, "written": 0, "failed": 0, "rejected": 2}
    assert list(st.iter_pending()) == [PendingId(uid(1), 0), PendingId(uid(3), 0)]
    assert raw_sql(st, "SELECT user_id, line FROM ids ORDER BY user_id") == [
        (uid(1), 4),
        (uid(3), 2),  # the first occurrence's line
    ]


def test_reingest_keeps_known_ids_status_and_counts_only_new_ones(st: State) -> None:
    st.ingest(rows_for(uid(1), uid(2)), "fp-1")
    st.record_success(profile(uid(1)), 1)
    report = st.ingest(rows_for(uid(1), uid(2), uid(5), uid(5)), "fp-2")
    assert report == IngestReport(rows=4, valid=4, invalid=0, duplicates=1, new=1)
    assert st.counts()["fetched"] == 1
    assert [p.user_id for p in st.iter_pending()] == [uid(2), uid(5)]
    assert st.input_fingerprint() == "fp-2"
    index = raw_sql(st, "SELECT name FROM sqlite_master WHERE name = 'ids_status'")
    assert index == [("ids_status",)]


def test_ingest_rolls_back_everything_when_the_input_fails_midway(
    st: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_module, "INGEST_CHUNK", 3)

    def ragged() -> Iterator[InputRow]:
        yield from rows_for(*(uid(n) for n in range(7)))
        yield InputRow(20, "x", None, "not 24 hex characters")
        raise InputError("line 21 has 3 fields, expected 2")

    with pytest.raises(InputError, match="line 21"):
        st.ingest(ragged(), "fp-bad")
    assert st.counts() == {"pending": 0, "fetched": 0, "written": 0, "failed": 0, "rejected": 0}
    assert st.input_fingerprint() is None
    assert raw_sql(st, "SELECT name FROM sqlite_master WHERE name = 'ids_status'") != []
    # the state is still usable afterwards
    assert st.ingest(rows_for(uid(1)), "fp-good").new == 1


def test_ingest_streams_in_chunks(st: State, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "INGEST_CHUNK", 4)
    ids = [uid(n) for n in range(11)]
    report = st.ingest((r for r in rows_for(*ids, *ids[:3])), "fp")
    assert report == IngestReport(rows=14, valid=14, invalid=0, duplicates=3, new=11)
    assert st.pending_count() == 11


# ------------------------------------------------------------------ pending and records


def test_iter_pending_pages_by_user_id_and_sees_changes_made_while_iterating(st: State) -> None:
    st.ingest(rows_for(*(uid(n) for n in (5, 1, 9, 3, 7))), "fp")
    seen = []
    for pending in st.iter_pending(chunk=2):
        seen.append(pending.user_id)
        if pending.user_id == uid(1):
            st.record_success(profile(uid(7)), 1)  # done elsewhere before we reach it
            st.record_retry(uid(1), 1, 500, "internal error")  # stays pending
            st.ingest(rows_for(uid(8), uid(0)), "fp")  # 8 lies ahead, 0 behind the cursor
    assert seen == [uid(1), uid(3), uid(5), uid(8), uid(9)]
    assert [p for p in st.iter_pending() if p.user_id == uid(1)] == [PendingId(uid(1), 1)]


def test_iter_pending_refuses_a_zero_chunk(st: State) -> None:
    with pytest.raises(ValueError, match="chunk"):
        next(st.iter_pending(chunk=0))


def test_record_transitions_and_what_they_store(st: State, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "_now_us", lambda: 1_700_000_000_123_456)
    st.ingest(rows_for(uid(1), uid(2), uid(3)), "fp")
    st.record_retry(uid(1), 1, 500, "internal error")
    assert raw_sql(st, "SELECT * FROM ids WHERE user_id = ?", uid(1)) == [
        (uid(1), 2, "pending", 1, 500, "internal error", 1, 1_700_000_000_123_456)
    ]
    st.record_success(profile(uid(1), body=b'{"a":1}'), 2)
    assert raw_sql(
        st, "SELECT status, attempts, code, message FROM ids WHERE user_id = ?", uid(1)
    ) == [("fetched", 2, 0, None)]
    assert st.fetched_batch(10) == [profile(uid(1), body=b'{"a":1}')]
    st.record_failure(uid(2), 1, 404, "no such user", retryable=False)
    st.record_failure(uid(3), 5, None, "timeout after 60 s", retryable=True)
    assert st.counts() == {"pending": 0, "fetched": 1, "written": 0, "failed": 2, "rejected": 0}
    assert st.pending_count() == 0 and st.fetched_count() == 1


def test_a_late_record_never_moves_a_fetched_or_written_id_back(st: State) -> None:
    st.ingest(rows_for(uid(1), uid(2)), "fp")
    st.record_success(profile(uid(1)), 1)
    st.record_failure(uid(1), 2, 500, "late failure", retryable=True)
    st.record_retry(uid(1), 2, 500, "late retry")
    assert raw_sql(st, "SELECT status, code FROM ids WHERE user_id = ?", uid(1)) == [("fetched", 0)]
    st.record_success(profile(uid(2)), 1)
    st.mark_written([uid(2)], [Part("profiles", "profiles/dt=2026-01-02/p1.parquet", 1)])
    st.record_success(profile(uid(2), body=b'{"again":1}'), 1)  # a second paid answer
    assert raw_sql(st, "SELECT status FROM ids WHERE user_id = ?", uid(2)) == [("written",)]
    assert [p.user_id for p in st.fetched_batch(10)] == [uid(1)]  # never flushed twice


def test_record_success_for_an_unknown_id_still_keeps_the_paid_body(st: State) -> None:
    st.record_success(profile(uid(42)), 1)
    assert st.fetched_batch(10) == [profile(uid(42))]


def test_requeue_retryable_only_reopens_retryable_failures(st: State) -> None:
    st.ingest(rows_for(uid(1), uid(2), uid(3)), "fp")
    st.record_failure(uid(1), 5, 500, "internal error", retryable=True)
    st.record_failure(uid(2), 1, 404, "no such user", retryable=False)
    st.record_failure(uid(3), 5, None, "connection reset", retryable=True)
    assert st.requeue_retryable() == 2
    assert list(st.iter_pending()) == [PendingId(uid(1), 0), PendingId(uid(3), 0)]
    assert st.counts()["failed"] == 1
    assert st.requeue_retryable() == 0


@pytest.mark.slow
def test_a_success_survives_sigkill_right_after_record_success(out: Path) -> None:
    script = textwrap.dedent(
        f"""
        import datetime, os, signal
        from pathlib import Path
        from pipeline.records import FetchedProfile, InputRow
        from pipeline.state import State
        st = State.open(Path({str(out)!r}), datetime.date(2026, 1, 2))
        st.ingest([InputRow(2, "{uid(1)}", "{uid(1)}")], "fp")
        at = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC)
        st.record_success(FetchedProfile("{uid(1)}", b'{{"userid":"x"}}', "req-01", at), 1)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, check=False)
    assert done.returncode == -signal.SIGKILL
    with State.open(out, DAY) as st:
        assert st.counts()["fetched"] == 1
        assert st.fetched_batch(5) == [profile(uid(1))]


# ------------------------------------------------------------------ parts and bodies


def test_fetched_batch_is_oldest_first_and_limited(st: State) -> None:
    st.ingest(rows_for(uid(1), uid(2), uid(3)), "fp")
    for n, seconds in ((1, 30), (2, 10), (3, 20)):
        st.record_success(profile(uid(n), at=T0 + dt.timedelta(seconds=seconds)), 1)
    assert [p.user_id for p in st.fetched_batch(2)] == [uid(2), uid(3)]


def test_mark_written_records_parts_and_drops_the_bodies(st: State) -> None:
    st.ingest(rows_for(uid(1), uid(2), uid(3)), "fp")
    for n in (1, 2, 3):
        st.record_success(profile(uid(n)), 1)
    parts = [
        Part("profiles", "profiles/dt=2026-01-02/part-a.parquet", 2),
        Part("profile_tags", "profile_tags/dt=2026-01-02/part-a.parquet", 5),
    ]
    st.mark_written([uid(1), uid(2)], parts)
    assert st.counts() == {"pending": 0, "fetched": 1, "written": 2, "failed": 0, "rejected": 0}
    assert raw_sql(st, "SELECT user_id, data IS NULL FROM responses ORDER BY user_id") == [
        (uid(1), 1),
        (uid(2), 1),
        (uid(3), 0),
    ]
    assert [p.user_id for p in st.fetched_batch(10)] == [uid(3)]
    assert st.parts() == [parts[1], parts[0]]  # by time recorded, then path
    assert st.parts("profiles") == [parts[0]]


def test_replace_parts_swaps_in_one_step(st: State) -> None:
    old = [Part("profiles", f"profiles/dt=2026-01-02/p{n}.parquet", 10) for n in range(3)]
    st.mark_written([], old)
    new = Part("profiles", "profiles/dt=2026-01-02/big.parquet", 30)
    st.replace_parts(old[:2], [new])
    assert sorted(st.parts(), key=lambda p: p.path) == [new, old[2]]


# ------------------------------------------------------------------ failures and counts


def test_iter_failures_lists_failed_ids_and_rejects_in_input_order(
    st: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_module, "_now_us", lambda: 1_700_000_000_000_000)
    st.ingest(
        [
            InputRow(2, uid(9), uid(9)),
            InputRow(3, "=1+1", None, "not 24 hex characters"),
            InputRow(4, uid(1), uid(1)),
            InputRow(5, uid(2), uid(2)),
        ],
        "fp",
    )
    st.record_failure(uid(1), 5, 500, "internal error", retryable=True)
    st.record_failure(uid(9), 1, 404, "no such user", retryable=False)
    st.record_failure(uid(77), 1, None, "transport", retryable=False)  # no input line
    at = dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)
    assert list(st.iter_failures()) == [
        Failure(uid(9), 404, "no such user", 1, at),
        Failure("=1+1", 400, "not 24 hex characters", 0, None),
        Failure(uid(1), 500, "internal error", 5, at),
        Failure(uid(77), None, "transport", 1, at),
    ]
    assert st.failure_codes() == {404: 1, 400: 1, 500: 1, -1: 1}
    assert st.counts() == {"pending": 1, "fetched": 0, "written": 0, "failed": 3, "rejected": 1}


def test_failure_codes_adds_rejects_to_api_400s(st: State) -> None:
    st.ingest([InputRow(2, uid(1), uid(1)), InputRow(3, "x", None, "bad")], "fp")
    st.record_failure(uid(1), 1, 400, "invalid parameters", retryable=False)
    assert st.failure_codes() == {400: 2}


def test_long_messages_are_capped(st: State) -> None:
    st.record_failure(uid(1), 1, 500, "x" * 10_000, retryable=True)
    (failure,) = st.iter_failures()
    assert len(failure.message) == state_module.MAX_MESSAGE_CHARS


def test_status_values_are_the_stored_strings() -> None:
    assert [str(s) for s in Status] == ["pending", "fetched", "written", "failed"]


# ------------------------------------------------------------------ storage errors


def test_a_full_disk_is_a_storage_error_and_loses_nothing_already_stored(st: State) -> None:
    st.ingest(rows_for(uid(1), uid(2)), "fp")
    st.record_success(profile(uid(1)), 1)
    pages = raw_sql(st, "PRAGMA page_count")[0][0]
    st._conn.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: SQLITE_FULL
    with pytest.raises(StorageError) as caught:
        st.record_success(profile(uid(2), body=os.urandom(64 * 1024)), 1)
    assert str(caught.value) == (
        f"disk full while storing a fetched profile in the state {st.path}: free space and "
        "rerun; progress already stored is kept"
    )
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    assert st.counts()["fetched"] == 1 and st.pending_count() == 1


def test_a_read_only_out_is_refused_at_open(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(StateError, match="cannot use --out"):
            State.open(out, DAY)
    finally:
        out.chmod(0o700)
