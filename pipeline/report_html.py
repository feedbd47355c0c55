"""The report's page: ``ReportData`` → one self-contained HTML document (Jinja2, autoescaped).

The template is ``pipeline/templates/report.html.j2``; the charts come from ``report_svg``.
Every value from the data is escaped by Jinja2's autoescape (a nickname is text from the API,
not markup); only the SVG strings, escaped where they were built, go in as ``Markup``.  The
page's Content-Security-Policy allows inline styles and nothing else, so even a value that
slipped through could not make the browser load anything.
"""

from __future__ import annotations

import datetime as dt
from importlib import resources
from typing import Final

import jinja2
from markupsafe import Markup

from pipeline import report_records as rd
from pipeline import report_svg
from pipeline.config import TOOL_VERSION

TEMPLATE: Final = "templates/report.html.j2"
_MINUS: Final = "−"  # U+2212, the typographic minus


def render(data: rd.ReportData) -> str:
    env = jinja2.Environment(
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        num=num, signed=signed, pct=pct, rate=rate, cut=cut, duration=duration, when=when
    )
    source = resources.files("pipeline").joinpath(TEMPLATE).read_text("utf-8")
    template = env.from_string(source)
    return template.render(
        d=data,
        charts=_charts(data),
        version=TOOL_VERSION,
        states=rd.ChangesState,
        code_labels=rd.CODE_LABELS,
        fallback_tiers=rd.FALLBACK_TIERS,
    )


def _charts(data: rd.ReportData) -> dict[str, Markup]:
    charts: dict[str, Markup] = {}
    runs = list(reversed(data.runs.rows))  # oldest first, left to right
    if runs:
        charts["runs"] = Markup(
            report_svg.columns(
                [
                    report_svg.Mark(
                        run.started_at[5:10],
                        run.calls,
                        f"o-{run.outcome}",
                        f"{run.started_at} · dt={run.snapshot_date} · {run.outcome} · "
                        f"{run.calls:,} calls · {duration(run.duration_s)}",
                    )
                    for run in runs
                ],
                label="calls per run, oldest to newest",
                caption="calls per run (start date, UTC)",
            )
        )
    charts["outcomes"] = Markup(
        report_svg.hbars(
            [
                report_svg.Mark(
                    "profile written" if o.code is None else f"code {o.code}",
                    o.count,
                    _code_css(o.code),
                    f"{o.label}: {o.count:,}",
                )
                for o in data.outcomes
            ],
            label=f"outcomes of snapshot {data.latest.isoformat()} by code",
        )
    )
    if data.histogram:
        charts["followers"] = Markup(
            report_svg.log_histogram(
                [(b.low, b.high, b.count) for b in data.histogram],
                label=f"followers of the {data.fans_known:,} creators, log scale",
            )
        )
    charts["tiers"] = Markup(
        report_svg.hbars(
            [
                report_svg.Mark(f"{t.label} {t.tier}" if t.tier else "no tier", t.count, "bar", "")
                for t in data.tiers
            ],
            label="creators by tier",
            label_width=130.0,
        )
    )
    return charts


def _code_css(code: int | None) -> str:
    if code is None:
        return "c-written"
    if code in (-1, 301, 500, 503):
        return "c-transient"
    return "c-permanent"


# ------------------------------------------------------------------------ template filters


def num(value: int | float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def signed(value: int | None) -> str:
    if value is None:
        return "—"
    return f"+{value:,}" if value > 0 else (f"{_MINUS}{-value:,}" if value < 0 else "0")


def pct(value: float | None) -> str:
    if value is None:
        return "—"
    text = f"{abs(value):,.1f}%"
    return f"+{text}" if value > 0 else (f"{_MINUS}{text}" if value < 0 else "0%")


def rate(value: float | None) -> str:
    if value is None:
        return "—"
    text = f"{abs(value):,.1f}"
    return f"+{text}" if value > 0 else (f"{_MINUS}{text}" if value < 0 else "0")


def cut(text: str | None, limit: int = rd.TEXT_CUT) -> str:
    if text is None:
        return ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def when(moment: str | None) -> str:
    """``2026-11-28T03:04:05.678Z`` → ``2026-11-28 03:04:05``; anything else as it is."""
    if not moment:
        return "—"
    try:
        parsed = dt.datetime.fromisoformat(moment)
    except ValueError:
        return moment
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC)
    return parsed.strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
