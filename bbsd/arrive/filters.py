"""Which paths are photos to label, and which are ours, temporary or junk.

Invariant: bbsd never takes its own outputs (sidecars, temp files), hidden files,
in-progress downloads or OS junk for photos, and never enters junk folders.
"""

from __future__ import annotations

from pathlib import Path

from bbsd.atomic import is_temp

TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".download", ".filepart", ".swp", "~")
JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})
JUNK_DIRS = frozenset({"@eadir", ".trash", ".trashes", "$recycle.bin", "lost+found", ".thumbnails"})


def is_junk_dir(name: str) -> bool:
    lowered = name.lower()
    return lowered in JUNK_DIRS or lowered.startswith(".trash-") or lowered.startswith(".")


def is_photo(path: Path, extensions: tuple[str, ...]) -> bool:
    """True when `path`'s name looks like a finished photo with an allowed extension."""
    name = path.name
    lowered = name.lower()
    if name.startswith((".", "~", "._")) or lowered in JUNK_NAMES or is_temp(path):
        return False
    if lowered.endswith(TEMP_SUFFIXES):
        return False
    return path.suffix.lower().lstrip(".") in extensions


def in_junk_dir(path: Path, roots: tuple[Path, ...]) -> bool:
    """True when any folder between a watch root and `path` is junk or hidden."""
    for root in roots:
        try:
            rel = path.relative_to(root)
        except ValueError:
            continue
        return any(is_junk_dir(part) for part in rel.parts[:-1])
    return True  # outside every watch folder: not ours
