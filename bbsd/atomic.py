"""Atomic file replacement: a reader sees the old file or the new one, never a part.

Invariant: data goes to a hidden temp file in the target's own folder (same filesystem),
is fsynced, then renamed over the target, and the folder is fsynced so the rename
survives a power cut. On any failure the temp file is removed and nothing else changes.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

from bbsd.errors import SidecarWriteError

TEMP_MARK = ".bbsd-tmp-"


def temp_name(target: Path) -> Path:
    name = f".{target.name}{TEMP_MARK}{secrets.token_hex(4)}"
    if len(name.encode("utf-8", "surrogateescape")) > 255:  # a long photo name: keep the temp name legal
        name = f".{secrets.token_hex(8)}{TEMP_MARK}{secrets.token_hex(4)}"
    return target.with_name(name)


def is_temp(path: Path) -> bool:
    return TEMP_MARK in path.name


def write_bytes(target: Path, data: bytes, durable: bool = True) -> None:
    """Replace `target` with `data` atomically; raise `SidecarWriteError` naming the cause.

    `durable=False` skips the fsyncs: still all-or-nothing for readers, but a power cut may
    lose the new version (right for a status file rewritten all the time, wrong for sidecars).
    """
    tmp = temp_name(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        if durable:
            _fsync_dir(target.parent)
    except OSError as e:
        _remove_quietly(tmp)
        raise SidecarWriteError(f"cannot write {target}: {e.strerror or e}", _hint(e)) from e


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # some network filesystems refuse to open folders; the rename itself is done
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        pass  # a stale temp is cleaned at the next start


def _hint(e: OSError) -> str:
    return {
        errno.ENOSPC: "the disk is full: free space; the photo is retried",
        errno.EDQUOT: "the disk quota is exhausted: free space; the photo is retried",
        errno.EROFS: "the folder is on a read-only filesystem: remount it read-write",
        errno.EACCES: "the bbsd user may not write here: fix the folder's permissions",
        errno.EPERM: "the bbsd user may not write here: fix the folder's permissions",
    }.get(e.errno or 0, "check the folder and the disk")


def remove_stale_temps(folder: Path) -> int:
    """Delete temp files a crash left in `folder` (not recursive); returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if TEMP_MARK in entry.name and entry.is_file(follow_symlinks=False):
            _remove_quietly(Path(entry.path))
            removed += 1
    return removed
