"""Atomic file replacement: a reader sees the old file or the new one, never a part.

Invariant: data goes to a hidden temp file in the target's own folder (same filesystem),
is fsynced, then renamed over the target, and the folder is fsynced so the rename
survives a power cut. On any failure the temp file is removed and nothing else changes.
A new file gets the process umask's mode (created 0666 & ~umask, like any tool's); with
`keep_owner` a replaced file keeps its owner, group and mode.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

import structlog

from bbsd import safefs
from bbsd.errors import SidecarWriteError

log = structlog.get_logger("bbsd.atomic")
TEMP_MARK = ".bbsd-tmp-"
_owner_warned = False  # "cannot keep the owner" is said once per process, not once per photo


def temp_name(target: Path) -> Path:
    name = f".{target.name}{TEMP_MARK}{secrets.token_hex(4)}"
    if len(name.encode("utf-8", "surrogateescape")) > 255:  # a long photo name: keep the temp name legal
        name = f".{secrets.token_hex(8)}{TEMP_MARK}{secrets.token_hex(4)}"
    return target.with_name(name)


def is_temp(path: Path) -> bool:
    return TEMP_MARK in path.name


def write_bytes(target: Path, data: bytes, durable: bool = True, *, keep_owner: bool = False,
                roots: Iterable[Path] | None = None) -> None:
    """Replace `target` with `data` atomically; raise `SidecarWriteError` naming the cause.

    `durable=False` skips the fsyncs: still all-or-nothing for readers, but a power cut may
    lose the new version (right for a status file rewritten all the time, wrong for sidecars).
    `keep_owner=True`: the new file takes the owner, group and mode of the regular file it
    replaces (another tool's file stays theirs); the mode is kept even where the owner cannot be.
    `roots`: the watch folders `target` must lie beneath. Its folder is then reached from its root
    one folder at a time (`safefs.open_folder_beneath`), and the temp file is created and renamed
    relative to that descriptor: a folder swapped for a symlink mid-write cannot lead the write out.
    """
    tmp = temp_name(target)
    try:
        folder = safefs.open_folder_beneath(roots, target) if roots else _open_folder(target.parent)
    except OSError as e:
        raise SidecarWriteError(f"cannot write {target}: {e.strerror or e}", _hint(e)) from e
    try:
        _write_in(folder, target, tmp, data, durable, keep_owner)
    finally:
        if folder is not None:
            os.close(folder)


def _write_in(folder: int | None, target: Path, tmp: Path, data: bytes, durable: bool, keep_owner: bool) -> None:
    """The temp file, its data, the rename: by name relative to `folder` (or by path where the
    filesystem refused to open the folder)."""
    tmp_at, target_at = (tmp.name, target.name) if folder is not None else (tmp, target)
    try:
        fd = os.open(tmp_at, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                     dir_fd=folder)  # the umask applies
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if keep_owner:
                _take_owner(fd, target_at, folder)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_at, target_at, src_dir_fd=folder, dst_dir_fd=folder)
        if durable:
            _fsync_folder(folder, target.parent)
    except OSError as e:
        _remove_quietly(tmp_at, folder)
        raise SidecarWriteError(f"cannot write {target}: {e.strerror or e}", _hint(e)) from e


def _open_folder(folder: Path) -> int | None:
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None  # some network filesystems refuse to open folders: write by path there


def _take_owner(fd: int, target: Path | str, folder: int | None) -> None:
    """Give the open temp file `target`'s owner, group and mode, if `target` is a regular file."""
    global _owner_warned
    try:
        st = os.stat(target, dir_fd=folder, follow_symlinks=False)
    except OSError:
        return  # a new file: the umask's mode, bbsd's owner
    if not stat.S_ISREG(st.st_mode):
        return
    try:
        # Only where the owner changes: bbsd's own file needs no chown, and a sandbox that forbids
        # chown altogether (the unit's ~@privileged syscall filter) must not warn about it.
        mine = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (mine.st_uid, mine.st_gid):
            os.fchown(fd, st.st_uid, st.st_gid)  # before the mode: a chown clears set-id bits
    except OSError as e:
        if not _owner_warned:
            _owner_warned = True
            log.warning("sidecar.owner_not_kept", path=str(target), reason=e.strerror or str(e),
                        hint="bbsd may not give a file to another user; it keeps the mode, the file becomes "
                             "bbsd's (said once)")
    # Permission bits only (never set-id bits from the file replaced); a filesystem that refuses
    # chmod (some CIFS mounts) keeps the umask's mode rather than failing every write.
    with contextlib.suppress(OSError):
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o777)


def _fsync_folder(folder: int | None, path: Path) -> None:
    if folder is None:
        _fsync_dir(path)
        return
    with contextlib.suppress(OSError):  # some filesystems refuse to fsync a folder: the rename is done
        os.fsync(folder)


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


def _remove_quietly(path: Path | str, folder: int | None = None) -> None:
    try:
        os.unlink(path, dir_fd=folder)
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
