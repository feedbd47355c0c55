"""Every error xhs-profiles raises on purpose, and the exit code each one ends a command with.

Only ``pipeline.cli`` turns these into messages and exit codes, in one place for every
subcommand; every other module raises them, translating foreign exceptions (httpx, sqlite3,
OSError, polars) at its own edge with ``raise ... from``.  Messages are one line, say what to
do, and never contain the API token.  The CLI prints ``xhs-profiles: <prefix><message>``.

Hierarchy::

    XhsProfilesError                    base; exit 1 if nothing more specific applies
    ├── UsageError                      exit 2: bad options or bad input, nothing was called
    │   ├── InputError                  the CSV of ids cannot be read or has no id column
    │   ├── StateError                  the checkpoint in OUT/_state cannot be used
    │   │   ├── StateLockedError        another run holds OUT
    │   │   └── StateVersionError       the state was written by an incompatible version
    │   └── SandboxError                the sandbox cannot start as asked (prefix "sandbox: ")
    │       ├── SandboxOptionError      a malformed sandbox option (a ValueError too)
    │       └── SandboxListenError      the address is taken or refused (an OSError too)
    ├── StopRun                         the run ended early and kept its progress; a rerun
    │   │                               resumes (prefix "stopped: ")
    │   ├── AccountError                exit 3: business code 100, 303, 600 or 601
    │   ├── EndpointGoneError           exit 3: the endpoint answers 404 (try --api-version v3)
    │   └── CallBudgetExhausted         exit 4: --max-calls reached
    ├── Interrupted                     exit 130: SIGINT/SIGTERM, after the calls in flight
    ├── CheckFailed                     a verdict on a dataset (the run or ``status --check``)
    │   ├── FailureThresholdExceeded    exit 6: more failures than --max-failure-rate/--max-failures
    │   ├── StaleSnapshot               exit 7: the newest complete snapshot is older than --max-age
    │   └── IncompleteSnapshot          exit 8: the expected snapshot is not complete
    ├── StorageError                    exit 5: output or state could not be written (disk full,
    │   │                               permissions, an object store refusing); progress kept
    │   └── MissingFileError            a file asked for by name is not in OUT (readers that
    │                                   treat "none yet" as an answer catch it)
    └── FetchError                      about one call for one id; never reaches the CLI
        ├── TransientError              retry later: 301, 500, 503, transport faults, bad bodies
        │   └── RateLimitedError        302: slow everyone down, retry without using an attempt
        └── PermanentError              record the id as failed: 400, 404, unknown codes,
            │                           empty data, oversized body
            └── WrongUserError          code 0 with another user's profile: failed, body kept

Account-level and per-id errors are different types on purpose (as dlt's Transient/Terminal
exceptions are): the runner's ``except`` clauses, not string matching, decide what happens.
"""

from __future__ import annotations

from typing import ClassVar, Final

EXIT_UNEXPECTED: Final = 1
EXIT_USAGE: Final = 2
EXIT_STOPPED: Final = 3
EXIT_BUDGET: Final = 4
EXIT_STORAGE: Final = 5
EXIT_FAILURES: Final = 6
EXIT_STALE: Final = 7
EXIT_INCOMPLETE: Final = 8
EXIT_INTERRUPTED: Final = 130

# What each exit code means, for ``--help`` and the README (a test holds the README to it).
EXIT_CODES: Final = {
    0: "completed: every valid id is in the profiles table or in failures.csv",
    EXIT_UNEXPECTED: "unexpected error (a bug: please report it with --debug output)",
    EXIT_USAGE: "bad usage or bad input (one-line reason; nothing was called)",
    EXIT_STOPPED: "stopped early: the API refused the account (code 100 bad token, 303 daily "
    "quota, 600 no permission, 601 no balance) or the endpoint is gone; progress kept, rerun "
    "the same command to resume",
    EXIT_BUDGET: "--max-calls reached; progress kept, rerun to go on",
    EXIT_STORAGE: "output or state could not be written (disk full, I/O error); progress kept, "
    "free space and rerun",
    EXIT_FAILURES: "completed, but more ids failed than --max-failure-rate or --max-failures "
    "allow; everything is written (status --check: the snapshot's failures are over it)",
    EXIT_STALE: "status --check: no complete snapshot newer than --max-age",
    EXIT_INCOMPLETE: "status --check: the expected snapshot is not complete",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C / SIGTERM) after finishing the calls in flight",
}

