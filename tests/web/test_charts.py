"""app/web/charts.py on its own: well-formed SVG, one bar per day with data, heights in proportion
(also beyond a float's exact range), the empty message, escaped text."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date, timedelta

import pytest

from app.web.charts import HEIGHT, Bar, Series, scale_top, stacked_days

SVG = "{http://www.w3.org/2000/svg}"
SERIES = (Series("Passed", "#2e7d32"), Series("Failed", "#c62828"))
SINCE, UNTIL = date(2026, 11, 1), date(2026, 11, 30)


def parsed(bars: list[Bar], series: tuple[Series, ...] = SERIES, label: str = "DMARC per day") -> ET.Element:
    svg = stacked_days(label, series, bars, SINCE, UNTIL, "No reports in this period.")
    return ET.fromstring(str(svg))


def rects(root: ET.Element) -> list[ET.Element]:
    return [
        rect for bar in root.iter(f"{SVG}g") if bar.get("class") == "bar" for rect in bar.iter(f"{SVG}rect")
    ]


def test_bars_titles_legend_and_accessibility() -> None:
    root = parsed(
        [Bar(date(2026, 11, 3), (10, 5)), Bar(date(2026, 11, 5), (0, 2)), Bar(date(2026, 12, 9), (7, 7))]
    )
    assert root.get("role") == "img" and root.get("aria-label") == "DMARC per day"
    bars = [g for g in root.iter(f"{SVG}g") if g.get("class") == "bar"]
    assert len(bars) == 2, "one per day with data inside the period"
    assert [bar.findtext(f"{SVG}title") for bar in bars] == [
        "2026-11-03: 10 passed, 5 failed",
        "2026-11-05: 0 passed, 2 failed",
    ]
    assert [r.get("data-value") for r in rects(root)] == ["10", "5", "2"], "no rect for a zero"
    heights = [float(r.get("height", "")) for r in rects(root)]
    assert heights[0] == pytest.approx(2 * heights[1]) and heights[1] == pytest.approx(2.5 * heights[2])
    legend = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "legend")
    assert [t.text for t in legend.iter(f"{SVG}text")] == ["Passed", "Failed"]
    assert [r.get("fill") for r in legend.iter(f"{SVG}rect")] == ["#2e7d32", "#c62828"]
    x_labels = [
        t.text for g in root.iter(f"{SVG}g") if g.get("class") == "x-axis" for t in g.iter(f"{SVG}text")
    ]
    assert x_labels[0] == "2026-11-01" and x_labels[-1] == "2026-11-30"


def test_stacked_segments_sit_on_each_other_inside_the_plot() -> None:
    first, second = rects(parsed([Bar(date(2026, 11, 30), (300, 100))]))
    assert float(first.get("y", "")) == pytest.approx(
        float(second.get("y", "")) + float(second.get("height", ""))
    )
    assert float(first.get("y", "")) + float(first.get("height", "")) < HEIGHT
    assert float(second.get("y", "")) >= 0


def test_huge_counts_scale_and_a_small_one_stays_visible() -> None:
    huge = 2**63 - 1
    root = parsed([Bar(date(2026, 11, 1), (huge, 1)), Bar(date(2026, 11, 2), (huge // 2, 0))])
    big, tiny, half = (float(r.get("height", "")) for r in rects(root))
    assert big == pytest.approx(2 * half, rel=1e-3) and tiny >= 1.0
    ticks = [t.text for g in root.iter(f"{SVG}g") if g.get("class") == "y-axis" for t in g.iter(f"{SVG}text")]
    assert ticks[0] == "0" and ticks[-1] == f"{scale_top(huge):,}"


@pytest.mark.parametrize(("highest", "top"), [(0, 4), (1, 4), (7, 8), (123, 200), (150, 200), (5001, 8000)])
def test_scale_top_is_a_round_number_above_the_highest(highest: int, top: int) -> None:
    assert scale_top(highest) == top


def test_no_data_is_said_not_drawn() -> None:
    for bars in ([], [Bar(date(2026, 11, 3), (0, 0))]):
        shown = str(stacked_days("x", SERIES, bars, SINCE, UNTIL, "No reports in this period."))
        assert shown == '<p class="chart-empty">No reports in this period.</p>'


def test_text_is_escaped() -> None:
    root = parsed(
        [Bar(date(2026, 11, 3), (1, 1))], (Series("<b>&", "#000"), Series('"q"', "#111")), label="<x>"
    )
    assert root.get("aria-label") == "<x>" and root.findtext(f"{SVG}title") == "<x>"
    assert not list(root.iter("b")) and not list(root.iter(f"{SVG}b"))


def test_a_year_of_days() -> None:
    since = UNTIL - timedelta(days=364)
    bars = [Bar(since + timedelta(days=i), (i, 1)) for i in range(365)]
    svg = stacked_days("year", SERIES, bars, since, UNTIL, "none")
    root = ET.fromstring(str(svg))
    assert len([g for g in root.iter(f"{SVG}g") if g.get("class") == "bar"]) == 365
    assert all(float(r.get("width", "")) > 0 for r in rects(root))
