"""Tiny inline-SVG charts for the reports: readable in any browser, no plotting library to bundle.

Each chart scales to the width of the page (a viewBox, width 100%) and has a value axis with
round ticks and faint grid lines. Each mark carries a `data-kind` attribute (`point`, `bar`,
`segment`, `gap`, `diagonal`) so tests can count what a chart shows; only bars carry a `data-value`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 960, 300, 84, 28, 48, 52
LEFT, RIGHT, TOP, BOTTOM = PAD_L, W - PAD_R, PAD_T, H - PAD_B
BLUE, GREEN, GRID, INK = "#1f6feb", "#2da44e", "#e6e6e6", "#444"

Tick = tuple[float, str]  # x position in the chart, label
Band = tuple[float, float, str]  # x from, x to, label: a stretch the data leaves out (an idle gap)


def nice_ticks(lo: float, hi: float, n: int = 5, least: float = 0.0) -> list[float]:
    """Round values (1, 2 or 5 times a power of ten apart, at least `least`) from at most `lo` to at least `hi`."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / n
    power = 10 ** math.floor(math.log10(raw))
    step = max(next(m * power for m in (1, 2, 5, 10) if m * power >= raw), least)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 10) for k in range(first, last + 1)]


def _scale(lo: float, hi: float, out_lo: float, out_hi: float):
    span = (hi - lo) or 1.0
    return lambda v: out_lo + (v - lo) / span * (out_hi - out_lo)


def _number(v: float) -> str:
    return f"{v:,.0f}".replace(",", " ") if abs(v) >= 10_000 else f"{v:g}"


def _y_axis(hi: float, unit: str, least: float = 0.0):
    """The value scale from 0 to a round top at or above `hi`, and its ticks and grid lines."""
    ticks = nice_ticks(0.0, hi or 1.0, least=least)
    sy = _scale(0.0, ticks[-1], BOTTOM, TOP)
    marks = "".join(
        f'<line x1="{LEFT}" y1="{sy(t):.1f}" x2="{RIGHT}" y2="{sy(t):.1f}" stroke="{GRID}"/>'
        f'<text x="{LEFT - 8}" y="{sy(t) + 4:.1f}" font-size="12" text-anchor="end">'
        f'{escape(f"{_number(t)} {unit}".strip())}</text>' for t in ticks)
    return sy, marks


def _frame(title: str, note: str, body: str, y_marks: str, x_ticks: Sequence[Tick], x_caption: str,
           bands: Sequence[Band] = (), height: float = H, x_marks: str = "") -> str:
    """Title, note, value axis and grid, x ticks and caption around `body`; `height` beyond H leaves room
    under the axis for slanted names (`x_marks`)."""
    bottom = BOTTOM
    shaded = "".join(
        f'<rect data-kind="gap" x="{lo:.1f}" y="{TOP}" width="{hi - lo:.1f}" height="{bottom - TOP}" fill="#f3f3f3"/>'
        f'<text x="{(lo + hi) / 2:.1f}" y="{TOP + 16}" font-size="11" fill="#666" text-anchor="middle">idle</text>'
        f'<text x="{(lo + hi) / 2:.1f}" y="{TOP + 30}" font-size="11" fill="#666" text-anchor="middle">'
        f"{escape(label)}</text>" for lo, hi, label in bands)
    ticks = "".join(
        f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 5}" stroke="{INK}"/>'
        f'<text x="{x:.1f}" y="{bottom + 18}" font-size="12" text-anchor="middle">{escape(label)}</text>'
        for x, label in x_ticks)
    sub = f'<text x="{LEFT}" y="38" font-size="12" fill="#555">{escape(note)}</text>' if note else ""
    full = f"{title} — {note}" if note else title
    body = body or (f'<text x="{(LEFT + RIGHT) / 2}" y="{(TOP + bottom) / 2}" font-size="13" fill="#888" '
                    'text-anchor="middle">nothing to plot</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height:g}" width="100%" role="img">'
        f"<title>{escape(full)}</title>"
        f'<text x="{LEFT}" y="20" font-size="15" font-weight="bold">{escape(title)}</text>{sub}'
        f"{shaded}{y_marks}"
        f'<line x1="{LEFT}" y1="{bottom}" x2="{RIGHT}" y2="{bottom}" stroke="{INK}"/>'
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" stroke="{INK}"/>'
        f"{ticks}{x_marks}"
        f'<text x="{(LEFT + RIGHT) / 2}" y="{height - 8:g}" font-size="12" fill="#555" text-anchor="middle">'
        f"{escape(x_caption)}</text>{body}</svg>"
    )


