"""pipeline.sink: atomic Parquet parts all readers agree on, compaction, failures.csv, manifest."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import re
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import sink
from pipeline.config import TOOL_VERSION
from pipeline.errors import StorageError
from pipeline.records import Failure, Part
from pipeline.schema import PROFILE_INTERACTIONS, PROFILE_TAGS, PROFILES, TABLES

DAY = dt.date(2026, 1, 2)
AT = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def uid(n: int) -> str:
    return f"{n:024x}"


def profiles_frame(ids: list[str], *, nulls: bool = False) -> pl.DataFrame:
    """A frame of the profiles schema; with ``nulls`` every column but user_id is null."""
    columns: dict[str, list[Any]] = {c.name: [None] * len(ids) for c in PROFILES.columns}
    columns["user_id"] = ids
    if not nulls:
        columns["nickname"] = [f"名字 {i}" for i in ids]
        columns["fans"] = list(range(len(ids)))
        columns["red_official_verified"] = [True] * len(ids)
        columns["profession_tags"] = [["家居博主", "母婴博主"]] * len(ids)
        columns["fetched_at"] = [AT] * len(ids)
        columns["raw_json"] = [f'{{"userid":"{i}"}}' for i in ids]
    return pl.DataFrame(columns, schema=PROFILES.schema)


def tags_frame(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [uid(1)] * n,
            "position": list(range(n)),
            "tag_type": ["profession"] * n,
            "name": ["家居博主"] * n,
            "icon": [None] * n,
        },
        schema=PROFILE_TAGS.schema,
    )


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------ write_part


def test_write_part_lands_whole_via_tmp_and_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    partition = sink.partition_dir(tmp_path, "profiles", DAY)
    seen: list[tuple[str, list[str], int]] = []
    real_replace = os.replace

    def watching_replace(src: Any, dst: Any) -> None:
        # at the rename, the partition holds nothing yet and the temp file is complete
        listing = sorted(p.name for p in partition.iterdir()) if partition.exists() else []
        seen.append((Path(src).parent.name, listing, pq.read_metadata(src).num_rows))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watching_replace)
    part = sink.write_part(tmp_path, PROFILES, DAY, profiles_frame([uid(1), uid(2)]))
    assert seen == [("_tmp", [], 2)]
    assert part.table == "profiles" and part.rows == 2
    assert re.fullmatch(r"profiles/dt=2026-01-02/part-[0-9a-f]{8}-\d{5}\.parquet", part.path)
    assert files_under(tmp_path) == [part.path]
    assert pl.read_parquet(tmp_path / part.path).equals(profiles_frame([uid(1), uid(2)]))


def test_write_part_names_are_unique_and_ordered(tmp_path: Path) -> None:
    first = sink.write_part(tmp_path, PROFILE_TAGS, DAY, tags_frame(1))
    second = sink.write_part(tmp_path, PROFILE_TAGS, DAY, tags_frame(1))
    assert first.path != second.path and first.path < second.path


def test_write_part_refuses_a_frame_off_the_schema(tmp_path: Path) -> None:
    frame = profiles_frame([uid(1)]).with_columns(pl.col("gender").cast(pl.Int32)).drop("red_id")
    with pytest.raises(ValueError) as caught:
        sink.write_part(tmp_path, PROFILES, DAY, frame)
    assert str(caught.value) == (
        "frame does not match the profiles schema: missing red_id; gender is Int32, not Int64"
    )
    assert files_under(tmp_path) == []


def test_parts_read_the_same_in_polars_duckdb_and_pyarrow(tmp_path: Path) -> None:
    sink.write_part(tmp_path, PROFILES, DAY, profiles_frame([uid(1), uid(2)]))
    sink.write_part(tmp_path, PROFILES, DAY, profiles_frame([uid(3)], nulls=True))
    sink.write_part(tmp_path, PROFILES, DAY + dt.timedelta(days=1), profiles_frame([uid(4)]))

    scanned = pl.scan_parquet(tmp_path / "profiles", hive_partitioning=True)
    assert scanned.collect_schema() == pl.Schema({**PROFILES.schema, "dt": pl.Date()})
    frame = scanned.sort("user_id").collect()
    assert frame["user_id"].to_list() == [uid(1), uid(2), uid(3), uid(4)]
    assert frame["profession_tags"].to_list()[2:] == [None, ["家居博主", "母婴博主"]]
    assert frame["dt"].to_list() == [DAY, DAY, DAY, DAY + dt.timedelta(days=1)]

    glob = (tmp_path / "profiles" / "*" / "*.parquet").as_posix()
    con = duckdb.connect()
    query = f"SELECT * FROM read_parquet('{glob}', hive_partitioning=true)"
    types = {name: kind for name, kind, *_ in con.execute(f"DESCRIBE {query}").fetchall()}
    assert types == {
        **{c.name: _duckdb_type(c.dtype) for c in PROFILES.columns},
        "dt": "DATE",
    }
    row = con.execute(
        "SELECT nickname, profession_tags, epoch_us(fetched_at), fans "
        f"FROM read_parquet('{glob}') WHERE user_id = ?",
        [uid(2)],
    ).fetchall()
    assert row == [(f"名字 {uid(2)}", ["家居博主", "母婴博主"], _epoch_us(AT), 1)]

    dataset = pq.ParquetDataset(tmp_path / "profiles")
    assert dataset.read().num_rows == 4
    for path in (tmp_path / "profiles").rglob("*.parquet"):
        assert pq.read_schema(path) == sink.arrow_schema(PROFILES)


def _duckdb_type(dtype: pl.DataType) -> str:
    mapping = {
        pl.String(): "VARCHAR",
        pl.Int64(): "BIGINT",
        pl.Int32(): "INTEGER",
        pl.Boolean(): "BOOLEAN",
        pl.List(pl.String()): "VARCHAR[]",
        pl.Datetime("us", "UTC"): "TIMESTAMP WITH TIME ZONE",
    }
    return mapping[dtype]


def _epoch_us(moment: dt.datetime) -> int:
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def test_an_all_null_batch_keeps_every_column_type(tmp_path: Path) -> None:
    for table in TABLES:
        empty = pl.DataFrame({c.name: [None] for c in table.columns}, schema=table.schema)
        part = sink.write_part(tmp_path, table, DAY, empty)
        file = pq.ParquetFile(tmp_path / part.path)
        assert pl.read_parquet(tmp_path / part.path).schema == table.schema
        assert not any(pa.types.is_null(field.type) for field in file.schema_arrow)
        logical = {
            file.schema.column(i).name: str(file.schema.column(i).logical_type)
            for i in range(len(file.schema))
        }
        if table is PROFILES:
            assert logical["user_id"] == "String"
            assert logical["fetched_at"].startswith(
                "Timestamp(isAdjustedToUTC=true, timeUnit=microseconds"
            )
            assert file.metadata.row_group(0).column(0).compression == "ZSTD"
            assert file.metadata.row_group(0).column(0).statistics is not None


def test_schema_arrow_types_are_large_strings_and_utc_micros() -> None:
    schema = sink.arrow_schema(PROFILES)
    assert schema.field("user_id").type == pa.large_string()
    assert schema.field("fetched_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("profession_tags").type.value_type == pa.large_string()
    assert sink.arrow_schema(PROFILE_INTERACTIONS).field("count").type == pa.int64()


# ------------------------------------------------------------------ orphans and compaction


def test_remove_orphans_deletes_unrecorded_parts_and_tmp_only(tmp_path: Path) -> None:
    kept = sink.write_part(tmp_path, PROFILES, DAY, profiles_frame([uid(1)]))
    orphan = sink.write_part(tmp_path, PROFILES, DAY, profiles_frame([uid(2)]))
    tag_orphan = sink.write_part(tmp_path, PROFILE_TAGS, DAY, tags_frame(2))
    other_day = sink.write_part(tmp_path, PROFILES, DAY + dt.timedelta(days=1), profiles_frame([]))
    (tmp_path / "_tmp").mkdir(exist_ok=True)
    (tmp_path / "_tmp" / "part-x.parquet.1234.tmp").write_bytes(b"half")
    (sink.partition_dir(tmp_path, "profiles", DAY) / "_SUCCESS").write_bytes(b"")

    removed = sink.remove_orphans(tmp_path, DAY, {kept.path})
    assert removed == [orphan.path, tag_orphan.path, "_tmp/part-x.parquet.1234.tmp"]
    assert files_under(tmp_path) == sorted(
        [kept.path, other_day.path, "profiles/dt=2026-01-02/_SUCCESS"]
    )
    assert sink.remove_orphans(tmp_path, DAY, {kept.path}) == []


def p(rows: int, name: str, table: str = "profiles") -> Part:
    return Part(table, f"{table}/dt=2026-01-02/{name}.parquet", rows)


def test_plan_compaction_groups_small_parts_in_order_up_to_the_target() -> None:
    parts = [p(300, "a"), p(600, "big"), p(400, "b"), p(200, "c"), p(100, "d"), p(499, "e")]
    assert sink.plan_compaction(parts, 1000) == [
        [p(300, "a"), p(400, "b"), p(200, "c"), p(100, "d")],  # 1000: the target is allowed
    ]  # e is left alone: grouping a single part gains nothing
    assert sink.plan_compaction([*parts, p(10, "f")], 1000)[-1] == [p(499, "e"), p(10, "f")]


def test_plan_compaction_leaves_large_and_lonely_parts_and_never_mixes_tables() -> None:
    assert sink.plan_compaction([], 1000) == []
    assert sink.plan_compaction([p(500, "a"), p(500, "b")], 1000) == []  # half the target is large
    assert sink.plan_compaction([p(10, "a")], 1000) == []
    mixed = [p(10, "a"), p(10, "x", "profile_tags"), p(10, "b"), p(10, "y", "profile_tags")]
    assert sink.plan_compaction(mixed, 1000) == [
        [p(10, "a"), p(10, "b")],
        [p(10, "x", "profile_tags"), p(10, "y", "profile_tags")],
    ]
    with pytest.raises(ValueError, match="target_rows"):
        sink.plan_compaction(mixed, 0)


def test_compact_copies_every_row_with_the_same_schema(tmp_path: Path) -> None:
    frames = [profiles_frame([uid(1), uid(2)]), profiles_frame([uid(3)], nulls=True)]
    frames.append(profiles_frame([uid(4), uid(5), uid(6)]))
    group = [sink.write_part(tmp_path, PROFILES, DAY, f) for f in frames]
    merged = sink.compact(tmp_path, PROFILES, DAY, group)
    assert (
        merged.rows == 6
        and merged.table == "profiles"
        and merged.path not in {g.path for g in group}
    )
    file = pq.ParquetFile(tmp_path / merged.path)
    assert file.metadata.num_row_groups == 3
    assert file.schema_arrow == pq.read_schema(tmp_path / group[0].path)
    assert pl.read_parquet(tmp_path / merged.path).equals(pl.concat(frames))
    # sources stay until the caller has recorded the swap
    assert all((tmp_path / g.path).exists() for g in group)
    sink.delete_parts(tmp_path, group)
    assert files_under(tmp_path) == [merged.path]


def _dictionary_columns(path: Path) -> set[str]:
    meta = pq.ParquetFile(path).metadata
    return {
        meta.row_group(g).column(c).path_in_schema
        for g in range(meta.num_row_groups)
        for c in range(meta.num_columns)
        if "RLE_DICTIONARY" in meta.row_group(g).column(c).encodings
    }


def test_columns_unique_per_row_are_written_without_a_dictionary(tmp_path: Path) -> None:
    """Parts and compacted files alike: raw_json, ids, names and links are plain; the rest
    (profession_tags' values included) keep their dictionary pages."""
    ids = [uid(1), uid(2), uid(3)]
    group = [sink.write_part(tmp_path, PROFILES, DAY, profiles_frame(ids)) for _ in range(2)]
    merged = sink.compact(tmp_path, PROFILES, DAY, group)
    plain = {"user_id", "red_id", "nickname", "description", "avatar_url", "share_link"}
    plain |= {"request_id", "raw_json"}
    expected = {
        "profession_tags.list.element" if c.name == "profession_tags" else c.name
        for c in PROFILES.columns
        if c.name not in plain and c.dtype != pl.Boolean  # Parquet has no bool dictionaries
    }
    for part in (*group, merged):
        assert _dictionary_columns(tmp_path / part.path) == expected
    tags = sink.write_part(tmp_path, PROFILE_TAGS, DAY, tags_frame(3))
    assert _dictionary_columns(tmp_path / tags.path) == set(PROFILE_TAGS.column_names)


def test_compact_refuses_parts_of_another_table(tmp_path: Path) -> None:
    tags = sink.write_part(tmp_path, PROFILE_TAGS, DAY, tags_frame(1))
    with pytest.raises(ValueError, match="compact needs parts of profiles"):
        sink.compact(tmp_path, PROFILES, DAY, [tags])


def test_compact_of_a_missing_part_is_a_storage_error_and_leaves_no_file(tmp_path: Path) -> None:
    part = sink.write_part(tmp_path, PROFILE_TAGS, DAY, tags_frame(1))
    ghost = p(3, "gone", "profile_tags")
    with pytest.raises(StorageError, match=r"while reading .*gone\.parquet"):
        sink.compact(tmp_path, PROFILE_TAGS, DAY, [part, ghost])
    assert files_under(tmp_path) == [part.path]


# ------------------------------------------------------------------ failures.csv


def test_failures_csv_exact_bytes_with_the_formula_guard(tmp_path: Path) -> None:
    failures = [
        Failure(uid(1), 500, "internal error", 5, AT),
        Failure('=HYPERLINK("http://x")', 400, "not 24 hex characters", 0, None),
        Failure("+1", 400, "-bad, really", 0, None),
        Failure("@SUM(A1)", 400, "\tstarts with a tab", 0, None),
        Failure("\rcr", -1, "timeout after 60 s", 3, dt.datetime(2026, 1, 2, 0, 0)),
        Failure(uid(2), None, '=1+1 "quoted"\nsecond line', 1, AT),
    ]
    path, rows = sink.write_failures(tmp_path, DAY, failures)
    assert path == tmp_path / "failures" / "dt=2026-01-02" / "failures.csv"
    assert rows == 6
    assert (
        path.read_bytes()
        == (
            "user_id,code,message,attempts,last_attempt_at\n"
            f"{uid(1)},500,internal error,5,2026-01-02T03:04:05.678Z\n"
            '"\'=HYPERLINK(""http://x"")",400,not 24 hex characters,0,\n'
            "'+1,400,\"'-bad, really\",0,\n"
            "'@SUM(A1),400,'\tstarts with a tab,0,\n"
            '"\'\rcr",-1,timeout after 60 s,3,2026-01-02T00:00:00.000Z\n'
            f'{uid(2)},,"\'=1+1 ""quoted""\nsecond line",1,2026-01-02T03:04:05.678Z\n'
        ).encode()
    )
    assert files_under(tmp_path) == ["failures/dt=2026-01-02/failures.csv"]


def test_failures_csv_is_header_only_without_failures_and_replaces_the_old_one(
    tmp_path: Path,
) -> None:
    sink.write_failures(tmp_path, DAY, [Failure(uid(1), 404, "gone", 1, AT)])
    path, rows = sink.write_failures(tmp_path, DAY, iter([]))
    assert rows == 0
    assert path.read_bytes() == b"user_id,code,message,attempts,last_attempt_at\n"


def test_failures_csv_reads_back_as_input_with_polars(tmp_path: Path) -> None:
    path, _ = sink.write_failures(tmp_path, DAY, [Failure(uid(1), 500, "x", 5, AT)])
    frame = pl.read_csv(path, schema_overrides={"user_id": pl.String})
    assert frame["user_id"].to_list() == [uid(1)]


# ------------------------------------------------------------------ manifest, markers, runs


def test_manifest_lists_the_snapshot_then_success_markers_appear(tmp_path: Path) -> None:
    parts = [
        Part("profiles", "profiles/dt=2026-01-02/part-b.parquet", 7),
        Part("profiles", "profiles/dt=2026-01-02/part-a.parquet", 3),
        Part("profile_tags", "profile_tags/dt=2026-01-02/part-a.parquet", 12),
    ]
    path = sink.write_manifest(tmp_path, DAY, parts, 4, {"run_id": "r1", "calls": 11})
    assert path == tmp_path / "_manifests" / "dt=2026-01-02.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    created = manifest.pop("created_at")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", created)
    assert manifest == {
        "manifest_version": 1,
        "snapshot_date": "2026-01-02",
        "tool": "xhs-profiles",
        "tool_version": TOOL_VERSION,
        "tables": {
            "profiles": [
                {"path": "profiles/dt=2026-01-02/part-a.parquet", "rows": 3},
                {"path": "profiles/dt=2026-01-02/part-b.parquet", "rows": 7},
            ],
            "profile_tags": [{"path": "profile_tags/dt=2026-01-02/part-a.parquet", "rows": 12}],
            "profile_interactions": [],
            "profile_changes": [],
        },
        "rows": {
            "profiles": 10,
            "profile_tags": 12,
            "profile_interactions": 0,
            "profile_changes": 0,
        },
        "failures": {"path": "failures/dt=2026-01-02/failures.csv", "rows": 4},
        "summary": {"run_id": "r1", "calls": 11},
    }
    markers = [
        "failures/dt=2026-01-02/_SUCCESS",
        "profile_changes/dt=2026-01-02/_SUCCESS",
        "profile_interactions/dt=2026-01-02/_SUCCESS",
        "profile_tags/dt=2026-01-02/_SUCCESS",
        "profiles/dt=2026-01-02/_SUCCESS",
    ]
    assert files_under(tmp_path) == sorted(["_manifests/dt=2026-01-02.json", *markers])
    assert all((tmp_path / m).read_bytes() == b"" for m in markers)

    sink.clear_success(tmp_path, DAY)
    assert files_under(tmp_path) == []
    sink.clear_success(tmp_path, DAY)  # nothing to clear is fine


