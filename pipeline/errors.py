"""Every error xhs-profiles raises on purpose, and the exit code each one ends a run with.

Only ``pipeline.cli`` turns these into messages and exit codes; every other module raises them,
translating foreign exceptions (httpx, sqlite3, OSError, polars) at its own edge with
``raise ... from``.  Messages are one line, say what to do, and never contain the API token.

Hierarchy::

    XhsProfilesError                    base; exit 1 if nothing more specific applies
    ├── UsageError                      exit 2: bad options or bad input, nothing was called
    │   ├── InputError                  the CSV of ids cannot be read or has no id column
    │   └── StateError                  the checkpoint in OUT/_state cannot be used
    │       ├── StateLockedError        another run holds OUT
    │       └── StateVersionError       the state was written by an incompatible version
    ├── StopRun                         exit 3: the API says no further call can succeed now;
    │   │                               progress is kept and a rerun resumes
    │   ├── AccountError                business code 100, 303, 600 or 601
    │   └── EndpointGoneError           the endpoint itself answers 404 (try --api-version v3)
    ├── CallBudgetExhausted             exit 4: --max-calls reached; progress kept
    ├── StorageError                    exit 5: output or state could not be written (disk full,
    │                                   permissions); progress kept
    └── FetchError                      about one call for one id; never reaches the CLI
        ├── TransientError              retry later: 301, 500, 503, transport faults, bad bodies
        │   └── RateLimitedError        302: slow everyone down, retry without using an attempt
        └── PermanentError              record the id as failed: 400, 404, unknown codes,
                                        empty data, oversized body

Account-level and per-id errors are different types on purpose (as dlt's Transient/Terminal
exceptions are): the runner's ``except`` clauses, not string matching, decide what happens.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3
EXIT_BUDGET = 4
EXIT_STORAGE = 5
EXIT_INTERRUPTED = 130

# failures.csv's ``code`` is the API's business code, or this when no usable JSON answer came
# back (timeout, connection reset, HTML error page, truncated, oversized or invalid body).
CODE_NO_RESPONSE = -1
# Code 0 with an empty ``data`` (no ``userid``): the API answered but there is no profile.
CODE_UNAVAILABLE = 0
# Input cells that are not ids are recorded with the API's own "invalid parameters" code.
CODE_INVALID_INPUT = 400


class XhsProfilesError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code: int = EXIT_UNEXPECTED


class UsageError(XhsProfilesError):
    exit_code = EXIT_USAGE


class InputError(UsageError):
    """The input CSV is missing, empty, binary, undecodable, ragged or has no id column."""


class StateError(UsageError):
    """OUT/_state cannot be used as it is."""


class StateLockedError(StateError):
    """Another xhs-profiles process is writing to the same --out."""


class StateVersionError(StateError):
    """The state was written by a version of the tool that this one cannot read."""


class StopRun(XhsProfilesError):
    """No further call can succeed now; the run stops and keeps its progress."""

    exit_code = EXIT_STOPPED


class AccountError(StopRun):
    """An account-level business code (100, 303, 600, 601)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class EndpointGoneError(StopRun):
    """The endpoint answered HTTP 404 without a JSON body: the API version is gone."""


class CallBudgetExhausted(XhsProfilesError):
    """--max-calls calls were made; the rest stays pending for the next run."""

    exit_code = EXIT_BUDGET


class StorageError(XhsProfilesError):
    """Writing Parquet, CSV, JSON or the SQLite state failed (disk full, permissions, I/O)."""

    exit_code = EXIT_STORAGE


class FetchError(XhsProfilesError):
    """One call for one id went wrong; ``code`` is the business code, or a transport marker."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def message(self) -> str:
        return str(self)


class TransientError(FetchError):
    """Worth retrying after a back-off (uses one of the id's attempts)."""


class RateLimitedError(TransientError):
    """Business code 302: the shared rate is lowered; the retry does not use an attempt."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, code=302)
        self.retry_after = retry_after


class PermanentError(FetchError):
    """Retrying will not help: the id is recorded as failed with ``code``."""
