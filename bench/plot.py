"""Small hand-written SVG charts, so the benchmarks need no plotting library.

Two shapes cover what docs/performance.md shows: a line chart (a quantity against
cluster size, optionally on log axes) and a grouped bar chart (the same measurement
for Cube, Docker and Swarm side by side).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 360
LEFT, RIGHT, TOP, BOTTOM = 70, 150, 40, 50
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
FONT = 'font-family="sans-serif" font-size="12"'
TITLE_FONT = 'font-family="sans-serif" font-size="15"'
SMALL_FONT = 'font-family="sans-serif" font-size="10"'


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]


def _ticks(low: float, high: float, log: bool) -> list[float]:
    if log:
        first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
        return [10.0**e for e in range(first, last + 1)]
    step = 10 ** math.floor(math.log10(max(high - low, 1e-9)))
    while (high - low) / step > 8:
        step *= 2
    while (high - low) / step < 3:
        step /= 2
    start = math.floor(low / step) * step
    return [start + i * step for i in range(int((high - start) / step) + 2)]


def _label(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:g}"
    return f"{value:.2g}"


def _frame(title: str, x_label: str, y_label: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="22" {TITLE_FONT} font-weight="bold">{escape(title)}</text>',
        f'<text x="{LEFT + (WIDTH - LEFT - RIGHT) / 2}" y="{HEIGHT - 10}" {FONT} '
        f'text-anchor="middle">{escape(x_label)}</text>',
        f'<text x="16" y="{TOP + (HEIGHT - TOP - BOTTOM) / 2}" {FONT} text-anchor="middle" '
        f'transform="rotate(-90 16 {TOP + (HEIGHT - TOP - BOTTOM) / 2})">{escape(y_label)}</text>',
    ]


def _legend(names: list[str]) -> list[str]:
    parts = []
    for i, name in enumerate(names):
        y = TOP + 10 + i * 20
        x = WIDTH - RIGHT + 15
        colour = COLOURS[i % len(COLOURS)]
        parts.append(f'<rect x="{x}" y="{y - 9}" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{x + 18}" y="{y + 1}" {FONT}>{escape(name)}</text>')
    return parts


def _y_grid(y_ticks: list[float], fy: Callable[[float], float], plot_w: float) -> list[str]:
    """Horizontal grid lines with their labels, shared by both kinds of chart."""
    parts = []
    for y in y_ticks:
        parts.append(
            f'<line x1="{LEFT}" y1="{fy(y):.1f}" x2="{LEFT + plot_w}" y2="{fy(y):.1f}" '
            'stroke="#ddd"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{fy(y) + 4:.1f}" {FONT} text-anchor="end">{_label(y)}</text>'
        )
    return parts


def line_chart(
    title: str,
    x_label: str,
    y_label: str,
    series: list[Series],
    *,
    log_x: bool = False,
    log_y: bool = False,
) -> str:
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    x_ticks = _ticks(min(xs), max(xs), log_x)
    y_ticks = _ticks(min(ys) if log_y else 0.0, max(ys), log_y)
    x0, x1 = x_ticks[0], x_ticks[-1]
    y0, y1 = y_ticks[0], y_ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def fx(x: float) -> float:
        t = (
            (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0))
            if log_x
            else ((x - x0) / (x1 - x0))
        )
        return LEFT + t * plot_w

    def fy(y: float) -> float:
        t = (
            (math.log10(y) - math.log10(y0)) / (math.log10(y1) - math.log10(y0))
            if log_y
            else ((y - y0) / (y1 - y0))
        )
        return TOP + plot_h - t * plot_h

    parts = _frame(title, x_label, y_label)
    parts += _y_grid(y_ticks, fy, plot_w)
    for x in x_ticks:
        parts.append(
            f'<text x="{fx(x):.1f}" y="{TOP + plot_h + 18}" {FONT} text-anchor="middle">'
            f"{_label(x)}</text>"
        )
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>'
    )
    for i, s in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in s.points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in s.points:
            parts.append(f'<circle cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="3" fill="{colour}"/>')
    parts += _legend([s.name for s in series])
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def bar_chart(
    title: str, y_label: str, groups: list[tuple[str, dict[str, float]]], names: list[str]
) -> str:
    """Bars of ``names`` (one colour each) within each labelled group."""
    top = max((v for _, values in groups for v in values.values()), default=1.0)
    y_ticks = _ticks(0.0, top, False)
    y1 = y_ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def fy(y: float) -> float:
        return TOP + plot_h - y / y1 * plot_h

    parts = _frame(title, "", y_label)
    parts += _y_grid(y_ticks, fy, plot_w)
    group_w = plot_w / max(len(groups), 1)
    bar_w = group_w * 0.8 / max(len(names), 1)
    for g, (label, values) in enumerate(groups):
        gx = LEFT + g * group_w + group_w * 0.1
        for i, name in enumerate(names):
            if name not in values:
                continue
            value = values[name]
            colour = COLOURS[i % len(COLOURS)]
            x = gx + i * bar_w
            parts.append(
                f'<rect x="{x:.1f}" y="{fy(value):.1f}" width="{bar_w - 2:.1f}" '
                f'height="{TOP + plot_h - fy(value):.1f}" fill="{colour}"/>'
            )
            parts.append(
                f'<text x="{x + bar_w / 2 - 1:.1f}" y="{fy(value) - 4:.1f}" {SMALL_FONT} '
                f'text-anchor="middle">{value:.1f}</text>'
            )
        parts.append(
            f'<text x="{gx + group_w * 0.4:.1f}" y="{TOP + plot_h + 18}" {FONT} '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>'
    )
    parts += _legend(names)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
