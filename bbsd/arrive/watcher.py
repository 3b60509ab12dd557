"""watchdog observers over the watch folders: inotify locally, polling on network shares.

Invariants: handlers run on watchdog's threads and only enqueue `(path, closed)`; a folder
on NFS/SMB/CIFS/sshfs (where inotify sees nothing written by other machines) is polled; a
folder that disappears (an unmounted share) is reported once and watched again when it
comes back — its photos are never taken as deleted, bbsd removes nothing. Neither observer
follows a link below a root (inotify with `IN_DONT_FOLLOW`, polling with `lstat`), and a name
that is not valid UTF-8 travels as Python's surrogate-escaped str (`os.fsdecode`), never an error.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
from pathlib import Path

import psutil
import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserverVFS

from bbsd.arrive.filters import in_junk_dir, is_photo

log = structlog.get_logger("bbsd.watcher")
Event = tuple[Path, bool]  # (path, closed): closed = the writer finished (close-after-write or renamed in)
NETWORK_FILESYSTEMS = frozenset({"nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "fuse.sshfs", "sshfs",
                                 "9p", "afs", "ceph", "glusterfs", "fuse.glusterfs", "davfs", "fuse.davfs2",
                                 "fuse.rclone", "lustre", "gpfs", "beegfs"})


def filesystem_type(path: Path, partitions=None) -> str:
    """The type of the filesystem `path` lives on (longest matching mount point)."""
    parts = psutil.disk_partitions(all=True) if partitions is None else partitions
    real = os.path.realpath(path)
    best = max((p for p in parts if real == p.mountpoint or real.startswith(p.mountpoint.rstrip("/") + "/")),
               key=lambda p: len(p.mountpoint), default=None)
    return best.fstype if best else "unknown"


def _own_stat(roots: set[str], path: str | bytes) -> os.stat_result:
    return os.stat(path) if os.fsdecode(path) in roots else os.lstat(path)


def choose_observer(mode: str, fstype: str) -> str:
    if mode != "auto":
        return mode
    return "polling" if fstype in NETWORK_FILESYSTEMS else "native"


class _Handler(FileSystemEventHandler):
    def __init__(self, sink: queue.Queue[Event], roots: tuple[Path, ...], extensions: tuple[str, ...]) -> None:
        self._sink, self._roots, self._extensions = sink, roots, extensions

    def _offer(self, raw: str | bytes, closed: bool) -> None:
        path = Path(os.fsdecode(raw))
        if is_photo(path, self._extensions) and not in_junk_dir(path, self._roots):
            self._sink.put((path, closed))

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileMovedEvent):
            self._offer(event.dest_path, closed=True)
        elif isinstance(event, FileClosedEvent):
            self._offer(event.src_path, closed=True)
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent):
            self._offer(event.src_path, closed=False)
        elif isinstance(event, DirMovedEvent):
            self._sink.put((Path(os.fsdecode(event.dest_path)), True))  # a folder moved in: scan it
        elif isinstance(event, DirCreatedEvent):
            # inotify watches new sub-folders only after they exist: what `mkdir -p` plus a quick
            # write puts there can slip past, so the service scans new folders too.
            self._sink.put((Path(os.fsdecode(event.src_path)), True))


class Watcher:
    def __init__(self, roots: tuple[Path, ...], extensions: tuple[str, ...], recursive: bool, mode: str,
                 poll_seconds: float, sink: queue.Queue[Event]) -> None:
        self._roots, self._recursive, self._mode = roots, recursive, mode
        self._handler = _Handler(sink, roots, extensions)
        tops = {os.fspath(r) for r in roots}
        # Polling looks at each entry itself (lstat), so it never walks a symlinked folder out of the
        # root; a root may be a link (the configuration's), so it alone is followed.
        poll_stat = functools.partial(_own_stat, tops)
        self._observers = {"native": Observer(),
                           "polling": PollingObserverVFS(poll_stat, os.scandir, polling_interval=poll_seconds)}
        for obs in self._observers.values():
            obs.daemon = True
        self._watches: dict[Path, tuple[str, object] | None] = dict.fromkeys(roots)

    def start(self) -> None:
        for obs in self._observers.values():
            obs.start()
        for root in self._roots:
            if not self._attach(root):
                log.error("folder.missing", folder=str(root), hint="is the share mounted? watched again when back")

    def _attach(self, root: Path) -> bool:
        if not root.is_dir():
            return False
        fstype = filesystem_type(root)
        kind = choose_observer(self._mode, fstype)
        watch = self._observers[kind].schedule(self._handler, str(root), recursive=self._recursive)
        self._watches[root] = (kind, watch)
        log.info("folder.watching", folder=str(root), observer=kind, filesystem=fstype)
        return True

    def check(self) -> list[Path]:
        """Notice folders that vanished or came back; return those that came back (to rescan)."""
        back = []
        for root, current in self._watches.items():
            present = root.is_dir()
            if current is not None and not present:
                self._detach(root, current)
                log.error("folder.missing", folder=str(root), hint="is the share mounted? watched again when back")
            elif current is None and present and self._attach(root):
                log.info("folder.back", folder=str(root))
                back.append(root)
        return back

    def _detach(self, root: Path, current: tuple[str, object]) -> None:
        kind, watch = current
        with contextlib.suppress(KeyError, OSError):  # inotify may have dropped it with the folder
            self._observers[kind].unschedule(watch)
        self._watches[root] = None

    def stop(self) -> None:
        for obs in self._observers.values():
            obs.stop()
        for obs in self._observers.values():
            obs.join(timeout=5)
