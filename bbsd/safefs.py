"""Opening files in a watch folder that anyone may have put there: never a link, a FIFO or a device.

Invariants: a file is opened with `O_NOFOLLOW | O_NONBLOCK` (a symlink is refused by the kernel,
a FIFO cannot block the open) and accepted only when `fstat` on the open descriptor says it is a
regular file, so what is checked is what is read — nothing can be swapped in between; a read
stops at a size cap, so a huge or endless file costs a bounded amount of memory.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

CHUNK = 1 << 20


class NotRegularError(OSError):
    """A symlink, FIFO, socket, device or folder where bbsd expected a regular file."""


class TooLargeError(OSError):
    """A file larger than bbsd agrees to read (a runaway or hostile file)."""


def kind_of(mode: int) -> str:
    """A word for what a file is, for messages and events."""
    for test, word in ((stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device"), (stat.S_ISDIR, "folder")):
        if test(mode):
            return word
    return "file" if stat.S_ISREG(mode) else "special file"


def open_regular(path: Path | str, *, dir_fd: int | None = None) -> int:
    """A read-only descriptor on `path` (relative to `dir_fd` when given) if it is a regular file.

    Raises `FileNotFoundError` when it is gone, `NotRegularError` when it is not a regular file
    (a symlink included, whatever it points to), `OSError` for the rest (permissions).
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
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


def read_regular(path: Path | str, limit: int | None = None, *, dir_fd: int | None = None) -> bytes:
    """The whole content of the regular file `path`; `TooLargeError` past `limit` bytes."""
    fd = open_regular(path, dir_fd=dir_fd)
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
