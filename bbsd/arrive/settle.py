"""Deciding when a file is completely written.

Invariant: a path is released only when its writer closed it after the last change
(inotify's close-write, or a rename into the folder), or when its size and mtime have
not changed for `settle_seconds`. Paths that settle within `gather` seconds of each other (a burst
dropped at once) are released together, so that the queue sees the whole burst and hands out its
newest photo first, not whichever file happened to settle a few milliseconds before the others;
a lone photo is released at once. Pure logic: the clock and `stat` are injected, so tests drive
it without sleeping.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Stat = Callable[[Path], "os.stat_result | None"]

# How long settled paths wait for others due right after them. Small beside a photo's labelling
# (the newest of a burst otherwise waits for a whole older photo), and paid only when another path
# is due within it.
GATHER_S = 0.1
# Files renamed into their final name or closed by their writer settle at once, their events a few
# ms apart in a burst: settled paths also wait until no such event came for this long (within the
# gathering). Writes to other files do not count: they would hold a lone photo for the whole cap.
QUIET_S = 0.01


def stat_or_none(path: Path) -> os.stat_result | None:
    """The entry's own stat (a symlink is not followed: where it points is not ours to watch)."""
    try:
        return os.lstat(path)
    except OSError:
        return None


@dataclass
class _Entry:
    signature: tuple[int, int] | None = None  # (size, mtime_ns) at the last look
    changed_at: float = 0.0
    closed: bool = False
    not_before: float = 0.0
    growing: bool = False  # changed between the last two looks: still being written, not about to settle


class SettleTracker:
    def __init__(self, settle_seconds: float, stat: Stat = stat_or_none, gather: float = GATHER_S) -> None:
        self._settle = settle_seconds
        self._stat = stat
        self._gather = gather
        self._entries: dict[Path, _Entry] = {}
        self._held: dict[Path, None] = {}  # settled, waiting (at most `gather`) for the rest of their burst
        self._held_since = 0.0
        self._last_close = float("-inf")

    def __len__(self) -> int:
        return len(self._entries) + len(self._held)

    def __contains__(self, path: Path) -> bool:
        return path in self._entries or path in self._held

    def touch(self, path: Path, now: float, closed: bool = False) -> None:
        """Note activity on `path`; `closed` means the writer is done (close-write or rename)."""
        self._held.pop(path, None)  # written again while it waited for its burst: it settles anew
        entry = self._entries.setdefault(path, _Entry(changed_at=now))
        entry.closed = closed
        if closed:
            self._last_close = max(self._last_close, now)

    def defer(self, path: Path, now: float, until: float) -> None:
        """Look at `path` again, not before `until` (a file that did not decode yet)."""
        self._held.pop(path, None)
        self._entries[path] = _Entry(changed_at=now, not_before=until)

    def forget(self, path: Path) -> None:
        self._entries.pop(path, None)
        self._held.pop(path, None)

    def poll(self, now: float) -> list[Path]:
        """Return (and stop tracking) the paths that are settled now, together with the others of
        their burst (those due within `gather` of them); drop vanished ones."""
        settled = self._settled(now)
        if settled and not self._held:
            self._held_since = now
        self._held.update(dict.fromkeys(settled))
        if not self._held:
            return []
        others_due = any(not e.growing and self._due(e) <= now + self._gather for e in self._entries.values())
        if (others_due or now < self._last_close + QUIET_S) and now < self._held_since + self._gather:
            return []
        released, self._held = list(self._held), {}
        return released

    def _due(self, entry: _Entry) -> float:
        """When `entry` settles if nothing changes (a closed file: at its first look)."""
        return max(entry.not_before, entry.changed_at + (0.0 if entry.closed else self._settle))

    def _settled(self, now: float) -> list[Path]:
        ready = []
        for path, entry in list(self._entries.items()):
            st = self._stat(path)
            if st is None:
                del self._entries[path]  # deleted or moved away while settling
                continue
            signature = (st.st_size, st.st_mtime_ns)
            entry.growing = entry.signature is not None and signature != entry.signature
            if signature != entry.signature:
                # A write after a close arrives as a new modify event, which resets `closed`.
                entry.signature, entry.changed_at = signature, now
            if now < entry.not_before:
                continue
            if entry.closed or now - entry.changed_at >= self._settle:
                ready.append(path)
                del self._entries[path]
        return ready

    def next_deadline(self, now: float) -> float:
        """Seconds until the next poll could release something (for the main loop's wait)."""
        if self._held:  # the soonest of: the next path of the burst due, a quiet moment, the end of the gathering
            quiet = self._last_close + QUIET_S
            soonest = min([self._held_since + self._gather,
                           *(self._due(e) for e in self._entries.values() if not e.growing),
                           *([quiet] if quiet > now else [])])
            return max(0.005, soonest - now)
        if not self._entries:
            return self._settle
        soonest = min(max(e.not_before, e.changed_at + self._settle) for e in self._entries.values())
        return max(0.05, min(self._settle, soonest - now))
