"""The report's time axis: periods of work split at idle gaps, drawn side by side, each gap a narrow band.

Invariant: two photos more than `IDLE_GAP` apart belong to different periods. Lines join photos of
one period only, never across a gap; photos per minute divides by the periods' time (active time),
so an interval or a night between two bursts neither lowers the rate nor stretches the plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

IDLE_GAP = timedelta(minutes=5)  # a longer pause between two photos is idle time, not work
GAP_PX = 56.0  # a gap's band on the axis, whatever its length: its label says how long
MIN_PERIOD_PX = 24.0  # a one-photo period stays visible beside a three-hour one
TICK_PX = 72.0  # the least room between two tick labels (HH:MM at 11 px)
STEPS_MIN = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)


def periods(times: Sequence[datetime], gap: timedelta = IDLE_GAP) -> list[range]:
    """Index ranges of sorted `times`, a new one wherever two neighbours are more than `gap` apart."""
    out, start = [], 0
    for i in range(1, len(times)):
        if times[i] - times[i - 1] > gap:
            out.append(range(start, i))
            start = i
    return [*out, range(start, len(times))] if times else []


def active_seconds(times: Sequence[datetime], leads: Sequence[float], gap: timedelta = IDLE_GAP) -> float:
    """Seconds of work: each period from the start of its first photo (its time less `leads[i]`, the
    seconds it took) to the record of its last; the gaps between periods are not counted."""
    return sum((times[p[-1]] - times[p[0]]).total_seconds() + leads[p[0]] for p in periods(times, gap))


def idle_text(seconds: float) -> str:
    """`30 min`, `2 h 10 min`, `14 h`: a gap's length as its band says it."""
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min" if rest and hours < 10 else f"{round(minutes / 60)} h"


@dataclass(frozen=True)
class Axis:
    """Maps a time to an x position: each period's span (whole minutes) its own stretch of the axis."""

    spans: tuple[tuple[datetime, datetime], ...]
    lefts: tuple[float, ...]
    widths: tuple[float, ...]
    tz: tzinfo
    pauses: tuple[float, ...]  # seconds from each period's last photo to the next one's first

    def x(self, when: datetime) -> float:
        i = self.period_of(when)
        (start, end), left, width = self.spans[i], self.lefts[i], self.widths[i]
        return left + (when - start).total_seconds() / (end - start).total_seconds() * width

    def period_of(self, when: datetime) -> int:
        return next((i for i, (_, end) in enumerate(self.spans) if when < end), len(self.spans) - 1)

    def minutes(self) -> list[tuple[float, float, datetime]]:
        """Every whole minute of every period as (x from, x to, minute), for per-minute bars."""
        out = []
        for (start, end), left, width in zip(self.spans, self.lefts, self.widths, strict=True):
            n = round((end - start).total_seconds() / 60)
            out += [(left + k * width / n, left + (k + 1) * width / n, start + timedelta(minutes=k)) for k in range(n)]
        return out

    def bands(self) -> list[tuple[float, float, str]]:
        """Each idle gap as (x from, x to, `30 min`): the pause between the photos on either side."""
        return [(self.lefts[i] + self.widths[i], self.lefts[i + 1], idle_text(self.pauses[i]))
                for i in range(len(self.spans) - 1)]

    def ticks(self) -> list[tuple[float, str]]:
        """Round local clock times (HH:MM) at least TICK_PX apart; the first on a new day also names it."""
        out: list[tuple[float, str]] = []
        day = None
        for (start, end), width in zip(self.spans, self.widths, strict=True):
            minutes = (end - start).total_seconds() / 60
            step = next((s for s in STEPS_MIN if s * width / minutes >= TICK_PX), STEPS_MIN[-1])
            local = start.astimezone(self.tz)
            t = local.replace(minute=0, second=0, microsecond=0) - timedelta(minutes=60)
            marks = []
            while t < end:
                if t >= start and (t.hour * 60 + t.minute) % step == 0:
                    marks.append(t)
                t += timedelta(minutes=1) if step < 60 else timedelta(minutes=60)
            for m in marks or [local]:
                x = self.x(m)
                if out and x - out[-1][0] < TICK_PX:
                    continue
                name = m.strftime("%H:%M") if day in (None, m.date()) else m.strftime("%d %b %H:%M")
                day = m.date()
                out.append((x, name))
        return out

    def caption(self) -> str:
        """`Time (UTC), Tue 24 Nov 2026`: the zone and the date, once."""
        first, last = (self.spans[0][0].astimezone(self.tz), self.spans[-1][1].astimezone(self.tz))
        last -= timedelta(seconds=1)  # a span ends on the minute after its last photo
        zone = first.tzname() or "local time"
        if first.date() == last.date():
            return f"Time ({zone}), {first:%a %d %b %Y}"
        return f"Time ({zone}), {first:%a %d %b} – {last:%a %d %b %Y}"


def axis(times: Sequence[datetime], left: float, right: float, tz: tzinfo, gap: timedelta = IDLE_GAP) -> Axis:
    """The axis for sorted `times` between x = left and x = right; each period's span runs from its
    first photo's minute to the minute after its last, and has room in proportion to its length."""
    groups = periods(times, gap)
    spans = tuple((_floor(times[p[0]]), _floor(times[p[-1]]) + timedelta(minutes=1)) for p in groups)
    room = right - left
    gap_px = min(GAP_PX, room / 2 / max(len(spans) - 1, 1))
    least = min(MIN_PERIOD_PX, room / 4 / max(len(spans), 1))
    share = room - gap_px * (len(spans) - 1) - least * len(spans)
    total = sum((end - start).total_seconds() for start, end in spans) or 1.0
    widths = tuple(least + share * (end - start).total_seconds() / total for start, end in spans)
    lefts, x = [], left
    for w in widths:
        lefts.append(x)
        x += w + gap_px
    pauses = tuple((times[b[0]] - times[a[-1]]).total_seconds() for a, b in zip(groups, groups[1:], strict=False))
    return Axis(spans, tuple(lefts), widths, tz, pauses)


def _floor(when: datetime) -> datetime:
    return when.replace(second=0, microsecond=0)
