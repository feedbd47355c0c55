"""pipeline.storage: one contract for a local OUT and an object store, and its errors.

The contract runs on three stores: a folder (``LocalStore``), fsspec's in-memory filesystem
and moto's S3 on 127.0.0.1 (both ``FsspecStore``).  Then what only one of them does: the local
store's fsync-and-rename protocol and messages (those of ``sink`` before stores existed), and
S3's errors as one line each, holding neither secret key.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline import storage, storage_local
from pipeline.errors import MissingFileError, StorageError, UsageError
from pipeline.redaction import mask
from pipeline.storage import FsspecStore, LocalStore, Store, default_state_dir, open_store
from tests.s3server import S3, SECRET_KEY

REPO = Path(__file__).resolve().parents[1]
KEY = "profiles/dt=2026-11-28/part-00000001-00001.parquet"


@pytest.fixture(params=["local", "memory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    kind = request.param
    if kind == "local":
        yield open_store(tmp_path / "out")
    elif kind == "memory":
        pytest.importorskip("fsspec", reason="fsspec is not installed (the s3 extra brings it)")
        root = f"memory://bucket-{secrets.token_hex(4)}/out"
        made = open_store(root, tmp_path / "staging")
        yield made
        with contextlib.suppress(FileNotFoundError):
            made.filesystem.rm(made.root, recursive=True)  # type: ignore[attr-defined]
    else:
        s3: S3 = request.getfixturevalue("s3")
        yield open_store(s3.url("out"), tmp_path / "staging")


def temp_files(store: Store) -> list[str]:
    folder = store.tmp_dir  # type: ignore[attr-defined]
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def frame() -> pl.DataFrame:
    return pl.DataFrame({"user_id": ["a", "b"], "fans": [1, 2]})


# ------------------------------------------------------------------ the contract


def test_a_written_file_reads_back_and_lists(store: Store) -> None:
    store.write_bytes("_manifests/dt=2026-11-28.json", b'{"a": 1}\n')
    store.write("_manifests/dt=2026-11-27.json", lambda handle: handle.write(b"{}"))
    store.write_bytes("_manifests/notes.txt", b"x")
    store.write_bytes("_manifests/deeper/dt=2026-01-01.json", b"{}")

    assert store.read_bytes("_manifests/dt=2026-11-28.json") == b'{"a": 1}\n'
    assert store.exists("_manifests/dt=2026-11-27.json")
    assert not store.exists("_manifests/dt=2026-11-26.json")
    # Files directly in the folder, sorted, as keys; not what is under a deeper folder.
    assert store.listdir("_manifests", ".json") == [
        "_manifests/dt=2026-11-27.json",
        "_manifests/dt=2026-11-28.json",
    ]
    assert store.listdir("_manifests") == [
        "_manifests/dt=2026-11-27.json",
        "_manifests/dt=2026-11-28.json",
        "_manifests/notes.txt",
    ]
    assert store.listdir("nothing/here") == []
    assert temp_files(store) == []


def test_a_rewrite_replaces_the_whole_file(store: Store) -> None:
    store.write_bytes("failures/dt=2026-11-28/failures.csv", b"user_id,code\nlong,1\n")
    store.write_bytes("failures/dt=2026-11-28/failures.csv", b"user_id\n")
    assert store.read_bytes("failures/dt=2026-11-28/failures.csv") == b"user_id\n"


def test_delete_removes_the_files_and_ignores_missing_ones(store: Store) -> None:
    store.write_bytes("a/one", b"1")
    store.write_bytes("a/two", b"2")
    store.delete(["a/one", "a/never-written"])
    store.delete([])
    assert store.listdir("a") == ["a/two"]
    store.delete(["a/two"])
    assert store.listdir("a") == []


def test_reading_a_missing_file_is_a_missing_file_error(store: Store) -> None:
    with pytest.raises(MissingFileError, match="does not exist"):
        store.read_bytes("_manifests/dt=1999-01-01.json")
    with pytest.raises(MissingFileError):
        store.open_input("_manifests/dt=1999-01-01.json")
    assert issubclass(MissingFileError, StorageError)


def test_a_write_that_raises_leaves_no_object_and_no_temp_file(store: Store) -> None:
    def half_then_fail(handle: Any) -> None:
        handle.write(b"PAR1 half a file")
        raise ValueError("the frame does not match the schema")

    with pytest.raises(ValueError, match="does not match"):  # not translated: it is ours
        store.write(KEY, half_then_fail)
    assert not store.exists(KEY)
    assert store.listdir("profiles/dt=2026-11-28") == []
    assert temp_files(store) == []


def test_parquet_reads_back_through_open_input_the_arrow_filesystem_and_the_uri(
    store: Store, request: pytest.FixtureRequest
) -> None:
    store.write(KEY, lambda handle: pq.write_table(frame().to_arrow(), handle))
    with store.open_input(KEY) as handle:
        assert pl.from_arrow(pq.ParquetFile(handle).read()).equals(frame())  # type: ignore[union-attr]
    table = pq.read_table(store.arrow_path(KEY), filesystem=store.arrow_filesystem())
    assert pl.from_arrow(table).equals(frame())  # type: ignore[union-attr]
    if store.is_local:
        assert store.uri(KEY) == str(Path(store.display) / KEY)
        assert pl.read_parquet(store.uri(KEY)).equals(frame())
    elif store.uri(KEY).startswith("s3://"):
        s3: S3 = request.getfixturevalue("s3")
        assert store.uri(KEY) == f"s3://{s3.bucket}/out/{KEY}"
        assert pl.read_parquet(store.uri(KEY), storage_options=s3.polars_options()).equals(frame())


def test_clear_tmp_removes_what_a_crash_left_in_the_staging_folder(store: Store) -> None:
    folder: Path = store.tmp_dir  # type: ignore[attr-defined]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "part-x.parquet.1234.tmp").write_bytes(b"torn")
    (folder / "stray").mkdir()
    removed = store.clear_tmp()
    assert len(removed) == 2
    assert temp_files(store) == []
    assert store.clear_tmp() == []


def test_repr_and_display_name_the_location_only(store: Store) -> None:
    assert repr(store) == f"{type(store).__name__}({store.display!r})"
    assert SECRET_KEY not in repr(store) + store.display


# ------------------------------------------------------------------ the local store


def test_the_local_store_writes_in_out_tmp_fsyncs_renames_and_fsyncs_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The protocol sink always used: temp file in OUT/_tmp, fsync, os.replace, fsync folder;
    each folder made is fsynced in its parent."""
    out = tmp_path / "out"
    out.mkdir()
    trace: list[tuple[str, str]] = []
    real_fsync, real_replace, real_open = os.fsync, os.replace, os.open
    names: dict[int, str] = {}

    def watching_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, flags, *args, **kwargs)
        names[fd] = Path(path).relative_to(tmp_path).as_posix()
        return fd

    def watching_fsync(fd: int) -> None:
        trace.append(("fsync", names.pop(fd, "the temp file")))
        real_fsync(fd)

    def watching_replace(src: Any, dst: Any) -> None:
        trace.append(("replace", f"{Path(src).parent.name} -> {Path(dst).relative_to(out)}"))
        real_replace(src, dst)

    monkeypatch.setattr(os, "open", watching_open)
    monkeypatch.setattr(os, "fsync", watching_fsync)
    monkeypatch.setattr(os, "replace", watching_replace)
    LocalStore(out).write_bytes("profiles/dt=2026-11-28/x.parquet", b"data")

    assert trace == [
        ("fsync", "out"),  # _tmp made
        ("fsync", "out"),  # profiles made
        ("fsync", "out/profiles"),  # dt=2026-11-28 made
        ("fsync", "the temp file"),
        ("replace", "_tmp -> profiles/dt=2026-11-28/x.parquet"),
        ("fsync", "out/profiles/dt=2026-11-28"),
    ]
    assert (out / "profiles/dt=2026-11-28/x.parquet").read_bytes() == b"data"
    assert list((out / "_tmp").iterdir()) == []


