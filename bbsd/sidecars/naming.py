"""Sidecar file names that every filesystem accepts, whatever the photo is called.

Invariant: a sidecar's name is the photo's name and a suffix when that fits a file name (255 bytes),
else a documented fallback that two long names never share; the JSON and the XMP sidecar use the one rule.
"""

from __future__ import annotations

import hashlib

NAME_MAX = 255  # bytes in a file name on ext4, XFS, Btrfs, NTFS and exFAT
FALLBACK_MARK = "~bbsd-"


def fit_name(name: str, suffix: str, name_max: int = NAME_MAX) -> str:
    """`name + suffix`, or when that is too long for a file name, a documented fallback.

    The fallback keeps as much of the photo's name as fits, then `~bbsd-` and 12 hex digits
    of the name's sha256 (two long names that share a prefix never share a sidecar), then
    the suffix: `<start of name>~bbsd-1a2b3c4d5e6f.json`. The sidecar names the photo inside.
    """
    full = name + suffix
    if len(full.encode("utf-8", "surrogateescape")) <= name_max:
        return full
    tail = f"{FALLBACK_MARK}{hashlib.sha256(name.encode('utf-8', 'surrogateescape')).hexdigest()[:12]}{suffix}"
    room = name_max - len(tail.encode())
    head = name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return head + tail
