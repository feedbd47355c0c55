"""Where OUT lives: a local folder or an object store, behind one small interface.

Everything the pipeline writes or reads under OUT goes through a ``Store``, by key: a POSIX
path relative to OUT (``profiles/dt=2026-11-28/part-….parquet``), as the state records parts.

- ``LocalStore`` (a path, or a ``file://`` URL) is the folder as it always was: a file is
  written in ``OUT/_tmp``, fsynced, moved into place with ``os.replace`` and its folder fsynced
  (missing folders are made one by one, each parent fsynced), so a reader or a crash sees the
  old file or the new one, never half of one.  OS errors leave as ``StorageError`` naming the
  file and what to do.
- ``FsspecStore`` (``s3://bucket/prefix`` or any other fsspec URL) has no rename.  A file is
  written whole to a local temp file (in a local folder: the state's, never OUT), then sent with
  one ``put_file`` to its final key.  S3 makes an object visible only when its PUT (or its
  multipart upload) completes, so a crash leaves no half object, only maybe a whole one nobody
  lists yet: the manifest, written last, is what readers follow, and the resume deletes
  objects the state does not record.  (On a filesystem with folders, sftp or hdfs, ``put_file``
  is not atomic: those are best effort.)

Credentials are never taken from the command line: a URL holding ``user:secret@`` is refused
(without being echoed), and s3fs finds them as botocore does (``AWS_PROFILE``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL``,
``~/.aws/config`` and ``credentials``, instance roles).  Foreign exceptions (OSError, which s3fs
makes of S3's error codes, and botocore's own) are translated here, at the edge, into one-line
``StorageError``s that name the key and what to do; their text is masked
(``redaction.mask`` knows the secret AWS variables) and no message holds an option value.

fsspec and s3fs are imported only when OUT is remote: the core install does not need them
(``pip install 'xhs-profiles[s3]'`` adds them).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import logging
import os
import posixpath
import re
import secrets
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

from pipeline.errors import MissingFileError, StorageError, UsageError
from pipeline.redaction import mask

TMP_DIR: Final = "_tmp"
CACHE_DIR_NAME: Final = "xhs-profiles"
S3_EXTRA_HINT: Final = "pip install 'xhs-profiles[s3]' (or uv sync --extra s3)"
_WRITE_BUFFER: Final = 1 << 20
_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_S3_SCHEMES: Final = frozenset({"s3", "s3a"})
# Their debug records hold request headers (a session token among them): --debug must not print
# them.  Warnings and errors still come through.
_CHATTY_LOGGERS: Final = ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3")
_DETAIL_CHARS: Final = 200
_PROBE: Final = "write-probe-"
_T = TypeVar("_T")


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


class Store(ABC):
    """OUT, addressed by keys relative to it."""

    is_local: bool
    display: str  # how messages name OUT: a path or a URL, never a credential
    # What a read through ``open_input`` or ``arrow_filesystem`` may raise about the store
    # itself (for ``error`` to word), as opposed to a bug.
    errors: tuple[type[BaseException], ...]

    @abstractmethod
    def write(self, key: str, write: Callable[[IO[bytes]], object]) -> None:
        """Write ``key`` whole: ``write`` fills a temp file, which then takes the key at once."""

    def write_bytes(self, key: str, data: bytes) -> None:
        self.write(key, lambda handle: handle.write(data))

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The file's bytes; ``MissingFileError`` when there is none."""

    @abstractmethod
    def open_input(self, key: str) -> IO[bytes]:
        """A binary file object for pyarrow (the caller closes it); ``MissingFileError``."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def listdir(self, prefix: str, suffix: str | None = None) -> list[str]:
        """The files directly in the folder ``prefix`` (no recursion; names ending with
        ``suffix`` when given), as sorted keys; none when the folder does not exist."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Remove these files; missing ones are not an error."""

    @abstractmethod
    def clear_tmp(self) -> list[str]:
        """Remove every leftover temp file (a crash's); returns what was removed."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """How polars, pyarrow and messages name ``key``: a path, or ``s3://bucket/...``."""

    @abstractmethod
    def arrow_filesystem(self) -> Any:
        """A ``pyarrow.fs.FileSystem`` that reads this store with its own credentials."""

    @abstractmethod
    def arrow_path(self, key: str) -> str:
        """``key`` as a path in ``arrow_filesystem()``."""

    @abstractmethod
    def error(self, exc: BaseException, key: str, doing: str) -> StorageError:
        """``exc`` (raised while ``doing`` ``key``, e.g. by a reader later) as a StorageError."""

    @abstractmethod
    def staging(self, folder: str) -> Store:
        """The same OUT, its temp files in their own ``folder`` of the temp folder (a shard's:
        it clears only its own)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.display!r})"


# ------------------------------------------------------------------------ a local folder


class LocalStore(Store):
    """A folder on this machine, written exactly as sink always wrote it."""

    is_local = True
    errors = (OSError,)

    def __init__(self, root: Path, tmp_dir: Path | None = None) -> None:
        self.root = root
        self.display = str(root)
        self.tmp_dir = tmp_dir if tmp_dir is not None else root / TMP_DIR

    def staging(self, folder: str) -> LocalStore:
        return LocalStore(self.root, self.tmp_dir / folder)

    def path(self, key: str) -> Path:
        return self.root / key

    def write(self, key: str, write: Callable[[IO[bytes]], object]) -> None:
        atomic_write(self.path(key), self.tmp_dir, write)

    def read_bytes(self, key: str) -> bytes:
        path = self.path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise MissingFileError(f"{path} does not exist") from exc
        except OSError as exc:
            raise storage_error(exc, path, "reading") from exc

    def open_input(self, key: str) -> IO[bytes]:
        path = self.path(key)
        try:
            return path.open("rb")
        except FileNotFoundError as exc:
            raise MissingFileError(f"{path} does not exist") from exc
        except OSError as exc:
            raise storage_error(exc, path, "reading") from exc

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def listdir(self, prefix: str, suffix: str | None = None) -> list[str]:
        folder = self.path(prefix)
        try:
            if not folder.is_dir():
                return []
            return sorted(
                self.key_of(p)
                for p in folder.iterdir()
                if (suffix is None or p.name.endswith(suffix)) and p.is_file()
            )
        except OSError as exc:
            raise storage_error(exc, Path(exc.filename or folder), "listing") from exc

    def delete(self, keys: Iterable[str]) -> None:
        """Unlink each file, then fsync each folder that lost one, so the removals last."""
        folders: set[Path] = set()
        for key in keys:
            path = self.path(key)
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise storage_error(exc, path, "removing") from exc
            folders.add(path.parent)
        for folder in sorted(folders):
            try:
                fsync_dir(folder)
            except OSError as exc:
                raise storage_error(exc, folder, "syncing") from exc

    def clear_tmp(self) -> list[str]:
        removed: list[str] = []
        try:
            if self.tmp_dir.is_dir():
                for leftover in sorted(self.tmp_dir.iterdir()):
                    if leftover.is_dir() and not leftover.is_symlink():
                        shutil.rmtree(leftover)
                    else:
                        leftover.unlink()
                    removed.append(self.key_of(leftover))
        except OSError as exc:
            raise storage_error(exc, Path(exc.filename or self.tmp_dir), "removing") from exc
        return removed

    def uri(self, key: str) -> str:
        return str(self.path(key))

    def arrow_filesystem(self) -> Any:
        from pyarrow import fs

        return fs.LocalFileSystem()

    def arrow_path(self, key: str) -> str:
        return str(self.path(key))

    def error(self, exc: BaseException, key: str, doing: str) -> StorageError:
        if isinstance(exc, OSError):
            return storage_error(exc, self.path(key), doing)
        return StorageError(f"error while {doing} {self.path(key)} ({_detail(exc)})")

    def key_of(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def atomic_write(final: Path, tmp_dir: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write via a temp file in ``tmp_dir``, fsync it, rename it to ``final``, fsync the folder."""
    tmp = tmp_dir / f"{final.name}.{secrets.token_hex(4)}.tmp"
    try:
        make_dirs(tmp_dir)
        make_dirs(final.parent)
        with tmp.open("wb", buffering=_WRITE_BUFFER) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(final)
        fsync_dir(final.parent)
    except OSError as exc:
        _discard(tmp)
        raise storage_error(exc, final, "writing") from exc
    except BaseException:
        _discard(tmp)
        raise


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        return  # a leftover temp file is removed by the next run's clear_tmp


