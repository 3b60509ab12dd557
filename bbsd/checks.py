"""Preflight checks shared by `bbsd check` and `bbsd run`: folders exist and are writable."""

from __future__ import annotations

import os

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
        if not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
            raise FolderError(f"watch folder {folder} is not writable by this user",
                              "sidecars are written beside the photos: grant write access (chmod/chown/ACL)")
        lines.append(f"folder {folder}: ok (readable and writable)")
    return lines
