"""The ``Store`` interface OUT is reached through, and what its two implementations share.

``LocalStore`` (``pipeline.storage_local``) and ``FsspecStore`` (``pipeline.storage_remote``)
implement ``Store``; ``pipeline.storage`` picks one for ``--out`` and says what each guarantees.
Shared here: the temp folder's name, the write buffer, a local OSError worded as a one-line
``StorageError``, and a foreign error's cause in one short masked line.
"""

from __future__ import annotations

import errno
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, Final

from pipeline.errors import StorageError
from pipeline.redaction import mask

TMP_DIR: Final = "_tmp"
WRITE_BUFFER: Final = 1 << 20
_DETAIL_CHARS: Final = 200


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


def discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        return  # a leftover temp file is removed by the next run's clear_tmp


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


def masked_detail(exc: BaseException) -> str:
    """The cause in one short line, masked: a foreign message may echo anything."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = mask(text)
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 1] + "…"


def empty_folder(folder: Path) -> list[Path]:
    """Delete everything in the local ``folder`` (a crash's temp files), returning what went."""
    removed: list[Path] = []
    try:
        if folder.is_dir():
            for leftover in sorted(folder.iterdir()):
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
                removed.append(leftover)
    except OSError as exc:
        raise storage_error(exc, Path(exc.filename or folder), "removing") from exc
    return removed
