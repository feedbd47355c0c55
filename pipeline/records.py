"""Small records that cross step boundaries (client → state → flatten/sink, fetcher → runner).

They live here, beside ``config`` and ``errors``, so that no step imports another step.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FetchedProfile:
    """One successful response, as stored in the state and fed to ``flatten``.

    ``data_json`` is the envelope's ``data`` object serialized as compact UTF-8 JSON; it is what
    ``raw_json`` holds, so nothing the API sent about the user is lost.
    """

    user_id: str
    data_json: bytes
    request_id: str | None
    fetched_at: dt.datetime  # aware, UTC


@dataclass(frozen=True, slots=True)
class InputRow:
    """One non-blank cell of the input's id column.

    ``user_id`` is the normalized 24-hex id, or None when the cell is not a valid id; then
    ``reason`` says why (it goes to failures.csv with code 400, and the cell is never sent).
    """

    line: int  # 1-based line of the CSV record (the header, if any, is line 1)
    raw: str
    user_id: str | None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """One row of failures.csv."""

    user_id: str
    code: int | None
    message: str
    attempts: int
    last_attempt_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class Part:
    """A Parquet file of one table that the state records as part of the snapshot."""

    table: str
    path: str  # relative to --out, with forward slashes
    rows: int


@dataclass(slots=True)
class Tally:
    """Running counts of one run's calls and outcomes, kept by the fetch loop (mutable)."""

    done: int = 0  # ids that reached a final outcome this run (fetched or failed)
    fetched: int = 0
    failed: int = 0
    retried: int = 0
    rate_limited: int = 0
    wrong_user: int = 0  # answers with another user's profile (counted in failed too)
    calls: int = 0
    rate: float | None = None  # the limiter's current requests/s
    retrying: int = 0  # ids waiting out a back-off in the fetch loop's retry heap, now
    window: int | None = None  # the limiter's in-flight limit
    in_flight: int = 0  # calls sent and not yet answered
    round_trip_s: float | None = None  # the limiter's smoothed round trip


@dataclass(slots=True)
class CallTrace:
    """How one call's exchange went, filled in by the client when the fetch loop asks for it
    (``--debug`` call events): the HTTP status (None when no answer came) and the seconds from
    sending the request (after the limiter's wait) to the end of the answer."""

    http_status: int | None = None
    latency_s: float | None = None