def test_manifest_refuses_parts_of_unknown_tables(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tables: users"):
        sink.write_manifest(tmp_path, DAY, [Part("users", "users/x.parquet", 1)], 0, {})


def test_run_summary_is_named_by_its_start_and_id(tmp_path: Path) -> None:
    summary: dict[str, object] = {
        "started_at": dt.datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=dt.UTC),
        "snapshot_date": DAY,
        "out": tmp_path,
        "codes": {"500": 2},
    }
    path = sink.write_run_summary(tmp_path, "ab12cd34", summary)
    assert path == tmp_path / "_runs" / "20260102T030405Z-ab12cd34.json"
    assert json.loads(path.read_text(encoding="utf-8")) == {
        "started_at": "2026-01-02T03:04:05.600Z",
        "snapshot_date": "2026-01-02",
        "out": tmp_path.as_posix(),
        "codes": {"500": 2},
    }
    assert files_under(tmp_path) == ["_runs/20260102T030405Z-ab12cd34.json"]
    iso = sink.write_run_summary(tmp_path, "r2", {"started_at": "2026-01-02T03:04:05Z"})
    assert iso.name == "20260102T030405Z-r2.json"
    with pytest.raises(ValueError, match="run id"):
        sink.write_run_summary(tmp_path, "../escape", {})


