"""When a photo is looked at again: what became of it (`Status`), turned into a delay.

Invariant: pure logic beside settling — the pipeline says what became of a photo, `Retries` says
after how many seconds the settle tracker hands it over again, or None: not again until it changes
(or a rescan finds its sidecar stale). The clock is injected (`now`, the wall clock the photo's
mtime is on), so tests drive it without sleeping. A RAW waits for its JPEG sibling a settle period
at a time; a file that may still be arriving is looked at again until `incomplete_timeout` has
passed since its last write (and once just after, when it is recorded as what it is); a photo whose
sidecar could not be written, or whose reference photos cannot be shown, backs off from
`PENDING_MIN_S`, doubling at each failure in a row, up to `PENDING_MAX_S`. `Waits` tells when a
file's wait as incomplete starts and ends, so that it is logged twice, not at every look.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from enum import StrEnum

PENDING_MIN_S = 2.0
PENDING_MAX_S = 300.0
SOON_S = 0.05  # the least wait for a file that may still be arriving: past its timeout, at once


class Status(StrEnum):
    """What became of a photo: the pipeline's answer, and what decides whether it comes back."""

    LABELED = "labeled"
    FAILED = "error"  # an error sidecar was written
    SKIPPED = "skipped"  # the sidecar was already up to date
    INCOMPLETE = "incomplete"  # may still be arriving: look again later
    PENDING = "pending"  # the sidecar could not be written, or a reference photo cannot be shown: retry later
    KEPT = "kept"  # the existing sidecar is a person's (edited or unreadable): left as it is
    WAITING = "waiting"  # a RAW file waits for its JPEG sibling's labels
    IGNORED = "ignored"  # not a regular file (symlink, FIFO, device): never opened
    GONE = "gone"  # the file vanished


def delay(status: Status, attempt: int, now: float, *, mtime: float, settle_s: float,
          incomplete_timeout_s: float) -> float | None:
    """Seconds until a photo that ended in `status` is looked at again, None for never (until it
    changes). `attempt`: how many times in a row it ended `PENDING` before; `now` and `mtime` (its
    last write) on one clock."""
    again = max(1.0, settle_s)  # a settle period, and never a busy loop when settling is off
    if status is Status.WAITING:
        return again
    if status is Status.INCOMPLETE:
        remaining = incomplete_timeout_s - (now - mtime)
        return min(again, max(SOON_S, remaining + SOON_S))
    if status is Status.PENDING:
        return min(PENDING_MAX_S, PENDING_MIN_S * 2**attempt)
    return None


class Retries:
    """`delay` for each photo, with its failures in a row counted: a `PENDING` photo backs off further
    each time, and any end but a wait (`WAITING`, `INCOMPLETE`) starts its count anew. A photo is
    handled by one thread at a time, so different threads touch different keys."""

    def __init__(self, settle_s: float, incomplete_timeout_s: float) -> None:
        self._settle_s = settle_s
        self._incomplete_timeout_s = incomplete_timeout_s
        self._pending: dict[Hashable, int] = {}  # photo -> times in a row it ended PENDING

    def after(self, photo: Hashable, status: Status, now: float, mtime: float) -> float | None:
        """The delay before `photo` is looked at again (`delay`), its count updated."""
        attempt = self._pending.get(photo, 0)
        if status is Status.PENDING:
            self._pending[photo] = attempt + 1
        elif status not in (Status.WAITING, Status.INCOMPLETE):
            self._pending.pop(photo, None)
        return delay(status, attempt, now, mtime=mtime, settle_s=self._settle_s,
                     incomplete_timeout_s=self._incomplete_timeout_s)


@dataclass(frozen=True)
class WaitChange:
    """A wait as incomplete that starts at this look (`started`), or ends after `waited_s` seconds."""

    started: bool
    waited_s: float = 0.0


class Waits:
    """Photos waiting as incomplete (an empty or truncated file may still be arriving), and since when.
    A file that stays incomplete is looked at about once a settle period until its timeout: its wait
    is worth two log lines (its start, its end), not one a look. Like `Retries`, one thread a photo."""

    def __init__(self) -> None:
        self._since: dict[Hashable, float] = {}  # photo -> when its wait started (the caller's clock)

    def note(self, photo: Hashable, status: Status, now: float) -> WaitChange | None:
        """What `photo` ending a look in `status` at `now` does to its wait: starts it, ends it, or
        nothing (None: still waiting, or not waiting at all)."""
        if status is Status.INCOMPLETE:
            if photo in self._since:
                return None
            self._since[photo] = now
            return WaitChange(started=True)
        since = self._since.pop(photo, None)
        return None if since is None else WaitChange(started=False, waited_s=now - since)
