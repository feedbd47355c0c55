"""The report's charts as inline SVG strings: a log-scale histogram, horizontal bars, columns.

Built by hand (see ``pipeline.report`` for why no charting library): every number is rounded to
one decimal, so the same data gives the same bytes; colours come from CSS classes the page
defines (light, dark and print alike); every mark carries a ``<title>`` the browser shows as a
tooltip, with no script.  Text is escaped here; the strings are ready to be put in the page as
they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Final

WIDTH: Final = 720


@dataclass(frozen=True, slots=True)
class Mark:
    """One bar: its label, value, CSS class and tooltip."""

    label: str
    value: int
    css: str = "bar"
    tip: str = ""


def compact(value: float) -> str:
    """1 234 → 1.2K, 3 400 000 → 3.4M: axis labels."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= size:
            text = f"{value / size:.1f}".removesuffix(".0")
            return f"{text}{unit}"
    return f"{value:.0f}"


def _n(value: float) -> str:
    """A coordinate: at most one decimal, no trailing zero (stable bytes, small files)."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _axis_step(value: int) -> int:
    """A 1, 2 or 5 × 10^k step that splits 0..``value`` into at most 4 intervals."""
    target = max(value / 4, 1.0)
    power: int = 10 ** math.floor(math.log10(target))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= target)


def _ceiling(value: int) -> tuple[int, int]:
    """The axis top (a whole number of steps at or above ``value``) and its step."""
    step = _axis_step(value)
    return max(math.ceil(value / step), 1) * step, step


def _svg(height: float, label: str, body: Sequence[str]) -> str:
    return (
        f'<svg class="chart" width="{WIDTH}" height="{_n(height)}" '
        f'viewBox="0 0 {WIDTH} {_n(height)}" role="img" aria-label="{escape(label)}">'
        + "".join(body)
        + "</svg>"
    )


def _line(css: str, x1: float, x2: float, y1: float, y2: float) -> str:
    return f'<line class="{css}" x1="{_n(x1)}" x2="{_n(x2)}" y1="{_n(y1)}" y2="{_n(y2)}"/>'


def _text(css: str, x: float, y: float, text: str, anchor: str = "start") -> str:
    align = "" if anchor == "start" else f' text-anchor="{anchor}"'
    return f'<text class="{css}" x="{_n(x)}" y="{_n(y)}"{align}>{escape(text)}</text>'


def _rect(css: str, x: float, y: float, w: float, h: float, tip: str) -> str:
    return (
        f'<rect class="{escape(css)}" x="{_n(x)}" y="{_n(y)}" width="{_n(w)}" height="{_n(h)}">'
        f"<title>{escape(tip)}</title></rect>"
    )


def _y_axis(
    left: float, right: float, top: float, bottom: float, value: int
) -> tuple[list[str], int]:
    """Grid lines and labels from 0 to the axis top; returns them and the top."""
    ceiling, step = _ceiling(value)
    parts = []
    for tick in range(0, ceiling + 1, step):
        y = bottom - (bottom - top) * tick / ceiling
        parts.append(_line("grid", left, right, y, y))
        parts.append(_text("tick", left - 6, y + 4, compact(tick), "end"))
    return parts, ceiling


def log_histogram(
    bins: Sequence[tuple[int, int | None, int]], *, label: str, unit: str = "creators"
) -> str:
    """Bars over a log₁₀ axis; ``bins`` are (low, high, count), high exclusive, and a bin with
    high None holds the zeros (drawn apart at the left: a log axis has no 0)."""
    height, top, bottom, left, right = 240.0, 16.0, 206.0, 52.0, WIDTH - 12.0
    zeros = [b for b in bins if b[1] is None]
    spans = [b for b in bins if b[1] is not None]
    parts, ceiling = _y_axis(left, right, top, bottom, max((b[2] for b in bins), default=1))
    start = left + 8
    if zeros:
        count = zeros[0][2]
        parts += _column(start, 28.0, count, ceiling, top, bottom, f"0 followers: {count:,} {unit}")
        parts.append(_text("tick", start + 14, bottom + 16, "0", "middle"))
        start += 28.0 + 16
    if spans:
        low_power = int(math.log10(min(b[0] for b in spans)))
        high_power = max(math.log10(max(b[1] or 1 for b in spans)), low_power + 1.0)

        def x_of(value: int) -> float:
            return start + (right - start) * (math.log10(value) - low_power) / (
                high_power - low_power
            )

        for low, high, count in spans:
            end = high or low + 1
            x0, x1 = x_of(low), x_of(end)
            span = f"{low:,}" if end == low + 1 else f"{low:,}–{end - 1:,}"
            tip = f"{span} followers: {count:,} {unit}"
            parts += _column(x0 + 0.5, max(x1 - x0 - 1, 0.5), count, ceiling, top, bottom, tip)
        for power in range(low_power, int(high_power) + 1):
            x = x_of(10**power)
            parts.append(_line("axis", x, x, bottom, bottom + 4))
            parts.append(_text("tick", x, bottom + 16, compact(10**power), "middle"))
    parts.append(_line("axis", left, right, bottom, bottom))
    parts.append(
        _text("caption", (left + right) / 2, height - 4, "followers (log scale)", "middle")
    )
    return _svg(height, label, parts)


def _column(
    x: float, w: float, count: int, ceiling: int, top: float, bottom: float, tip: str
) -> list[str]:
    h = max((bottom - top) * count / ceiling, 1.0) if count else 0.0
    parts = [_rect("bar", x, bottom - h, w, h, tip)]
    if count and w >= 16:
        parts.append(_text("value", x + w / 2, bottom - h - 3, compact(count), "middle"))
    return parts


def hbars(marks: Sequence[Mark], *, label: str, label_width: float = 170.0) -> str:
    """One horizontal bar per mark, its label at the left, its value after it."""
    row, top = 24.0, 6.0
    height = top * 2 + row * max(len(marks), 1)
    left, right = label_width, WIDTH - 80.0
    ceiling = max((m.value for m in marks), default=0) or 1
    parts = []
    for i, mark in enumerate(marks):
        y = top + row * i
        w = max((right - left) * mark.value / ceiling, 1.0) if mark.value else 0.0
        parts.append(_text("label", left - 8, y + row / 2 + 4, mark.label, "end"))
        parts.append(_rect(mark.css, left, y + 4, w, row - 8, mark.tip or mark.label))
        parts.append(_text("value", left + w + 6, y + row / 2 + 4, f"{mark.value:,}"))
    parts.append(_line("axis", left, left, top, height - top))
    return _svg(height, label, parts)


def columns(marks: Sequence[Mark], *, label: str, caption: str) -> str:
    """Vertical bars of equal width, in the order given, labels under them (thinned out)."""
    height, top, bottom, left, right = 220.0, 16.0, 184.0, 52.0, WIDTH - 12.0
    parts, ceiling = _y_axis(left, right, top, bottom, max((m.value for m in marks), default=1))
    slot = (right - left - 8) / max(len(marks), 1)
    every = max(1, math.ceil(len(marks) / 12))
    for i, mark in enumerate(marks):
        x = left + 8 + slot * i
        w = min(max(slot * 0.7, 1.0), 36.0)
        h = max((bottom - top) * mark.value / ceiling, 1.0)  # zero calls still show a line
        parts.append(_rect(mark.css, x, bottom - h, w, h, mark.tip or mark.label))
        if i % every == 0 or i == len(marks) - 1:
            parts.append(_text("tick", x + w / 2, bottom + 16, mark.label, "middle"))
    parts.append(_line("axis", left, right, bottom, bottom))
    parts.append(_text("caption", (left + right) / 2, height - 4, caption, "middle"))
    return _svg(height, label, parts)
