"""Named places where the process can be made to die with SIGKILL, to prove crash safety.

Set ``XHS_PROFILES_CRASH_AT=name`` (or ``name:N`` for the N-th time the point is reached) and the
process kills itself there, as ``kill -9`` would: no cleanup, no ``finally``.  Unset (always, in
production) the check is one dict lookup.

Points: after_response (a paid answer is in memory, not yet stored), after_store (committed to
the state), mid_part_write (a Parquet temp file half written), after_part_rename (a part is in
place but the state does not know it), mid_failures_write (failures.csv temp half written),
after_compact_swap (the state swapped parts, old files not yet deleted), before_manifest.
"""

from __future__ import annotations

import os
import signal
from typing import Final

ENV: Final = "XHS_PROFILES_CRASH_AT"


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, nth = spec.partition(":")
    return name, int(nth or 1)


_target = _parse(os.environ.get(ENV))
_seen: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die here with SIGKILL if the environment asks for it."""
    if _target is None or _target[0] != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] >= _target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
