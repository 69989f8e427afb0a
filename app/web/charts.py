"""Server-side SVG charts for the report pages: drawn here, inlined in the page, no script.

A chart is stacked bars, one slot per day of the period; a day without data leaves its slot empty.
Every text is escaped here (the result is Markup the templates insert as it is), each bar has a
<title> a browser shows on hover, and the whole is role="img" with an aria-label for screen readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from markupsafe import Markup

WIDTH = 900
HEIGHT = 260
TOP, BOTTOM, RIGHT = 34, 28, 12  # room for the legend above and the day labels below
CHAR_WIDTH = 7  # of the axis font, roughly: the left margin fits the longest count
Y_TICKS = 4
X_LABELS = 6
MIN_BAR_HEIGHT = 1.0  # a non-zero count stays visible next to a huge one


@dataclass(frozen=True)
class Series:
    """One part of each stacked bar: its legend text and its colour."""

    name: str
    colour: str


@dataclass(frozen=True)
class Bar:
    """One day's values, one per series, bottom first."""

    day: date
    values: tuple[int, ...]


def stacked_days(
    label: str, series: Sequence[Series], bars: Sequence[Bar], since: date, until: date, empty: str
) -> Markup:
    """The days `since`..`until` as stacked bars; `empty` said instead when no bar counts anything."""
    if not any(any(bar.values) for bar in bars):
        return Markup('<p class="chart-empty">{}</p>').format(empty)
    days = (until - since).days + 1
    top = scale_top(max(sum(bar.values) for bar in bars))
    left = 10 + CHAR_WIDTH * len(f"{top:,}")
    plot = _Plot(left, (WIDTH - left - RIGHT) / days, HEIGHT - TOP - BOTTOM, top)
    parts = [
        Markup(
            '<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" aria-label="{0}" '
            'viewBox="0 0 {1} {2}" preserveAspectRatio="xMinYMin meet"><title>{0}</title>'
        ).format(label, WIDTH, HEIGHT),
        _y_axis(plot),
        _x_axis(plot, since, days),
        *(_bar(plot, series, bar, (bar.day - since).days) for bar in bars if since <= bar.day <= until),
        _legend(series, left),
        Markup("</svg>"),
    ]
    return Markup("").join(parts)


def scale_top(highest: int) -> int:
    """The axis' top: the smallest multiple of a 1-2-5 step (Y_TICKS steps) that holds `highest`.
    Integer arithmetic: counts can be far beyond a float's exact range."""
    wanted = max(1, -(-highest // Y_TICKS))
    power = 1
    while True:
        for factor in (1, 2, 5):
            if factor * power >= wanted:
                return factor * power * Y_TICKS
        power *= 10


@dataclass(frozen=True)
class _Plot:
    left: float
    slot: float  # width per day
    height: float
    top: int  # the count at the top of the axis

    def y(self, count: int) -> float:
        return TOP + self.height - self.height * count / self.top


def _y_axis(plot: _Plot) -> Markup:
    lines = [Markup('<g class="y-axis" font-size="11" fill="#555">')]
    for tick in range(Y_TICKS + 1):
        count = plot.top * tick // Y_TICKS
        y = round(plot.y(count), 1)
        lines.append(
            Markup(
                '<line x1="{0}" x2="{1}" y1="{2}" y2="{2}" stroke="#ddd"/>'
                '<text x="{3}" y="{4}" text-anchor="end">{5}</text>'
            ).format(plot.left, WIDTH - RIGHT, y, plot.left - 5, y + 4, f"{count:,}")
        )
    lines.append(Markup("</g>"))
    return Markup("").join(lines)


def _x_axis(plot: _Plot, since: date, days: int) -> Markup:
    """The first and last day labelled, and a few evenly spaced between."""
    every = max(1, -(-days // X_LABELS))
    shown = sorted(set(range(0, days, every)) | {days - 1})
    if len(shown) > 1 and shown[-1] - shown[-2] < every * 0.75:
        shown.pop(-2)  # too close to the last label to fit beside it
    y = TOP + plot.height
    labels = [
        Markup('<g class="x-axis" font-size="11" fill="#555">'),
        Markup('<line x1="{0}" x2="{1}" y1="{2}" y2="{2}" stroke="#888"/>').format(
            plot.left, WIDTH - RIGHT, y
        ),
    ]
    for index in shown:
        x = round(plot.left + plot.slot * (index + 0.5), 1)
        anchor = (
            "start" if index == 0 and days > 1 else ("end" if index == days - 1 and days > 1 else "middle")
        )
        day = (since + timedelta(days=index)).isoformat()
        labels.append(
            Markup('<text x="{0}" y="{1}" text-anchor="{2}">{3}</text>').format(x, y + 16, anchor, day)
        )
    labels.append(Markup("</g>"))
    return Markup("").join(labels)


def _bar(plot: _Plot, series: Sequence[Series], bar: Bar, index: int) -> Markup:
    gap = min(2.0, plot.slot * 0.2)
    x, width = round(plot.left + plot.slot * index + gap / 2, 2), round(max(plot.slot - gap, 0.5), 2)
    hover = ", ".join(
        f"{value:,} {part.name.lower()}" for part, value in zip(series, bar.values, strict=True)
    )
    parts = [Markup('<g class="bar"><title>{}: {}</title>').format(bar.day.isoformat(), hover)]
    below = 0
    for part, value in zip(series, bar.values, strict=True):
        if value <= 0:
            continue
        bottom, top = plot.y(below), plot.y(below + value)
        height = max(bottom - top, MIN_BAR_HEIGHT)
        parts.append(
            Markup('<rect x="{}" y="{}" width="{}" height="{}" fill="{}" data-value="{}"/>').format(
                x, round(bottom - height, 2), width, round(height, 2), part.colour, value
            )
        )
        below += value
    parts.append(Markup("</g>"))
    return Markup("").join(parts)


def _legend(series: Sequence[Series], left: float) -> Markup:
    items = [Markup('<g class="legend" font-size="12" fill="#222">')]
    x = left
    for part in series:
        items.append(
            Markup(
                '<rect x="{0}" y="8" width="12" height="12" fill="{1}"/><text x="{2}" y="18">{3}</text>'
            ).format(x, part.colour, x + 16, part.name)
        )
        x += 16 + CHAR_WIDTH * len(part.name) + 24
    items.append(Markup("</g>"))
    return Markup("").join(items)
