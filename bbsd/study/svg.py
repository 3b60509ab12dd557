"""Tiny inline-SVG charts for the report: readable in any browser, no plotting library to bundle.

Each mark carries a `data-kind` attribute so tests can count what a chart shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 720, 260, 64, 16, 28, 40


def _scale(lo: float, hi: float, out_lo: float, out_hi: float):
    span = (hi - lo) or 1.0
    return lambda v: out_lo + (v - lo) / span * (out_hi - out_lo)


def _frame(title: str, x_labels: tuple[str, str], y_lo: float, y_hi: float, y_unit: str, body: str) -> str:
    bottom, right = H - PAD_B, W - PAD_R
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">'
        f"<title>{escape(title)}</title>"
        f'<text x="{PAD_L}" y="18" font-size="14" font-weight="bold">{escape(title)}</text>'
        f'<line x1="{PAD_L}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#444"/>'
        f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{bottom}" stroke="#444"/>'
        f'<text x="{PAD_L - 6}" y="{bottom}" font-size="11" text-anchor="end">{y_lo:g} {escape(y_unit)}</text>'
        f'<text x="{PAD_L - 6}" y="{PAD_T + 10}" font-size="11" text-anchor="end">{y_hi:g} {escape(y_unit)}</text>'
        f'<text x="{PAD_L}" y="{H - 14}" font-size="11">{escape(x_labels[0])}</text>'
        f'<text x="{right}" y="{H - 14}" font-size="11" text-anchor="end">{escape(x_labels[1])}</text>'
        f"{body}</svg>"
    )


def scatter(points: Sequence[tuple[float, float]], title: str, x_labels: tuple[str, str], y_unit: str) -> str:
    """One dot per point (x, y), joined by a faint line in x order."""
    if not points:
        return _frame(title, x_labels, 0, 1, y_unit, "")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    y_hi = max(ys) * 1.05 or 1.0
    sx, sy = _scale(min(xs), max(xs), PAD_L + 4, W - PAD_R - 4), _scale(0, y_hi, H - PAD_B, PAD_T)
    ordered = sorted(points)
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in ordered)
    dots = "".join(f'<circle data-kind="point" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="#1f6feb"/>'
                   for x, y in ordered)
    body = f'<polyline points="{line}" fill="none" stroke="#1f6feb" stroke-opacity="0.3"/>{dots}'
    return _frame(title, x_labels, 0, round(y_hi, 1), y_unit, body)


def bars(values: Sequence[float], title: str, x_labels: tuple[str, str], y_unit: str) -> str:
    """One bar per value, left to right."""
    if not values:
        return _frame(title, x_labels, 0, 1, y_unit, "")
    y_hi = max(values) or 1.0
    width = (W - PAD_L - PAD_R) / len(values)
    sy = _scale(0, y_hi, H - PAD_B, PAD_T)
    body = "".join(
        f'<rect data-kind="bar" data-value="{v:g}" x="{PAD_L + i * width + 1:.1f}" y="{sy(v):.1f}" '
        f'width="{max(width - 2, 1):.1f}" height="{H - PAD_B - sy(v):.1f}" fill="#2da44e"/>'
        for i, v in enumerate(values))
    return _frame(title, x_labels, 0, y_hi, y_unit, body)


def histogram(values: Sequence[float], title: str, unit: str, bins: int = 20) -> str:
    if not values:
        return bars([], title, ("", ""), "photos")
    lo, hi = min(values), max(values)
    step = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / step), bins - 1)] += 1
    return bars(counts, title, (f"{lo:.0f} {unit}", f"{hi:.0f} {unit}"), "photos")