def test_the_local_store_words_disk_full_and_permission_errors_as_sink_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(code: int) -> Any:
        def fail(*args: object, **kwargs: object) -> None:
            raise OSError(code, os.strerror(code))

        return fail

    local = LocalStore(tmp_path)
    monkeypatch.setattr(os, "replace", refuse(errno.ENOSPC))
    with pytest.raises(StorageError) as full:
        local.write_bytes("_runs/r.json", b"{}")
    assert str(full.value) == (
        f"disk full while writing {tmp_path}/_runs/r.json: free space and rerun; "
        "nothing fetched is lost"
    )
    monkeypatch.setattr(os, "replace", refuse(errno.EACCES))
    with pytest.raises(StorageError) as denied:
        local.write_bytes("_runs/r.json", b"{}")
    assert str(denied.value) == (
        f"permission denied while writing {tmp_path}/_runs/r.json (Permission denied): make "
        "--out writable (or use another --out) and rerun; nothing fetched is lost"
    )
    assert list((tmp_path / "_tmp").iterdir()) == []


def test_a_local_delete_fsyncs_each_folder_that_lost_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = LocalStore(tmp_path)
    local.write_bytes("a/x", b"1")
    local.write_bytes("b/y", b"2")
    synced: list[str] = []
    real_fsync_dir = storage_local.fsync_dir
    monkeypatch.setattr(
        storage_local,
        "fsync_dir",
        lambda folder: synced.append(folder.name) or real_fsync_dir(folder),
    )
    local.delete(["a/x", "b/y", "c/never"])
    assert synced == ["a", "b"]
    assert not (tmp_path / "a/x").exists() and not (tmp_path / "b/y").exists()