# failures.csv's ``code`` is the API's business code, or this when no usable JSON answer came
# back (timeout, connection reset, HTML error page, truncated, oversized or invalid body).
CODE_NO_RESPONSE: Final = -1
# Code 0 with an empty ``data`` (no ``userid``): the API answered but there is no profile.
CODE_UNAVAILABLE: Final = 0
# Input cells that are not ids are recorded with the API's own "invalid parameters" code.
CODE_INVALID_INPUT: Final = 400


class XhsProfilesError(Exception):
    """Base class; the CLI exits with ``exit_code`` and prints ``prefix`` before the message."""

    exit_code: ClassVar[int] = EXIT_UNEXPECTED
    prefix: ClassVar[str] = ""


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


class SandboxError(UsageError):
    """The built-in sandbox API cannot start as asked."""

    prefix = "sandbox: "


class SandboxOptionError(SandboxError, ValueError):
    """A sandbox option is malformed (a ValueError too, for callers that catch that)."""


class SandboxListenError(SandboxError, OSError):
    """The sandbox cannot listen on the requested address (an OSError too)."""

    def __init__(self, errno: int, reason: str, *, address: str) -> None:
        super().__init__(errno, reason)
        self.address = address

    def __str__(self) -> str:
        return f"cannot listen on {self.address}: {self.strerror}"


class StopRun(XhsProfilesError):
    """The run stopped early and kept its progress; ``outcome`` names it in the run summary."""

    exit_code = EXIT_STOPPED
    prefix = "stopped: "
    outcome: ClassVar[str] = "stopped"


class AccountError(StopRun):
    """An account-level business code (100, 303, 600, 601): no further call can succeed now."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class EndpointGoneError(StopRun):
    """The endpoint answered HTTP 404 without a JSON body: the API version is gone."""


class CallBudgetExhausted(StopRun):
    """--max-calls calls were made; the rest stays pending for the next run."""

    exit_code = EXIT_BUDGET
    outcome = "budget"


class Interrupted(XhsProfilesError):
    """SIGINT/SIGTERM (or Ctrl-C) stopped the command; a run first finishes its calls in flight."""

    exit_code = EXIT_INTERRUPTED

    def __init__(
        self, message: str = "interrupted; progress kept, rerun the same command to resume"
    ) -> None:
        super().__init__(message)


class CheckFailed(XhsProfilesError):
    """A dataset failed a check a scheduler asked for; nothing is wrong with the tool."""


class FailureThresholdExceeded(CheckFailed):
    exit_code = EXIT_FAILURES


class StaleSnapshot(CheckFailed):
    exit_code = EXIT_STALE


class IncompleteSnapshot(CheckFailed):
    exit_code = EXIT_INCOMPLETE


class StorageError(XhsProfilesError):
    """Writing Parquet, CSV, JSON or the SQLite state failed (disk full, permissions, I/O)."""

    exit_code = EXIT_STORAGE


class MissingFileError(StorageError):
    """A file of OUT read by name does not exist (a manifest not written yet, say)."""


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


class WrongUserError(PermanentError):
    """Code 0 with the profile of another user than the id asked (case aside): it was paid for,
    so it is not retried; it never becomes the asked id's row, and its body is kept for audit."""

    def __init__(
        self, message: str, *, returned_id: str, body: bytes, request_id: str | None
    ) -> None:
        super().__init__(message, code=CODE_UNAVAILABLE)
        self.returned_id = returned_id
        self.body = body
        self.request_id = request_id
