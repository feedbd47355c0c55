"""``xhs-profiles report DIR``: one self-contained HTML page about an output folder.

The page shows the data's freshness and the run history, the latest snapshot's outcomes by
code, its follower distribution and tiers, and from ``profile_changes`` the top growth, the
flagged creators with their reasons, identity changes, who appeared or disappeared, and the
failures to look at.  ``report_data`` reads it all through the manifests, ``report_html``
renders it, ``report_svg`` draws the charts; this module writes the file, whole, under a
temporary name renamed into place.

Why these tools.  The page is a Jinja2 template: Jinja2 (Pallets) is the most used and best
kept Python template engine, and its autoescape makes every interpolated value text, which
matters when nicknames and bios come from the API.  It lives in the optional ``report`` extra
(with MarkupSafe, both small), so the core install does not carry it.  The charts (a histogram
on a log axis, horizontal bars, columns) are a few dozen lines of hand-built SVG, because none
of the charting libraries fits a page that must open offline and be the same bytes for the
same data: pygal links its tooltip script from a CDN by default and gives every chart a fresh
uuid4 id; altair, plotly and bokeh draw in the browser with a JavaScript runtime of hundreds of
KB to MBs; leather has no log scale; matplotlib is a heavy install whose SVG text is glyph paths
in whatever fonts the rendering machine had, so Chinese labels would depend on that machine.

The page has no script, no web font, no stylesheet or image to fetch (avatars are links to
the profile instead), a Content-Security-Policy that forbids loading anything, a CJK
font-family stack, dark-mode and print styles, and no clock: every date in it comes from the
data, and every list is sorted with a tie-break, so two renders of the same folder are
identical.  Long tables are capped at their top rows, and the page says so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pipeline import report_data
from pipeline.errors import StorageError, UsageError
from pipeline.report_records import ReportData

DEFAULT_NAME: Final = "report.html"


@dataclass(frozen=True, slots=True)
class ReportWritten:
    path: Path
    size: int  # bytes
    snapshot_date: dt.date


def render(out_dir: Path) -> str:
    """The page for ``out_dir`` as text (a ``UsageError`` when there is nothing to show)."""
    return _render(report_data.load(out_dir))


def _render(data: ReportData) -> str:
    try:
        from pipeline import report_html
    except ModuleNotFoundError as exc:  # the core install, without the ``report`` extra
        if exc.name not in ("jinja2", "markupsafe"):
            raise
        raise UsageError(
            "the report needs Jinja2: install the report extra "
            "(pip install 'xhs-profiles[report]', or uv sync --extra report)"
        ) from exc
    return report_html.render(data)


def write_report(out_dir: Path, out_file: Path | None = None) -> ReportWritten:
    """Render the page for ``out_dir`` into ``out_file`` (default ``DIR/report.html``)."""
    data = report_data.load(out_dir)
    page = _render(data).encode("utf-8")
    target = out_file if out_file is not None else out_dir / DEFAULT_NAME
    _write_atomic(target, page)
    return ReportWritten(target, len(page), data.latest)


def _write_atomic(target: Path, body: bytes) -> None:
    """Write beside ``target`` under a temporary name, fsync, rename: whole or not at all."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise StorageError(
            f"cannot write the report to {target} ({exc.strerror or exc}): "
            "choose another --out or free space"
        ) from exc
