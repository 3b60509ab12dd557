"""The queue between settling and the worker that owns the model.

Invariants: a photo is queued at most once at a time (re-queuing updates it); the newest
photo (by mtime) comes out first, so the last shots of a burst come back first; `get`
blocks with a timeout and wakes at once on `close`.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Job:
    path: Path
    enqueued_at: float  # time.monotonic()


class PhotoQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Path]] = []
        self._live: dict[Path, tuple[int, float]] = {}  # path -> (seq, enqueued_at)
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._live)

    def put(self, path: Path, mtime: float) -> None:
        with self._cond:
            seq = next(self._seq)
            enqueued = self._live.get(path, (0, time.monotonic()))[1]
            self._live[path] = (seq, enqueued)
            heapq.heappush(self._heap, (-mtime, seq, path))
            self._cond.notify()

    def get(self, timeout: float) -> Job | None:
        """Next job, or None after `timeout` seconds or once closed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                while self._heap:
                    _, seq, path = heapq.heappop(self._heap)
                    live = self._live.get(path)
                    if live and live[0] == seq:  # skip entries superseded by a later put
                        del self._live[path]
                        return Job(path, live[1])
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
