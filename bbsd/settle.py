"""Deciding when a file is completely written.

Invariant: a path is released only when its writer closed it after the last change
(inotify's close-write, or a rename into the folder), or when its size and mtime have
not changed for `settle_seconds`. Pure logic: the clock and `stat` are injected, so
tests drive it without sleeping.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Stat = Callable[[Path], "os.stat_result | None"]


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


class SettleTracker:
    def __init__(self, settle_seconds: float, stat: Stat = stat_or_none) -> None:
        self._settle = settle_seconds
        self._stat = stat
        self._entries: dict[Path, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: Path) -> bool:
        return path in self._entries

    def touch(self, path: Path, now: float, closed: bool = False) -> None:
        """Note activity on `path`; `closed` means the writer is done (close-write or rename)."""
        entry = self._entries.setdefault(path, _Entry(changed_at=now))
        entry.closed = closed

    def defer(self, path: Path, now: float, until: float) -> None:
        """Look at `path` again, not before `until` (a file that did not decode yet)."""
        self._entries[path] = _Entry(changed_at=now, not_before=until)

    def forget(self, path: Path) -> None:
        self._entries.pop(path, None)

    def poll(self, now: float) -> list[Path]:
        """Return (and stop tracking) the paths that are settled now; drop vanished ones."""
        ready = []
        for path, entry in list(self._entries.items()):
            st = self._stat(path)
            if st is None:
                del self._entries[path]  # deleted or moved away while settling
                continue
            signature = (st.st_size, st.st_mtime_ns)
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
        if not self._entries:
            return self._settle
        soonest = min(max(e.not_before, e.changed_at + self._settle) for e in self._entries.values())
        return max(0.05, min(self._settle, soonest - now))
