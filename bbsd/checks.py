"""Preflight checks shared by `bbsd check` and `bbsd run`: folders exist and are writable."""

from __future__ import annotations

import errno
import os
import tempfile

from bbsd.config import Settings
from bbsd.errors import FolderError


def folders(settings: Settings) -> list[str]:
    """Raise `FolderError` for the first unusable watch folder; return one line per good one."""
    lines = []
    for folder in settings.watch.folders:
        if not folder.exists():
            raise FolderError(f"watch folder {folder} does not exist",
                              f"create it (mkdir -p {folder}) or fix [watch] folders in {settings.source}")
        if not folder.is_dir():
            raise FolderError(f"watch folder {folder} is not a folder", f"fix [watch] folders in {settings.source}")
        _probe_write(folder)
        lines.append(f"folder {folder}: ok (readable and writable)")
    return lines


def _probe_write(folder) -> None:
    """Create and delete a file: permission bits lie to root and say nothing of read-only mounts."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".bbsd-probe-"):
            pass
    except OSError as e:
        why = "is on a read-only filesystem" if e.errno == errno.EROFS else f"is not writable ({e.strerror})"
        raise FolderError(f"watch folder {folder} {why}",
                          "sidecars are written beside the photos: grant the bbsd user write access") from None
    if not os.access(folder, os.R_OK | os.X_OK):
        raise FolderError(f"watch folder {folder} is not readable", "grant the bbsd user read access")
