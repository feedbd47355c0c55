"""Deterministic shards: which ids a ``--shard-index K --shard-count N`` run owns, and its token.

An id belongs to shard ``blake2b(id) mod N`` (the first 8 bytes of the digest, big-endian):
the same id lands in the same shard whatever the file's order, the machine or the Python
process (``hash()`` is salted per process, so it cannot be used).  An input row that holds no
valid id is owned by the shard its raw text hashes to, so each reject is reported by exactly one
shard too.

One shard per API account is the expected set-up: each has its own checkpoint, lock, file names
and rate control, and its token comes from ``JUSTONEAPI_TOKEN_<K>`` (else a token file, else
``JUSTONEAPI_TOKEN``), never from the command line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, TypeVar

from pipeline.errors import UsageError

INDEX_ENV: Final = "JOB_COMPLETION_INDEX"  # Kubernetes Indexed Jobs set it on each pod
MAX_SHARDS: Final = 1024
MAX_TOKEN_FILE_BYTES: Final = 4096


class _Row(Protocol):
    @property
    def user_id(self) -> str | None: ...
    @property
    def raw(self) -> str: ...


_R = TypeVar("_R", bound=_Row)


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise UsageError(f"--shard-count must be from 1 to {MAX_SHARDS}, got {self.count}")
        if not 0 <= self.index < self.count:
            raise UsageError(
                f"--shard-index must be from 0 to {self.count - 1} "
                f"(--shard-count {self.count}), got {self.index}"
            )

    @property
    def label(self) -> str:
        """``shard-2-of-4``: in the names of the shard's state, files and manifest."""
        return f"shard-{self.index}-of-{self.count}"

    def owns(self, text: str) -> bool:
        return shard_of(text, self.count) == self.index

    def rows(self, rows: Iterable[_R]) -> Iterator[_R]:
        """The input rows this shard owns: by id, or by the raw text of a row without one."""
        for row in rows:
            if self.owns(row.user_id if row.user_id is not None else row.raw):
                yield row


def shard_of(text: str, count: int) -> int:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def resolve_shard(index: int | None, count: int | None, environ: Mapping[str, str]) -> Shard | None:
    """The shard the options and ``JOB_COMPLETION_INDEX`` name, or None for an unsharded run."""
    if count is None:
        if index is not None:
            raise UsageError("--shard-index needs --shard-count")
        return None
    if index is None:
        text = environ.get(INDEX_ENV, "").strip()
        if not text:
            raise UsageError(f"--shard-count needs --shard-index (or {INDEX_ENV} set)")
        try:
            index = int(text)
        except ValueError:
            raise UsageError(f"{INDEX_ENV} must be a whole number, got {text!r}") from None
    return Shard(index, count)


def shard_token(
    shard: Shard | None, environ: Mapping[str, str], token_file: Path | None, fallback: str | None
) -> str | None:
    """A shard's token: ``JUSTONEAPI_TOKEN_<K>``, else the token file, else ``fallback``."""
    if shard is not None:
        own = environ.get(f"JUSTONEAPI_TOKEN_{shard.index}", "").strip()
        if own:
            return own
    if token_file is not None:
        return read_token_file(token_file)
    return fallback


def read_token_file(path: Path) -> str:
    """The first line of ``path``; the message never shows the file's content."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read --token-file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise UsageError(f"--token-file {path} is larger than a token ({MAX_TOKEN_FILE_BYTES} B)")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise UsageError(f"--token-file {path} is not UTF-8 text") from None
    token = lines[0].strip() if lines else ""
    if not token:
        raise UsageError(f"--token-file {path} is empty")
    return token
