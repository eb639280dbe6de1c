"""The overview's chart: tasks ended per minute, as an inline SVG.

Geometry is computed here and drawn by ``_chart.html``: no JavaScript, no
chart library, nothing fetched from the internet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

WIDTH = 1200
HEIGHT = 220
#: Room for axis labels: left, right, top, bottom.
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 40, 10, 10, 24


@dataclass
class Bar:
    x: float
    width: float
    #: (y, height, css class) of each stacked segment, bottom first.
    segments: list[tuple[float, float, str]]
    title: str


@dataclass
class Chart:
    width: int = WIDTH
    height: int = HEIGHT
    bars: list[Bar] = field(default_factory=list)
    #: (y, label) of horizontal grid lines.
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    #: (x, label) under the x axis.
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    plot_left: float = PAD_LEFT
    plot_right: float = WIDTH - PAD_RIGHT
    plot_bottom: float = HEIGHT - PAD_BOTTOM
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    #: Most tasks ended in one minute.
    peak: int = 0


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50... that is >= *value* (at least 4)."""
    value = max(value, 4)
    magnitude: int = 10 ** int(math.floor(math.log10(value)))
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude  # pragma: no cover


def build_chart(series: list[dict[str, Any]]) -> Chart:
    """Stacked bars (succeeded, then failed, then cancelled) per minute of
    *series*, as :meth:`flask_pgtq.admin.Admin.throughput` returns it."""
    chart = Chart()
    if not series:
        return chart
    plot_w = chart.plot_right - chart.plot_left
    plot_h = chart.plot_bottom - PAD_TOP
    totals = [row["succeeded"] + row["failed"] + row["cancelled"] for row in series]
    chart.peak = max(totals)
    top = _nice_ceiling(chart.peak)
    slot = plot_w / len(series)
    gap = min(2.0, slot * 0.2)
    for i, row in enumerate(series):
        x = chart.plot_left + i * slot + gap / 2
        y = chart.plot_bottom
        segments = []
        for key in ("succeeded", "failed", "cancelled"):
            count = row[key]
            if count:
                h = count / top * plot_h
                y -= h
                segments.append((round(y, 2), round(h, 2), key))
        minute = row["minute"].astimezone(UTC).strftime("%H:%M")
        title = (
            f"{minute} UTC: {row['succeeded']} succeeded, {row['failed']} failed, "
            f"{row['cancelled']} cancelled"
        )
        chart.bars.append(Bar(round(x, 2), round(slot - gap, 2), segments, title))
        chart.succeeded += row["succeeded"]
        chart.failed += row["failed"]
        chart.cancelled += row["cancelled"]
    for fraction in (0, 0.5, 1):
        y = chart.plot_bottom - fraction * plot_h
        value = top * fraction
        label = f"{value:g}"
        chart.y_ticks.append((round(y, 2), label))
    count = len(series)
    step = 10 if count > 20 else max(1, count // 4)
    for ago in range(0, count, step):
        i = count - 1 - ago
        label = "now" if ago == 0 else f"-{ago}m"
        chart.x_ticks.insert(0, (round(chart.plot_left + (i + 0.5) * slot, 2), label))
    return chart
