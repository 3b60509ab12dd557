"""Opening files in a watch folder that anyone may have put there: never a link, a FIFO or a device.

Invariants: a file is opened with `O_NOFOLLOW | O_NONBLOCK` (a symlink is refused by the kernel,
a FIFO cannot block the open) and accepted only when `fstat` on the open descriptor says it is a
regular file, so what is checked is what is read — nothing can be swapped in between; a read
stops at a size cap, so a huge or endless file costs a bounded amount of memory. A path under a
watch folder is reached from the folder one directory at a time, none of them a link
(`open_beneath`, `beneath`), so a symlinked folder (`evil.jpg -> /elsewhere`) never leads out.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20


class NotRegularError(OSError):
    """A symlink, FIFO, socket, device or folder where bbsd expected a regular file."""


class TooLargeError(OSError):
    """A file larger than bbsd agrees to read (a runaway or hostile file)."""


class OutsideError(NotRegularError):
    """A path that leaves the watch folders: a folder on the way is a symlink, or it is under no watch folder."""


class ChangedError(OSError):
    """The file changed while it was read (still being written, or replaced)."""


Ident = tuple[int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns): this file, as it was read


def kind_of(mode: int) -> str:
    """A word for what a file is, for messages and events."""
    for test, word in ((stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device"), (stat.S_ISDIR, "folder")):
        if test(mode):
            return word
    return "file" if stat.S_ISREG(mode) else "special file"


def open_regular(path: Path | str, *, dir_fd: int | None = None, follow: bool = False) -> int:
    """A read-only descriptor on `path` (relative to `dir_fd` when given) if it is a regular file.

    Raises `FileNotFoundError` when it is gone, `NotRegularError` when it is not a regular file
    (a symlink included, whatever it points to), `OSError` for the rest (permissions). `follow`
    lets a link through, for files a person named in the configuration (never a watch folder's).
    """
    nofollow = 0 if follow else os.O_NOFOLLOW
    flags = os.O_RDONLY | nofollow | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink as the last component
            raise NotRegularError(errno.ELOOP, "a symlink: bbsd never follows links", str(path)) from None
        if e.errno in (errno.ENXIO, errno.EOPNOTSUPP, errno.ENODEV):  # a socket or a device without a driver
            raise NotRegularError(e.errno, "not a regular file", str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularError(errno.EINVAL, f"a {kind_of(st.st_mode)}, not a regular file", str(path))
        os.set_blocking(fd, True)  # a regular file never blocks; plain reads from here on
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path | str, limit: int | None = None, *, dir_fd: int | None = None,
                 follow: bool = False) -> bytes:
    """The whole content of the regular file `path`; `TooLargeError` past `limit` bytes. `follow`: as
    `open_regular` (only for files the configuration names)."""
    fd = open_regular(path, dir_fd=dir_fd, follow=follow)
    try:
        return read_fd(fd, limit, str(path))
    finally:
        os.close(fd)


def read_fd(fd: int, limit: int | None = None, name: str = "") -> bytes:
    """Read an open descriptor to its end, refusing more than `limit` bytes (checked as it grows)."""
    if limit is not None and os.fstat(fd).st_size > limit:
        raise TooLargeError(errno.EFBIG, f"larger than {limit} bytes", name)
    parts, total = [], 0
    while chunk := os.read(fd, CHUNK):
        total += len(chunk)
        if limit is not None and total > limit:  # it grew while read
            raise TooLargeError(errno.EFBIG, f"larger than {limit} bytes", name)
        parts.append(chunk)
    return b"".join(parts)


def lstat_kind(path: Path | str) -> str | None:
    """None for a regular file or a missing one, else what is there instead ("symlink", "FIFO", …)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return None if stat.S_ISREG(st.st_mode) else kind_of(st.st_mode)


def ident(st: os.stat_result) -> Ident:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def sha256_fd(fd: int) -> tuple[str, Ident]:
    """The content's sha256 and the file's identity; `ChangedError` when it changed while read."""
    before = ident(os.fstat(fd))
    os.lseek(fd, 0, os.SEEK_SET)
    with open(fd, "rb", closefd=False) as f:
        h = hashlib.file_digest(f, "sha256")
    after = ident(os.fstat(fd))
    if after != before:
        raise ChangedError(errno.EAGAIN, "the file changed while it was read")
    return h.hexdigest(), after


def _split(roots: Iterable[Path | str], path: Path | str) -> tuple[str, tuple[str, ...]]:
    """The watch root `path` is under and the names below it; `OutsideError` when under none."""
    full = os.path.abspath(path)
    for root in roots:
        top = os.path.abspath(root)
        rel = os.path.relpath(full, top)
        if rel != "." and rel != ".." and not rel.startswith("../"):
            return top, tuple(rel.split(os.sep))
    raise OutsideError(errno.EXDEV, "not under any watch folder", str(path))


# Each watch root as it resolved when the daemon pinned it (its start): the folder it is opened at from
# then on, never through a link put in its place (`mv W W.old; ln -s /elsewhere W` while it runs).
_PINNED: dict[str, str] = {}


def pin_roots(roots: Iterable[Path | str]) -> None:
    """Resolve each watch root once. A root the configuration names through a link stays the folder the
    link led to; a root replaced by a link later is refused (`open_root`), not followed."""
    for root in roots:
        _PINNED[os.path.abspath(root)] = os.path.realpath(root)


def open_root(root: Path | str) -> int:
    """A descriptor on the watch root `root`: at its pinned folder, without following a link there
    (`OutsideError` when one was put in its place), or the path as it is when not pinned (a one-shot command)."""
    top = os.path.abspath(root)
    real = _PINNED.get(top)
    if real is None:
        return os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OutsideError(e.errno, "the watch folder was replaced by a link or a file since bbsd started: "
                               "bbsd never follows it", top) from None
        raise


def open_beneath(roots: Iterable[Path | str], path: Path | str) -> int:
    """`open_regular` on `path`, reached from its watch root one folder at a time, none of them a link.

    Each folder is opened relative to the one above with `O_NOFOLLOW | O_DIRECTORY`, so a folder
    swapped for a symlink at any moment fails the open (`OutsideError`) instead of leading out.
    The root itself is the configuration's and may be a link.
    """
    fd = open_folder_beneath(roots, path)
    try:
        return open_regular(os.path.basename(os.path.abspath(path)), dir_fd=fd)
    except OSError as e:
        e.filename = str(path)  # the whole path in messages, not the last name
        raise
    finally:
        os.close(fd)


def open_folder_beneath(roots: Iterable[Path | str], path: Path | str) -> int:
    """A descriptor on the folder that holds `path`, reached from its watch root as `open_beneath`
    does; files are then created and renamed relative to it, so nothing is written outside."""
    top, names = _split(roots, path)
    fd = open_root(top)
    try:
        for name in names[:-1]:
            try:
                below = _open_folder(name, fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OutsideError(e.errno, f"{name!r} on the way is not a folder (a symlink?): bbsd "
                                       "never leaves the watch folders", str(path)) from None
                raise
            os.close(fd)
            fd = below
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_folder(name: str, parent: int) -> int:
    """The folder `name` in `parent`, never through a link. A folder bbsd may pass through but not list
    (mode 0711) is opened as a path only (`O_PATH`, Linux): enough to open and create files in it."""
    flags = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, os.O_RDONLY | os.O_NONBLOCK | flags, dir_fd=parent)
    except PermissionError:
        if not hasattr(os, "O_PATH"):
            raise
        return os.open(name, os.O_PATH | flags, dir_fd=parent)


def beneath(roots: Iterable[Path | str], path: Path | str) -> bool:
    """Whether `path` lies under a watch root with every folder between them a real folder (no link).

    A check for the main loop's events and before a write; reading goes through `open_beneath`.
    """
    try:
        top, names = _split(roots, path)
    except OutsideError:
        return False
    if top in _PINNED and os.path.realpath(top) != _PINNED[top]:
        return False  # the root itself now leads elsewhere
    here = top
    for name in names[:-1]:
        here = os.path.join(here, name)
        try:
            if not stat.S_ISDIR(os.lstat(here).st_mode):
                return False
        except OSError:
            return False
    return True


def refusal(path: Path | str) -> str | None:
    """Why `path` must not be opened at all (a FIFO would block, a device may act), from its lstat;
    None for a regular file, or one that is gone (opening it reports that)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return "symlink: bbsd labels the file itself where it is watched, and never follows links out"
    if not stat.S_ISREG(st.st_mode):
        return f"a {kind_of(st.st_mode)}, not a regular file: never opened"
    return None


def moved_away(roots: Iterable[Path | str] | None, path: Path | str, was: Ident | None) -> str | None:
    """Why nothing may be written beside `path` now, or None: it must still be there, the same file
    that was read (`was`: device and inode), in real folders under its watch root (when `roots`)."""
    if roots and not beneath(roots, path):
        return "a folder on the way is no longer a real folder under the watch folder"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "deleted while it was labelled"
    except OSError as e:
        return f"cannot be looked at ({e.strerror})"
    if was is not None and (st.st_dev, st.st_ino) != was[:2]:
        return "replaced by another file while it was labelled"
    return None