def _dots(points: Sequence[tuple[float, float]]) -> str:
    return "".join(f'<circle data-kind="point" cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{BLUE}"/>' for x, y in points)


def _line(points: Sequence[tuple[float, float]]) -> str:
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline data-kind="segment" points="{line}" fill="none" stroke="{BLUE}" stroke-opacity="0.35"/>'


def scatter(points: Sequence[tuple[float, float]], title: str, x_caption: str, y_unit: str, note: str = "",
            names: Sequence[str] = ()) -> str:
    """One dot per point (x, y), joined by a faint line in x order, on round ticks of both values; each
    named beside it when `names` are given (one per point)."""
    sy, y_marks = _y_axis(max((p[1] for p in points), default=1.0) * 1.05, y_unit)
    if not points:
        return _frame(title, note, "", y_marks, [], x_caption)
    xt = nice_ticks(min(p[0] for p in points), max(p[0] for p in points), 6)
    sx = _scale(xt[0], xt[-1], LEFT + 4, RIGHT - 4)
    order = sorted(range(len(points)), key=lambda i: points[i])
    ordered = [(sx(points[i][0]), sy(points[i][1])) for i in order]
    tags = "".join(f'<text x="{x + 6:.1f}" y="{y - 6:.1f}" font-size="12">{escape(names[i])}</text>'
                   for i, (x, y) in zip(order, ordered, strict=True)) if names else ""
    return _frame(title, note, _line(ordered) + _dots(ordered) + tags, y_marks,
                  [(sx(t), _number(t)) for t in xt], x_caption)


def series(segments: Sequence[Sequence[tuple[float, float]]], title: str, x_ticks: Sequence[Tick], x_caption: str,
           y_unit: str, bands: Sequence[Band] = (), note: str = "") -> str:
    """Dots at (x in the chart, value), one line per segment: never drawn across a band between two."""
    values = [v for seg in segments for _, v in seg]
    sy, y_marks = _y_axis(max(values, default=1.0) * 1.05, y_unit)
    body = "".join(_line([(x, sy(v)) for x, v in seg]) for seg in segments if len(seg) > 1)
    body += _dots([(x, sy(v)) for seg in segments for x, v in seg])
    return _frame(title, note, body, y_marks, x_ticks, x_caption, bands)


def columns(cols: Sequence[tuple[float, float, int]], title: str, x_ticks: Sequence[Tick], x_caption: str,
            y_unit: str, bands: Sequence[Band] = ()) -> str:
    """A bar per (x from, x to, count), e.g. photos in each minute of a period of work."""
    sy, y_marks = _y_axis(max((c[2] for c in cols), default=1), y_unit, least=1)
    body = "".join(
        f'<rect data-kind="bar" data-value="{v:g}" x="{lo + 0.5:.1f}" y="{sy(v):.1f}" '
        f'width="{max(hi - lo - 1, 1):.1f}" height="{BOTTOM - sy(v):.1f}" fill="{GREEN}"/>' for lo, hi, v in cols)
    return _frame(title, "", body, y_marks, x_ticks, x_caption, bands)


def bars(values: Sequence[float], title: str, names: Sequence[str], y_unit: str, x_caption: str = "") -> str:
    """One bar per value, left to right, each named under it (slanted), or the first and last when crowded."""
    sy, y_marks = _y_axis(max(values, default=1.0), y_unit)
    slot = (RIGHT - LEFT) / max(len(values), 1)
    width = max(min(slot - 2, 72), 1)
    body = "".join(
        f'<rect data-kind="bar" data-value="{v:g}" x="{LEFT + i * slot + (slot - width) / 2:.1f}" y="{sy(v):.1f}" '
        f'width="{width:.1f}" height="{BOTTOM - sy(v):.1f}" fill="{GREEN}"/>' for i, v in enumerate(values))
    shown = range(len(names)) if slot >= 14 else [0, len(names) - 1] if names else []
    labels = "".join(
        f'<text transform="translate({LEFT + (i + 0.5) * slot:.1f},{BOTTOM + 14}) rotate(-35)" font-size="11" '
        f'text-anchor="end">{escape(names[i][:28])}</text>' for i in sorted(set(shown)))
    room = max((len(n[:28]) for n in names), default=0) * 6.2 * 0.57  # the longest name, slanted 35°
    return _frame(title, "", body, y_marks, [], x_caption, height=round(H + room + 6), x_marks=labels)


