"""Where OUT lives: a local folder or an object store, behind one small interface.

Everything the pipeline writes or reads under OUT goes through a ``Store``
(``pipeline.storage_base``), by key: a POSIX path relative to OUT
(``profiles/dt=2026-11-28/part-….parquet``), as the state records parts.

- ``LocalStore`` (a path, or a ``file://`` URL; ``pipeline.storage_local``) is the folder as it
  always was: a file is written in ``OUT/_tmp``, fsynced, moved into place with ``os.replace``
  and its folder fsynced (missing folders are made one by one, each parent fsynced), so a reader
  or a crash sees the old file or the new one, never half of one.  OS errors leave as
  ``StorageError`` naming the file and what to do.
- ``FsspecStore`` (``s3://bucket/prefix`` or any other fsspec URL; ``pipeline.storage_remote``)
  has no rename.  A file is written whole to a local temp file (in a local folder: the state's,
  never OUT), then sent with one ``put_file`` to its final key.  S3 makes an object visible only
  when its PUT (or its multipart upload) completes, so a crash leaves no half object, only maybe
  a whole one nobody lists yet: the manifest, written last, is what readers follow, and the
  resume deletes objects the state does not record.  (On a filesystem with folders, sftp or
  hdfs, ``put_file`` is not atomic: those are best effort.)

This module picks the store for ``--out`` (``open_store``), checks and canonicalizes a URL, and
names the local folder a remote OUT's checkpoint lives in (``default_state_dir``).  Every public
name of the three modules above is importable from here; a test that patches one patches it
where it lives (``storage_local.fsync_dir``), as the stores look it up there.

Credentials are never taken from the command line: a URL holding ``user:secret@`` is refused
(without being echoed), and s3fs finds them as botocore does; ``pipeline.storage_remote`` says
where it looks and how S3's errors become one-line ``StorageError``s, masked.  fsspec and s3fs
are imported only when OUT is remote: the core install does not need them
(``pip install 'xhs-profiles[s3]'`` adds them).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

from pipeline.errors import UsageError
from pipeline.storage_base import TMP_DIR as TMP_DIR
from pipeline.storage_base import Store as Store
from pipeline.storage_base import storage_error as storage_error
from pipeline.storage_local import LocalStore as LocalStore
from pipeline.storage_local import atomic_write as atomic_write
from pipeline.storage_local import fsync_dir as fsync_dir
from pipeline.storage_local import make_dirs as make_dirs
from pipeline.storage_remote import S3_EXTRA_HINT as S3_EXTRA_HINT
from pipeline.storage_remote import FsspecStore as FsspecStore
from pipeline.storage_remote import RemoteStorageError as RemoteStorageError
from pipeline.storage_remote import remote_error as remote_error

CACHE_DIR_NAME: Final = "xhs-profiles"
_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def is_remote(out: str | Path) -> bool:
    """Whether ``out`` names an object store (a URL other than ``file://``), not a folder."""
    if isinstance(out, Path):
        return False
    match = _SCHEME.match(out)
    return match is not None and match[1].lower() != "file"


def open_store(out: str | Path, tmp_dir: Path | None = None) -> Store:
    """The store for ``--out``: a folder (a path or ``file://``), else an fsspec URL.

    ``tmp_dir`` is where a remote store stages its files (default: the cache folder that
    ``default_state_dir`` names, ``/_tmp``); a local store always stages in ``OUT/_tmp``,
    because a rename only works within one filesystem.
    """
    if isinstance(out, Path):
        return LocalStore(out)
    match = _SCHEME.match(out)
    if match is None:
        return LocalStore(Path(out))
    if match[1].lower() == "file":
        return LocalStore(file_url_path(out))
    url = canonical_url(out)
    return FsspecStore.open(url, tmp_dir if tmp_dir is not None else default_tmp_dir(url))


def file_url_path(url: str) -> Path:
    """The folder a ``file://`` URL names (``file:///srv/xhs`` → ``/srv/xhs``)."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise UsageError(f"--out {url}: a file:// URL names a local path (file:///path)")
    return Path(unquote(parts.path))


def canonical_url(url: str) -> str:
    """``scheme://bucket/prefix`` without a trailing slash; refuses what must not be in it.

    The URL itself is never echoed when it holds credentials: it is the one thing a message
    must not repeat.
    """
    parts = urlsplit(url.strip())
    if "@" in parts.netloc:
        raise UsageError(
            "--out must not hold credentials (user:secret@): they come from the AWS "
            "environment (AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment:
        raise UsageError(f"--out must not carry a query or fragment, got {scheme}://{parts.netloc}")
    if not parts.netloc:
        raise UsageError(f"--out {url.strip()} names no bucket: use {scheme}://BUCKET/PREFIX")
    path = re.sub(r"/{2,}", "/", parts.path).rstrip("/")
    return f"{scheme}://{parts.netloc}{path}"


def default_state_dir(out_url: str, environ: Mapping[str, str] | None = None) -> Path:
    """The local folder for a remote OUT's checkpoint: ``$XDG_CACHE_HOME/xhs-profiles/<16 hex>``
    (else ``~/.cache/...``), named by the SHA-256 of the canonical URL, so every run against
    the same OUT on this machine resumes from the same state.  SQLite needs a local disk: its
    locks and WAL do not work on network filesystems, and an object store has neither."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME", "")
    # The XDG spec: a relative path in the variable is invalid and must be ignored.
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    digest = hashlib.sha256(canonical_url(out_url).encode()).hexdigest()[:16]
    return root / CACHE_DIR_NAME / digest


def default_tmp_dir(out_url: str) -> Path:
    return default_state_dir(out_url) / TMP_DIR
