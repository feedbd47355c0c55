"""``FsspecStore``: OUT in an object store through fsspec (s3fs for ``s3://``), and its errors.

A file is staged whole in a local temp file, then sent with one ``put_file`` to its final key
(``pipeline.storage`` says why that is as safe as a rename on S3).

s3fs finds the credentials as botocore does (``AWS_PROFILE``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL``,
``~/.aws/config`` and ``credentials``, instance roles); a URL never carries them
(``storage.canonical_url`` refuses one that does).  Foreign exceptions (OSError, which s3fs
makes of S3's error codes, and botocore's own) are translated here, at the edge, into one-line
``StorageError``s that name the key and what to do; their text is masked
(``redaction.mask`` knows the secret AWS variables) and no message holds an option value.

fsspec and s3fs are imported only when OUT is remote (``FsspecStore.open``): the core install
does not need them (``pip install 'xhs-profiles[s3]'`` adds them).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import posixpath
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, Final, TypeVar

from pipeline.errors import MissingFileError, StorageError, UsageError
from pipeline.storage_base import (
    TMP_DIR,
    WRITE_BUFFER,
    Store,
    discard,
    empty_folder,
    masked_detail,
)

S3_EXTRA_HINT: Final = "pip install 'xhs-profiles[s3]' (or uv sync --extra s3)"
_S3_SCHEMES: Final = frozenset({"s3", "s3a"})
# Their debug records hold request headers (a session token among them): --debug must not print
# them.  Warnings and errors still come through.
_CHATTY_LOGGERS: Final = ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3")
_PROBE: Final = "write-probe-"
_T = TypeVar("_T")


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
            raise UsageError(
                f"--out {url}: cannot set up {protocol}:// ({masked_detail(exc)})"
            ) from exc
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
                with tmp.open("wb", buffering=WRITE_BUFFER) as handle:
                    write(handle)
            except OSError as exc:
                raise _staging_error(exc, tmp, self.uri(key)) from exc
            # One PUT (a multipart upload completes only at its end): the key appears whole.
            self._call("writing", key, self._fs.put_file, str(tmp), self.full_path(key))
        finally:
            discard(tmp)

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
        return [*probes, *(str(path) for path in empty_folder(self.tmp_dir))]

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
    detail = masked_detail(exc)
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


def _quiet_chatty_loggers() -> None:
    for name in _CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.INFO:
            logger.setLevel(logging.INFO)