def make_dirs(folder: Path) -> None:
    """Create ``folder`` and its missing parents, fsyncing each parent so the entries survive."""
    missing: list[Path] = []
    cursor = folder
    while not cursor.is_dir():
        missing.append(cursor)
        if cursor.parent == cursor:
            break
        cursor = cursor.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def storage_error(exc: OSError, path: Path | str, doing: str) -> StorageError:
    cause = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(
            f"disk full while {doing} {path}: free space and rerun; nothing fetched is lost"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(
            f"permission denied while {doing} {path} ({cause}): make --out writable (or use "
            "another --out) and rerun; nothing fetched is lost"
        )
    return StorageError(
        f"error while {doing} {path} ({cause}): fix the cause and rerun; nothing fetched is lost"
    )


# ------------------------------------------------------------------------ an object store


class FsspecStore(Store):
    """An fsspec filesystem (s3fs for ``s3://``) under ``root`` (``bucket/prefix``)."""

    is_local = False

    def __init__(self, fs: Any, protocol: str, root: str, tmp_dir: Path) -> None:
        self._fs = fs
        self.protocol = protocol
        self.root = root.rstrip("/")
        self.display = f"{protocol}://{self.root}"
        self.tmp_dir = tmp_dir
        self.errors = _foreign_errors()

    @classmethod
    def open(cls, url: str, tmp_dir: Path) -> FsspecStore:
        """The store for a canonical URL (``canonical_url``); UsageError when the scheme's
        package is missing or unknown."""
        protocol = url.split("://", 1)[0]
        _quiet_chatty_loggers()
        fsspec = _import("fsspec", url)
        if protocol in _S3_SCHEMES:
            _import("s3fs", url)  # fsspec's registry would say it less clearly
        try:
            fs_class = fsspec.get_filesystem_class(protocol)
        except ImportError as exc:
            raise UsageError(f"--out {url} needs a package that is not installed: {exc}") from None
        except ValueError:
            raise UsageError(
                f"--out {url}: unknown storage scheme {protocol}:// "
                "(a folder, file://, s3:// or another fsspec URL)"
            ) from None
        options: dict[str, Any] = {"skip_instance_cache": True}
        if protocol in _S3_SCHEMES:
            # A resume must see what another process wrote and deleted: no cached listings.
            options["use_listings_cache"] = False
            options["session"] = _s3_session()
        try:
            fs = fs_class(**options)
        except Exception as exc:  # a foreign constructor: anything it raises is about its setup
            raise UsageError(f"--out {url}: cannot set up {protocol}:// ({_detail(exc)})") from exc
        return cls(fs, protocol, fs._strip_protocol(url), tmp_dir)

    def staging(self, folder: str) -> FsspecStore:
        return FsspecStore(self._fs, self.protocol, self.root, self.tmp_dir / folder)

    @property
    def filesystem(self) -> Any:
        """The fsspec filesystem itself (for DuckDB's ``register_filesystem`` and tests)."""
        return self._fs

    def full_path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def uri(self, key: str) -> str:
        return f"{self.protocol}://{self.full_path(key)}"

    def write(self, key: str, write: Callable[[IO[bytes]], object]) -> None:
        tmp = self.tmp_dir / f"{posixpath.basename(key)}.{secrets.token_hex(4)}.tmp"
        try:
            try:
                self.tmp_dir.mkdir(parents=True, exist_ok=True)
                with tmp.open("wb", buffering=_WRITE_BUFFER) as handle:
                    write(handle)
            except OSError as exc:
                raise _staging_error(exc, tmp, self.uri(key)) from exc
            # One PUT (a multipart upload completes only at its end): the key appears whole.
            self._call("writing", key, self._fs.put_file, str(tmp), self.full_path(key))
        finally:
            _discard(tmp)

    def read_bytes(self, key: str) -> bytes:
        data: bytes = self._call("reading", key, self._fs.cat_file, self.full_path(key))
        return data

    def open_input(self, key: str) -> IO[bytes]:
        handle: IO[bytes] = self._call("reading", key, self._fs.open, self.full_path(key), "rb")
        return handle

    def exists(self, key: str) -> bool:
        return bool(self._call("reading", key, self._fs.exists, self.full_path(key)))

    def listdir(self, prefix: str, suffix: str | None = None) -> list[str]:
        try:
            entries = self._call("listing", prefix, self._fs.ls, self.full_path(prefix), True)
        except MissingFileError:
            return []
        start = self.root + "/"
        keys = []
        for entry in entries:
            name = str(entry.get("name", "")).rstrip("/")
            if entry.get("type") != "file" or not name.startswith(start):
                continue
            if suffix is None or name.endswith(suffix):
                keys.append(name[len(start) :])
        return sorted(keys)

    def delete(self, keys: Iterable[str]) -> None:
        """One request per key: s3fs's bulk delete drops the per-key errors S3 reports (an
        object refused would stay, unseen), a single delete raises them.  A key already gone
        is no error (S3 says nothing; other filesystems' complaint is ignored)."""
        for key in keys:
            with contextlib.suppress(MissingFileError):
                self._call("removing", key, self._fs.rm_file, self.full_path(key))

    def clear_tmp(self) -> list[str]:
        """The staging folder is local: a crash leaves its temp file there, never in OUT (only
        a probe of OUT, killed between its write and its removal, leaves an empty object)."""
        probes = [k for k in self.listdir(TMP_DIR) if k.startswith(f"{TMP_DIR}/{_PROBE}")]
        self.delete(probes)
        removed: list[str] = list(probes)
        try:
            if self.tmp_dir.is_dir():
                for leftover in sorted(self.tmp_dir.iterdir()):
                    if leftover.is_dir() and not leftover.is_symlink():
                        shutil.rmtree(leftover)
                    else:
                        leftover.unlink()
                    removed.append(str(leftover))
        except OSError as exc:
            raise storage_error(exc, Path(exc.filename or self.tmp_dir), "removing") from exc
        return removed

    def arrow_filesystem(self) -> Any:
        from pyarrow import fs

        return fs.PyFileSystem(fs.FSSpecHandler(self._fs))

    def arrow_path(self, key: str) -> str:
        return self.full_path(key)

    def probe(self) -> None:
        """Write and remove one small object: OUT is reachable and writable, or a one-line
        UsageError (exit 2: nothing was called yet) saying why and what to do."""
        key = f"{TMP_DIR}/{_PROBE}{secrets.token_hex(4)}"
        try:
            self.write_bytes(key, b"")
            self.delete([key])
        except RemoteStorageError as exc:
            raise UsageError(
                f"--out {self.display} is not writable: {exc.problem}: {exc.advice}"
            ) from exc

    def _call(self, doing: str, key: str, function: Callable[..., _T], *args: Any) -> _T:
        try:
            return function(*args)
        except self.errors as exc:
            raise self.error(exc, key, doing) from exc

    def error(self, exc: BaseException, key: str, doing: str) -> StorageError:
        return remote_error(exc, self.uri(key), doing, bucket=self.root.split("/", 1)[0])


def _staging_error(exc: OSError, tmp: Path, where: str) -> StorageError:
    """The local copy of a remote file could not be written: the local disk's problem."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        problem = "disk full"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        problem = f"permission denied ({exc.strerror or exc})"
    else:
        problem = f"error ({exc.strerror or exc})"
    return StorageError(
        f"{problem} while writing {tmp}, the local copy of {where}: free space or fix "
        f"{tmp.parent} (or use another --state-dir) and rerun; nothing fetched is lost"
    )


def _import(module: str, url: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"--out {url} needs the s3 extra: {S3_EXTRA_HINT}") from None


_shared_loader: Any = None


def _s3_session() -> Any:
    """A new botocore session for each store, so the credentials are read afresh from the
    environment, sharing one data loader: parsing S3's service models again costs each new
    session 0.1 s of CPU."""
    global _shared_loader
    session = importlib.import_module("aiobotocore.session").AioSession()
    if _shared_loader is None:
        _shared_loader = session.get_component("data_loader")
    else:
        session.register_component("data_loader", _shared_loader)
    return session


def _foreign_errors() -> tuple[type[BaseException], ...]:
    """What a remote call may raise that is about the store, not a bug: OSError (s3fs turns S3's
    error codes into FileNotFoundError, PermissionError, ...) and botocore's own errors (no
    credentials, an endpoint that does not answer)."""
    errors: list[type[BaseException]] = [OSError]
    try:
        exceptions = importlib.import_module("botocore.exceptions")
    except ImportError:
        return tuple(errors)
    errors += [exceptions.BotoCoreError, exceptions.ClientError]
    return tuple(errors)


_ACCESS_CODES: Final = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "RequestTimeTooSkewed",
        "403",
    }
)
_CREDENTIAL_ERRORS: Final = frozenset(
    {
        "NoCredentialsError",
        "PartialCredentialsError",
        "ProfileNotFound",
        "CredentialRetrievalError",
        "InvalidConfigError",
        "SSOTokenLoadError",
        "TokenRetrievalError",
        "UnauthorizedSSOTokenError",
    }
)
_NETWORK_ERRORS: Final = frozenset(
    {
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ProxyConnectionError",
        "SSLError",
        "ConnectionError",
        "HTTPClientError",
    }
)


class RemoteStorageError(StorageError):
    """An object store refused or failed a call; ``problem`` and ``advice`` are the message's
    parts, for a caller that words it its own way (the probe of ``--out``)."""

    def __init__(self, message: str, *, problem: str, advice: str) -> None:
        super().__init__(message)
        self.problem = problem
        self.advice = advice


def remote_error(exc: BaseException, where: str, doing: str, *, bucket: str) -> StorageError:
    """One line for what went wrong at ``where``; the cause's text masked and cut short.

    The remote kinds each say what to do: a bucket that does not exist, access refused,
    no usable credentials, an endpoint that cannot be reached.
    """
    code = _error_code(exc)
    kinds = {type(e).__name__ for e in _chain(exc)}
    detail = _detail(exc)
    # A write can only miss its bucket (there are no folders); a read or a listing can miss
    # the key itself, which its caller may take as "none yet".
    missing_bucket = code == "NoSuchBucket" or (
        isinstance(exc, FileNotFoundError) and doing == "writing"
    )
    if isinstance(exc, FileNotFoundError) and not missing_bucket:
        return MissingFileError(f"{where} does not exist")
    if missing_bucket:
        problem, advice = f"the bucket {bucket} does not exist", "create it or fix --out"
        return RemoteStorageError(
            f"{problem} (while {doing} {where}): {advice}, and rerun; nothing fetched is lost",
            problem=problem,
            advice=advice,
        )
    if code in _ACCESS_CODES or isinstance(exc, PermissionError):
        head, cause = "access denied", code or detail
        advice = (
            "check the AWS credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID) and what they may do "
            "in the bucket"
        )
    elif kinds & _CREDENTIAL_ERRORS:
        head, cause = "no usable AWS credentials", detail
        advice = (
            "set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, in the environment"
        )
    elif kinds & _NETWORK_ERRORS or isinstance(exc, ConnectionError | TimeoutError):
        head, cause = "cannot reach the object store", detail
        advice = "check the network and AWS_ENDPOINT_URL"
    elif isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        head, cause, advice = "out of space", detail, "free space"
    else:
        head, cause, advice = "error", detail, "fix the cause"
    return RemoteStorageError(
        f"{head} while {doing} {where} ({cause}): {advice}, and rerun; nothing fetched is lost",
        problem=f"{head} ({cause})",
        advice=advice,
    )


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cursor: BaseException | None = exc
    while cursor is not None and cursor not in seen and len(seen) < 8:
        seen.append(cursor)
        cursor = cursor.__cause__ or cursor.__context__
    return seen


def _error_code(exc: BaseException) -> str | None:
    """S3's error code (``NoSuchBucket``, ``AccessDenied``) from botocore's ClientError, which
    s3fs keeps as the ``__cause__`` of the OSError it raises."""
    for link in _chain(exc):
        response = getattr(link, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            if code:
                return str(code)
    return None


def _detail(exc: BaseException) -> str:
    """The cause in one short line, masked: a foreign message may echo anything."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = mask(text)
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 1] + "…"


def _quiet_chatty_loggers() -> None:
    for name in _CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.INFO:
            logger.setLevel(logging.INFO)