def histogram(values: Sequence[float], title: str, x_caption: str, bins: int = 20, note: str = "") -> str:
    """Counts of values in `bins` equal bins from the least to the largest, with round ticks under them."""
    sy, y_marks = _y_axis(1, "photos", least=1)
    if not values:
        return _frame(title, note, "", y_marks, [], x_caption)
    lo, hi = min(values), max(values)
    step = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / step), bins - 1)] += 1
    sy, y_marks = _y_axis(max(counts), "photos", least=1)
    sx = _scale(lo, lo + step * bins, LEFT, RIGHT)
    body = "".join(
        f'<rect data-kind="bar" data-value="{n}" x="{sx(lo + i * step) + 1:.1f}" y="{sy(n):.1f}" '
        f'width="{max(sx(lo + step) - sx(lo) - 2, 1):.1f}" height="{BOTTOM - sy(n):.1f}" fill="{GREEN}"/>'
        for i, n in enumerate(counts))
    ticks = [(sx(t), _number(t)) for t in nice_ticks(lo, hi, 8) if lo <= t <= lo + step * bins]
    return _frame(title, note, body, y_marks, ticks, x_caption)


def _unit_axes() -> tuple:
    """Both axes from 0 to 100 %, a tick every 20 %, and the diagonal where y equals x."""
    sx, sy = _scale(0.0, 1.0, LEFT, RIGHT), _scale(0.0, 1.0, BOTTOM, TOP)
    steps = [k / 5 for k in range(6)]
    y_marks = "".join(
        f'<line x1="{LEFT}" y1="{sy(t):.1f}" x2="{RIGHT}" y2="{sy(t):.1f}" stroke="{GRID}"/>'
        f'<text x="{LEFT - 8}" y="{sy(t) + 4:.1f}" font-size="12" text-anchor="end">{t:.0%}</text>' for t in steps)
    diagonal = (f'<line data-kind="diagonal" x1="{sx(0):.1f}" y1="{sy(0):.1f}" x2="{sx(1):.1f}" y2="{sy(1):.1f}" '
                f'stroke="#999" stroke-dasharray="4 4"/>')
    return sx, sy, y_marks + diagonal, [(sx(t), f"{t:.0%}") for t in steps]


def shares(points: Sequence[tuple[float, float]], title: str, x_caption: str, note: str = "",
           names: Sequence[str] = ()) -> str:
    """Shares (x, y) from 0 to 1 as dots joined in x order, with the dashed diagonal y = x (what picking
    at random would give); each named beside it where `names` gives a name."""
    sx, sy, y_marks, x_ticks = _unit_axes()
    order = sorted(range(len(points)), key=lambda i: points[i])
    placed = [(sx(points[i][0]), sy(points[i][1])) for i in order]
    middle = (LEFT + RIGHT) / 2  # names on the right half end at their dot, so they stay in the frame
    tags = "".join(
        f'<text x="{x + 5 if x < middle else x - 5:.1f}" y="{y - 6:.1f}" font-size="11" '
        f'text-anchor="{"start" if x < middle else "end"}">{escape(names[i])}</text>'
        for i, (x, y) in zip(order, placed, strict=True) if names and names[i])
    body = (_line(placed) + _dots(placed) + tags) if points else ""
    return _frame(title, note, body, y_marks, x_ticks, x_caption)


def reliability(bins: Sequence[tuple[float, float, float, int]], title: str, note: str = "") -> str:
    """A reliability diagram: per confidence bin (low, high, share right, count) a bar as high as the
    share right, its count above it; on the dashed diagonal, confidence would mean what it says."""
    sx, sy, y_marks, x_ticks = _unit_axes()
    body = "".join(
        f'<rect data-kind="bar" data-value="{v:g}" x="{sx(lo) + 1:.1f}" y="{sy(v):.1f}" '
        f'width="{sx(hi) - sx(lo) - 2:.1f}" height="{BOTTOM - sy(v):.1f}" fill="{GREEN}" fill-opacity="0.8"/>'
        f'<text x="{sx((lo + hi) / 2):.1f}" y="{sy(v) - 4:.1f}" font-size="11" text-anchor="middle">{n}</text>'
        for lo, hi, v, n in bins if n)
    return _frame(title, note, body, y_marks, x_ticks, "Confidence of the written name (bar: share of them right; "
                  "number: names in the bin)")
