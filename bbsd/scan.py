"""Walking the watch folders: at start-up and periodically, because watchers miss events.

Invariant: the walk yields every photo under the watch folders that is not in a junk
folder, without following symlinked folders (no loops, nothing outside the roots).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from bbsd import atomic
from bbsd.filters import is_junk_dir, is_photo


def photos(roots: tuple[Path, ...], extensions: tuple[str, ...], recursive: bool) -> Iterator[Path]:
    for root in roots:
        yield from _walk(root, extensions, recursive)


def _walk(folder: Path, extensions: tuple[str, ...], recursive: bool) -> Iterator[Path]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return  # vanished or unreadable: the service reports folders separately
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if recursive and not is_junk_dir(entry.name):
                    yield from _walk(Path(entry.path), extensions, recursive)
            elif entry.is_file(follow_symlinks=False) and is_photo(Path(entry.path), extensions):
                yield Path(entry.path)
        except OSError:
            continue


def remove_stale_temps(roots: tuple[Path, ...], recursive: bool) -> int:
    """Delete temp files left by a crash mid-write; safe because only one bbsd writes here."""
    removed = 0
    for root in roots:
        for folder, dirs, _files in os.walk(root):
            removed += atomic.remove_stale_temps(Path(folder))
            dirs[:] = [d for d in dirs if recursive and not is_junk_dir(d)]
    return removed
