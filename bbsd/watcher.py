"""watchdog observers over the watch folders.

Invariant: the handler runs on watchdog's thread and only enqueues `(path, closed)` on a
thread-safe queue; everything else (settling, labelling) happens on our own threads.
"""

from __future__ import annotations

import queue
from pathlib import Path

from watchdog.events import (
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from bbsd.filters import in_junk_dir, is_photo

# (path, closed): closed means the writer finished (close-after-write or renamed in)
Event = tuple[Path, bool]


class _Handler(FileSystemEventHandler):
    def __init__(self, sink: queue.Queue[Event], roots: tuple[Path, ...], extensions: tuple[str, ...]) -> None:
        self._sink = sink
        self._roots = roots
        self._extensions = extensions

    def _offer(self, raw: str | bytes, closed: bool) -> None:
        path = Path(raw.decode() if isinstance(raw, bytes) else raw)
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
            self._sink.put((Path(str(event.dest_path)), True))  # a folder moved in: rescan it


def start(roots: tuple[Path, ...], extensions: tuple[str, ...], recursive: bool,
          sink: queue.Queue[Event]) -> Observer:
    observer = Observer()
    handler = _Handler(sink, roots, extensions)
    for root in roots:
        observer.schedule(handler, str(root), recursive=recursive)
    observer.daemon = True
    observer.start()
    return observer
