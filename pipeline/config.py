"""The frozen configuration of one run, validated before anything is read or called.

``RunConfig`` is built by the CLI from its options (or by tests directly) and passed, whole and
immutable, to ``runner.run``.  Validation lives here, not in click, so every entry point gets
the same rules and the same one-line ``UsageError`` messages.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

from pipeline.errors import UsageError
from pipeline.shards import Shard

DEFAULT_BASE_URL: Final = "https://api.justoneapi.com"
REGION_HOSTS: Final = {
    "global": "https://api.justoneapi.com",
    # The vendor's documented mainland-China host: plain HTTP, so the token is cleartext on the
    # wire.
    "cn": "http://47.117.133.51:30015",
}
TOKEN_ENV: Final = "JUSTONEAPI_TOKEN"
BASE_URL_ENV: Final = "JUSTONEAPI_BASE_URL"
ApiVersion = Literal["v4", "v3"]
API_VERSIONS: Final[tuple[ApiVersion, ...]] = ("v4", "v3")
ID_PATTERN: Final = re.compile(r"[0-9a-f]{24}")
# requests/s before anything is known: what the old default of 16 slots sent at a 1 s round trip
DEFAULT_START_RATE: Final = 16.0
# A retry waits uniform in [0, min(cap, base * 2**(attempt-1))) seconds.  A 0.5 s base: the
# vendor's own advice for 301 is "please retry", and the retry waits in the fetcher's heap, so
# a short wait costs no slot while a long one holds up the run's end.
DEFAULT_BACKOFF_BASE: Final = 0.5
DEFAULT_BACKOFF_CAP: Final = 30.0


def _installed_version() -> str:
    try:
        return importlib.metadata.version("xhs-profiles")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "0+unknown"


TOOL_VERSION: Final = _installed_version()


class Secret:
    """A string that never shows itself: ``repr``/``str`` mask it, ``reveal()`` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything one run needs.  ``repr`` is safe to log: the token is a ``Secret``."""

    input_path: Path
    # The output folder.  With ``out_url`` (a remote OUT) nothing of the output goes here: it
    # is the run's local folder, for its checkpoint and temp files (the CLI makes it the
    # --state-dir, by default a cache folder named by the URL).
    out_dir: Path
    token: Secret
    base_url: str = DEFAULT_BASE_URL
    api_version: ApiVersion = "v4"
    id_column: str | None = None
    snapshot_date: dt.date = dataclasses.field(
        default_factory=lambda: dt.datetime.now(dt.UTC).date()
    )
    # Caps, never targets: the rate controller finds the rate and the calls in flight below them.
    concurrency: int = 512  # calls in flight, at most
    rate: float | None = None  # requests per second across all workers, at most; None: no cap
    # Where the controller's slow start begins (requests/s).  No option sets it: tests of short
    # runs start high so that a 20-id run does not spend a second climbing from 16/s.
    start_rate: float = DEFAULT_START_RATE
    max_attempts: int = 5
    backoff_base: float = DEFAULT_BACKOFF_BASE  # seconds; no CLI option sets these two
    backoff_cap: float = DEFAULT_BACKOFF_CAP
    timeout: float = 60.0  # seconds; the vendor advises at least 60
    max_calls: int | None = None
    # A completed snapshot with more failed ids than these (over its valid ids) ends the run
    # with exit 6, after everything is written.
    max_failure_rate: float | None = None
    max_failures: int | None = None
    dry_run: bool = False
    batch_rows: int = 2000  # profiles per Parquet part; 5,000 cost 60 MB more peak memory
    max_body_bytes: int = 5 * 1024 * 1024
    sandbox: bool = False  # running against the built-in sandbox (set by the CLI, for messages)
    shard: Shard | None = None  # this run owns only the shard's ids; None: every id
    # Where the checkpoint (SQLite) and its lock live; None: OUT/_state (``out_dir`` itself
    # for a remote OUT: SQLite needs a local disk).
    state_dir: Path | None = None
    # A remote OUT: ``s3://bucket/prefix`` or another fsspec URL, canonical (no trailing slash,
    # never credentials: the CLI checks it with ``storage.canonical_url``).
    out_url: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", validate_base_url(self.base_url))
        if self.out_url is not None and self.state_dir is None:
            object.__setattr__(self, "state_dir", self.out_dir)
        if self.api_version not in API_VERSIONS:
            raise UsageError(f"--api-version must be one of {', '.join(API_VERSIONS)}")
        _at_least("--concurrency", self.concurrency, 1)
        _at_least("--max-attempts", self.max_attempts, 1)
        _at_least("--batch-rows", self.batch_rows, 1)
        if self.max_calls is not None:
            _at_least("--max-calls", self.max_calls, 0)
        if self.max_failures is not None:
            _at_least("--max-failures", self.max_failures, 0)
        if self.max_failure_rate is not None and not 0 <= self.max_failure_rate <= 1:
            raise UsageError(
                f"--max-failure-rate must be a fraction from 0 to 1, got {self.max_failure_rate}"
            )
        if self.rate is not None and not self.rate > 0:
            raise UsageError(
                f"--rate must be a positive number of requests per second, got {self.rate}"
            )
        _positive_seconds("--timeout", self.timeout)
        if not (self.start_rate > 0 and math.isfinite(self.start_rate)):
            raise UsageError(
                "start_rate must be a positive number of requests per second, "
                f"got {self.start_rate}"
            )
        _positive_seconds("backoff_base", self.backoff_base)
        _positive_seconds("backoff_cap", self.backoff_cap)
        if not self.token:
            raise UsageError(f"no API token: set {TOKEN_ENV} (or pass --token)")

    @property
    def out(self) -> str:
        """Where the output goes, as messages and the run summary name it."""
        return self.out_url if self.out_url is not None else str(self.out_dir)

    @property
    def endpoint_url(self) -> str:
        return f"{self.base_url}/api/xiaohongshu/get-user/{self.api_version}"


def _at_least(option: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise UsageError(f"{option} must be at least {minimum}, got {value}")


def _positive_seconds(option: str, value: float) -> None:
    if not value > 0:
        raise UsageError(f"{option} must be a positive number of seconds, got {value}")


def validate_base_url(url: str) -> str:
    """Accept only http(s) URLs with a host; return it without a trailing slash."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--base-url must be an http:// or https:// URL, got {url!r}")
    if parts.query or parts.fragment:
        raise UsageError(f"--base-url must not carry a query or fragment, got {url!r}")
    return url.strip().rstrip("/")


def parse_snapshot_date(text: str, *, option: str = "--snapshot-date") -> dt.date:
    """``YYYY-MM-DD`` only: the partition folder name must be unambiguous."""
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError(text)
        return dt.date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{option} must be a date as YYYY-MM-DD, got {text!r}") from None
