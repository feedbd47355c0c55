"""``LocalStore``: OUT as a folder on this machine, and the atomic write it (and sink) uses.

A file is written in ``OUT/_tmp``, fsynced, moved into place with ``os.replace`` and its folder
fsynced (missing folders are made one by one, each parent fsynced), so a reader or a crash sees
the old file or the new one, never half of one.  OS errors leave as ``StorageError`` naming the
file and what to do.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from pipeline.errors import MissingFileError, StorageError
from pipeline.storage_base import (
    TMP_DIR,
    WRITE_BUFFER,
    Store,
    discard,
    empty_folder,
    masked_detail,
    storage_error,
)


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
        return [self.key_of(path) for path in empty_folder(self.tmp_dir)]

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
        return StorageError(f"error while {doing} {self.path(key)} ({masked_detail(exc)})")

    def key_of(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def atomic_write(final: Path, tmp_dir: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write via a temp file in ``tmp_dir``, fsync it, rename it to ``final``, fsync the folder."""
    tmp = tmp_dir / f"{final.name}.{secrets.token_hex(4)}.tmp"
    try:
        make_dirs(tmp_dir)
        make_dirs(final.parent)
        with tmp.open("wb", buffering=WRITE_BUFFER) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(final)
        fsync_dir(final.parent)
    except OSError as exc:
        discard(tmp)
        raise storage_error(exc, final, "writing") from exc
    except BaseException:
        discard(tmp)
        raise


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