def test_write_json_atomic_writes_utf8_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.json"
    sink.write_json_atomic(target, {"名字": "家居博主", "n": 1}, tmp_path / "_tmp")
    assert target.read_bytes() == '{\n  "名字": "家居博主",\n  "n": 1\n}\n'.encode()
    assert list((tmp_path / "_tmp").iterdir()) == []


# ------------------------------------------------------------------ storage errors


def _raise(code: int) -> Any:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    return fail


def test_disk_full_at_rename_is_a_storage_error_and_removes_the_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "replace", _raise(errno.ENOSPC))
    with pytest.raises(StorageError) as caught:
        sink.write_part(tmp_path, PROFILES, DAY, profiles_frame([uid(1)]))
    message = str(caught.value)
    assert re.fullmatch(
        rf"disk full while writing {re.escape(str(tmp_path))}/profiles/dt=2026-01-02/"
        r"part-[0-9a-f]{8}-\d{5}\.parquet: free space and rerun; nothing fetched is lost",
        message,
    )
    assert isinstance(caught.value.__cause__, OSError)
    assert files_under(tmp_path) == []


def test_disk_full_midway_through_a_part_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_then_full(table: pa.Table, handle: Any, **kwargs: object) -> None:
        handle.write(b"PAR1 half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", half_then_full)
    with pytest.raises(StorageError, match=r"^disk full while writing"):
        sink.write_part(tmp_path, PROFILES, DAY, profiles_frame([uid(1)]))
    assert files_under(tmp_path) == []


def test_permission_denied_is_a_storage_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "replace", _raise(errno.EACCES))
    with pytest.raises(StorageError) as caught:
        sink.write_failures(tmp_path, DAY, [])
    assert str(caught.value) == (
        f"permission denied while writing {tmp_path}/failures/dt=2026-01-02/failures.csv "
        "(Permission denied): make --out writable (or use another --out) and rerun; "
        "nothing fetched is lost"
    )
    assert files_under(tmp_path) == []


def test_an_io_error_on_fsync_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "fsync", _raise(errno.EIO))
    with pytest.raises(StorageError, match=r"error while writing .*_runs.* \(Input/output error\)"):
        sink.write_run_summary(tmp_path, "r1", {})
    assert files_under(tmp_path) == []


def test_a_read_only_out_is_a_storage_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions (simulated above with monkeypatch)")
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="permission denied"):
            sink.write_part(tmp_path, PROFILES, DAY, profiles_frame([uid(1)]))
    finally:
        tmp_path.chmod(0o700)