# ------------------------------------------------------------------ choosing a store


def test_open_store_picks_a_folder_for_paths_and_file_urls(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path), LocalStore)
    relative = open_store("some/out")
    assert isinstance(relative, LocalStore) and relative.root == Path("some/out")
    from_url = open_store(f"file://{tmp_path}/out")
    assert isinstance(from_url, LocalStore) and from_url.root == tmp_path / "out"
    assert not storage.is_remote(tmp_path) and not storage.is_remote(f"file://{tmp_path}")
    assert storage.is_remote("s3://bucket/prefix")


def test_open_store_gives_an_s3_url_its_canonical_form(s3: S3, tmp_path: Path) -> None:
    remote = open_store(f"s3://{s3.bucket}//out/x/", tmp_path / "staging")
    assert isinstance(remote, FsspecStore)
    assert remote.display == f"s3://{s3.bucket}/out/x"
    assert remote.uri("_SUCCESS") == f"s3://{s3.bucket}/out/x/_SUCCESS"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://AKIAX:" + SECRET_KEY + "@bucket/out", "--out must not hold credentials"),
        ("s3://bucket/out?versionId=1", "--out must not carry a query or fragment"),
        ("s3:///out", "names no bucket"),
        ("nosuchscheme://bucket/out", "unknown storage scheme nosuchscheme://"),
        ("file://host/out", "a file:// URL names a local path"),
    ],
)
def test_open_store_refuses_a_bad_url_in_one_line(url: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        open_store(url, Path("/nonexistent"))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert SECRET_KEY not in str(caught.value)


def test_without_s3fs_an_s3_out_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs now raises ImportError
    with pytest.raises(UsageError) as caught:
        open_store("s3://bucket/out", Path("/nonexistent"))
    assert str(caught.value) == (
        "--out s3://bucket/out needs the s3 extra: pip install 'xhs-profiles[s3]' "
        "(or uv sync --extra s3)"
    )


def test_the_default_state_dir_is_a_local_cache_folder_named_by_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = hashlib.sha256(b"s3://bucket/out").hexdigest()[:16]
    cache = {"XDG_CACHE_HOME": str(tmp_path)}
    assert default_state_dir("s3://bucket/out", cache) == tmp_path / "xhs-profiles" / digest
    assert default_state_dir("s3://bucket//out/", cache) == tmp_path / "xhs-profiles" / digest
    assert default_state_dir("s3://bucket/other", cache) != tmp_path / "xhs-profiles" / digest
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # The XDG spec: a relative XDG_CACHE_HOME is invalid and ignored.
    for env in ({}, {"XDG_CACHE_HOME": "relative/cache"}):
        assert default_state_dir("s3://bucket/out", env) == (
            tmp_path / "home" / ".cache" / "xhs-profiles" / digest
        )


@pytest.mark.slow
def test_importing_the_cli_imports_no_object_store_package() -> None:
    code = (
        "import sys, pipeline.cli, pipeline.storage; "
        "print(sorted({'fsspec', 's3fs', 'botocore'} & sys.modules.keys()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


# ------------------------------------------------------------------ S3's errors


def assert_one_clean_line(error: BaseException, *secrets_: str) -> str:
    text = str(error)
    assert "\n" not in text and len(text) < 400, text
    for secret in (SECRET_KEY, *secrets_):
        assert secret not in text
        assert secret not in repr(error)
    return text


def test_a_missing_bucket_is_one_line_naming_it(s3: S3, tmp_path: Path) -> None:
    remote = open_store(f"s3://{s3.bucket}-gone/out", tmp_path / "staging")
    with pytest.raises(StorageError) as caught:
        remote.write_bytes("_runs/r.json", b"{}")
    text = assert_one_clean_line(caught.value)
    assert text == (
        f"the bucket {s3.bucket}-gone does not exist (while writing "
        f"s3://{s3.bucket}-gone/out/_runs/r.json): create it or fix --out, and rerun; "
        "nothing fetched is lost"
    )
    assert isinstance(caught.value.__cause__, FileNotFoundError)
    assert temp_files(remote) == []
    with pytest.raises(StorageError, match="does not exist"):
        remote.listdir("_manifests")


def test_credentials_that_may_only_read_are_refused_writes_in_one_line(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = open_store(s3.url("out"), tmp_path / "staging")
    writer.write_bytes("_manifests/dt=2026-11-28.json", b"{}")
    with s3.read_only_credentials(monkeypatch) as reader_secret:
        remote = open_store(s3.url("out"), tmp_path / "staging")
        assert remote.read_bytes("_manifests/dt=2026-11-28.json") == b"{}"
        with pytest.raises(StorageError) as caught:
            remote.write_bytes(KEY, b"PAR1")
        text = assert_one_clean_line(caught.value, reader_secret)
        assert text.startswith(
            f"access denied while writing s3://{s3.bucket}/out/{KEY} (AccessDenied): check "
            "the AWS credentials"
        )
        assert isinstance(caught.value.__cause__, PermissionError)
        assert temp_files(remote) == []
        # A refused delete is said too (s3fs's bulk delete would drop S3's per-key error).
        with pytest.raises(StorageError) as kept:
            remote.delete(["_manifests/dt=2026-11-28.json"])
        assert assert_one_clean_line(kept.value, reader_secret).startswith(
            f"access denied while removing s3://{s3.bucket}/out/_manifests/dt=2026-11-28.json"
        )
        assert remote.exists("_manifests/dt=2026-11-28.json")
        # A wrong secret key: the signature does not match, said without the key.
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + reader_secret)
        wrong = open_store(s3.url("out"), tmp_path / "staging")
        with pytest.raises(StorageError) as refused:
            wrong.listdir("_manifests")
        text = assert_one_clean_line(refused.value, reader_secret, "wrong-" + reader_secret)
        assert "access denied while listing" in text and "SignatureDoesNotMatch" in text


def test_no_credentials_and_no_endpoint_are_each_one_line(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    remote = open_store(s3.url("out"), tmp_path / "staging")
    with pytest.raises(StorageError) as caught:
        remote.write_bytes("_runs/r.json", b"{}")
    assert assert_one_clean_line(caught.value).startswith(
        f"no usable AWS credentials while writing s3://{s3.bucket}/out/_runs/r.json"
    )

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAX")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard: nothing listens
    remote = open_store(s3.url("out"), tmp_path / "staging")
    with pytest.raises(StorageError) as unreachable:
        remote.write_bytes("_runs/r.json", b"{}")
    assert assert_one_clean_line(unreachable.value).startswith(
        f"cannot reach the object store while writing s3://{s3.bucket}/out/_runs/r.json "
        '(Could not connect to the endpoint URL: "http://127.0.0.1:9/'
    )


def test_a_full_local_disk_under_a_remote_store_is_one_line_naming_the_local_copy(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = open_store(s3.url("out"), tmp_path / "staging")

    def full(handle: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(StorageError) as caught:
        remote.write(KEY, full)
    text = assert_one_clean_line(caught.value)
    assert text.startswith(
        f"disk full while writing {tmp_path}/staging/part-00000001-00001.parquet."
    )
    assert text.endswith(
        f", the local copy of s3://{s3.bucket}/out/{KEY}: free space or fix {tmp_path}/staging "
        "(or use another --state-dir) and rerun; nothing fetched is lost"
    )
    assert temp_files(remote) == [] and s3.objects() == []


def test_the_probe_writes_and_removes_one_object(s3: S3, tmp_path: Path) -> None:
    remote = open_store(s3.url("out"), tmp_path / "staging")
    assert isinstance(remote, FsspecStore)
    remote.probe()
    assert s3.objects() == []
    gone = open_store(f"s3://{s3.bucket}-gone/out", tmp_path / "staging")
    assert isinstance(gone, FsspecStore)
    with pytest.raises(UsageError) as caught:
        gone.probe()
    assert str(caught.value) == (
        f"--out s3://{s3.bucket}-gone/out is not writable: the bucket {s3.bucket}-gone does not "
        "exist: create it or fix --out"
    )


# ------------------------------------------------------------------ masking


def test_mask_masks_the_secret_aws_variables_wherever_they_stand(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "IQoJb3JpZ2luX2VjEFAKE")
    monkeypatch.setenv("AWS_SECURITY_TOKEN", "short")  # too short to mask everywhere
    text = f"signed with {SECRET_KEY}; token IQoJb3JpZ2luX2VjEFAKE; a short story"
    assert mask(text) == "signed with ***; token ***; a short story"
    assert mask("aws_secret_access_key = abc123\n") == "aws_secret_access_key = ***\n"
    assert mask("{'X-Amz-Security-Token': 'FQoG/abc'}") == "{'X-Amz-Security-Token': '***'}"
    assert mask('"SecretAccessKey": "k+/="') == '"SecretAccessKey": "***"'
    buffer = io.StringIO()
    buffer.write(mask(repr(OSError(SECRET_KEY))))
    assert SECRET_KEY not in buffer.getvalue()
