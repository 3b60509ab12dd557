"""Walking the watch folders: at start-up and periodically, because watchers miss events.

Invariant: the walk yields every photo under the watch folders that is not in a junk
folder, without following symlinked folders (no loops, nothing outside the roots): each folder
below a root is opened with `O_NOFOLLOW`, so one swapped for a link while walked is skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import structlog

from bbsd import atomic, safefs
from bbsd.arrive.filters import is_junk_dir, is_photo

log = structlog.get_logger("bbsd.scan")
MAX_DEPTH = 64  # folders below a watch root; a show's folders are a few levels deep


def photos(roots: tuple[Path, ...], extensions: tuple[str, ...], recursive: bool,
           follow_roots: bool = True) -> Iterator[Path]:
    """Photos under `roots`; a root itself may be a link (the configuration's) unless `follow_roots` is off.

    A root the daemon pinned is opened at the folder it resolved to at start (`safefs.open_root`), and
    every folder below is opened relative to the one above it: a folder, or the root, swapped for a
    link while walked cannot lead the walk out."""
    for root in roots:
        try:
            fd = safefs.open_root(root) if follow_roots else _open_below(None, root)
        except OSError:
            continue  # vanished, unreadable, a link or replaced: the service reports folders separately
        yield from _walk(fd, root, extensions, recursive)


def _open_below(parent: int | None, name: str | Path) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW, dir_fd=parent)


def _walk(fd: int, folder: Path, extensions: tuple[str, ...], recursive: bool, depth: int = 0) -> Iterator[Path]:
    """The photos in the open folder `fd` (named `folder`) and below; closes `fd`. One descriptor is open
    per level of the walk, however many folders a level holds."""
    try:
        found, below = [], []
        try:
            entries = list(os.scandir(fd))
        except OSError:
            return
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive and not is_junk_dir(entry.name):
                        below.append(entry.name)
                elif entry.is_file(follow_symlinks=False) and is_photo(folder / entry.name, extensions):
                    found.append(folder / entry.name)
            except OSError:
                continue
        yield from found
        if below and depth >= MAX_DEPTH:  # a hostile tree must not exhaust the stack or the descriptors
            log.warning("scan.too_deep", folder=str(folder), depth=depth, skipped=len(below),
                        hint=f"bbsd walks {MAX_DEPTH} folders deep at most; move the photos higher up")
            return
        for name in below:
            try:
                sub = _open_below(fd, name)
            except OSError:
                continue  # gone, or swapped for a link since it was listed
            yield from _walk(sub, folder / name, extensions, recursive, depth + 1)
    finally:
        os.close(fd)


def remove_stale_temps(roots: tuple[Path, ...], recursive: bool) -> int:
    """Delete temp files left by a crash mid-write; safe because only one bbsd writes here."""
    removed = 0
    for root in roots:
        top = len(Path(root).parts)
        for folder, dirs, _files in os.walk(root):
            removed += atomic.remove_stale_temps(Path(folder))
            deep = len(Path(folder).parts) - top >= MAX_DEPTH  # as deep as `photos` walks, never deeper
            dirs[:] = [d for d in dirs if recursive and not deep and not is_junk_dir(d)]
    return removed
