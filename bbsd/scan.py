"""Walking the watch folders: at start-up and periodically, because watchers miss events.

Invariant: the walk yields every photo under the watch folders that is not in a junk
folder, without following symlinked folders (no loops, nothing outside the roots): each folder
below a root is opened with `O_NOFOLLOW`, so one swapped for a link while walked is skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from bbsd import atomic
from bbsd.filters import is_junk_dir, is_photo


def photos(roots: tuple[Path, ...], extensions: tuple[str, ...], recursive: bool,
           follow_roots: bool = True) -> Iterator[Path]:
    """Photos under `roots`; a root itself may be a link (the configuration's) unless `follow_roots` is off."""
    for root in roots:
        yield from _walk(root, extensions, recursive, follow_roots)


def _walk(folder: Path, extensions: tuple[str, ...], recursive: bool, follow: bool) -> Iterator[Path]:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(folder, flags)
    except OSError:
        return  # vanished, unreadable or a link: the service reports folders separately
    found, below = [], []
    try:
        for entry in os.scandir(fd):
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive and not is_junk_dir(entry.name):
                        below.append(folder / entry.name)
                elif entry.is_file(follow_symlinks=False) and is_photo(folder / entry.name, extensions):
                    found.append(folder / entry.name)
            except OSError:
                continue
    except OSError:
        return
    finally:
        os.close(fd)
    yield from found
    for sub in below:
        yield from _walk(sub, extensions, recursive, follow=False)


def remove_stale_temps(roots: tuple[Path, ...], recursive: bool) -> int:
    """Delete temp files left by a crash mid-write; safe because only one bbsd writes here."""
    removed = 0
    for root in roots:
        for folder, dirs, _files in os.walk(root):
            removed += atomic.remove_stale_temps(Path(folder))
            dirs[:] = [d for d in dirs if recursive and not is_junk_dir(d)]
    return removed
