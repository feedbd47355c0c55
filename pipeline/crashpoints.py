"""Named places where the process can be made to die with SIGKILL, to prove crash safety.

Set ``XHS_PROFILES_CRASH_AT=name`` (or ``name:N`` for the N-th time the point is reached) and the
process kills itself there, as ``kill -9`` would: no cleanup, no ``finally``.  Unset (always, in
production) the check is one comparison with None.

Points: after_response (a paid answer is in memory, not yet stored), after_store (committed to
the state), mid_part_write (a Parquet temp file half written), after_part_rename (a part is in
place but the state does not know it), mid_failures_write (failures.csv temp half written),
after_compact_swap (the state swapped parts, old files not yet deleted), before_manifest,
mid_assembly (the last shard wrote the snapshot's changes file and failures.csv, not yet its
manifest).

Where they are: after_response and after_store in ``fetcher`` around ``record_success``;
mid_part_write and mid_failures_write in ``sink`` once the bytes are in the temp file (neither
fsynced nor renamed yet); after_part_rename, after_compact_swap and before_manifest in
``runner``; mid_assembly in ``assemble``.

A point given the ``half_written`` file it is writing flushes it and cuts it to half its size
before dying, so the temp file left behind is torn as a kill during a slow write would leave
it (buffered bytes would otherwise just vanish with the process).
"""

from __future__ import annotations

import os
import signal
from typing import IO, Final

ENV: Final = "XHS_PROFILES_CRASH_AT"
POINTS: Final = (
    "after_response",
    "after_store",
    "mid_part_write",
    "after_part_rename",
    "mid_failures_write",
    "after_compact_swap",
    "before_manifest",
    "mid_assembly",
)


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, nth = spec.partition(":")
    if name not in POINTS:
        # A typo would make a crash test pass without ever crashing: refuse it loudly.
        raise ValueError(f"{ENV}={spec!r}: unknown crash point; use one of {', '.join(POINTS)}")
    return name, int(nth or 1)


_target = _parse(os.environ.get(ENV))
_seen: dict[str, int] = {}


def crash_point(name: str, *, half_written: IO[bytes] | None = None) -> None:
    """Die here with SIGKILL if the environment asks for it."""
    if _target is None or _target[0] != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] >= _target[1]:
        if half_written is not None:
            _tear(half_written)
        os.kill(os.getpid(), signal.SIGKILL)


def _tear(handle: IO[bytes]) -> None:
    handle.flush()
    size = handle.tell()
    handle.truncate(size // 2)
    handle.flush()
    os.fsync(handle.fileno())
