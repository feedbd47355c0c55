"""UTC moments as the tool stores and prints them: epoch microseconds and ISO 8601 with ``Z``.

Every moment the pipeline records is aware UTC; a naive one (from a caller that forgot) is read
as UTC rather than as local time, so a file never shifts by the machine's offset.
"""

from __future__ import annotations

import datetime as dt
from typing import Final, Literal

EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND: Final = dt.timedelta(microseconds=1)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def to_epoch_us(moment: dt.datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return (moment - EPOCH) // _MICROSECOND


def from_epoch_us(value: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=value)


def iso_utc(
    moment: dt.datetime, timespec: Literal["seconds", "milliseconds"] = "milliseconds"
) -> str:
    """``2026-11-28T03:04:05.678Z`` (or to the second)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec=timespec).replace("+00:00", "Z")
