"""The queue between settling and the worker that owns the model.

Invariants: a photo is queued at most once at a time (re-queuing updates it); the newest
photo (by mtime, or by capture time once probed; equal times by mtime) comes out first, so the
last shots of a burst come back first; a photo
taken by one worker thread is not handed to another until that one calls `done`, so several
workers never label the same photo at once; `get` blocks with a timeout and wakes at once
on `close`.
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
    order: float = 0.0  # what the queue ordered it by: its capture time once probed, else its mtime


class PhotoQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[float, float, int, Path]] = []  # (-order, -mtime, seq, path)
        self._live: dict[Path, tuple[int, float, float]] = {}  # path -> (seq, enqueued_at, mtime)
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._taken: set[Path] = set()  # handed to a worker and not yet done

    def __len__(self) -> int:
        with self._cond:
            return len(self._live)

    def __contains__(self, path: Path) -> bool:
        """Queued, or in a worker's hands until `done`."""
        with self._cond:
            return path in self._live or path in self._taken

    def put(self, path: Path, mtime: float) -> None:
        self.put_all([(path, mtime)])

    def put_all(self, items: list[tuple[Path, float]]) -> None:
        """Queue these together: a worker waiting for the first of them sees them all (and takes the newest)."""
        if not items:
            return
        with self._cond:
            now = time.monotonic()
            for path, mtime in items:
                self._push(path, mtime, self._live.get(path, (0, now))[1], mtime)
            self._cond.notify(len(items))

    def reorder(self, path: Path, order: float) -> None:
        """Order a queued photo by another time (its capture time, once probed), its mtime breaking
        ties (shots within one second, where the camera wrote no fraction); a photo already in a
        worker's hands, or not queued, is left alone (re-queuing it would label it twice)."""
        with self._cond:
            live = self._live.get(path)
            if live is not None:
                self._push(path, order, live[1], live[2])

    def _push(self, path: Path, order: float, enqueued: float, mtime: float) -> None:
        """(Lock held.) The live entry of `path`, ordered by `order`, then `mtime`; an earlier entry
        of it is superseded."""
        seq = next(self._seq)
        self._live[path] = (seq, enqueued, mtime)
        heapq.heappush(self._heap, (-order, -mtime, seq, path))

    def get(self, timeout: float) -> Job | None:
        """Next job, or None after `timeout` seconds or once closed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                job = self._pop()
                if job is not None:
                    return job
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return None

    def _pop(self) -> Job | None:
        """The newest live entry not in a worker's hands; entries for taken photos wait their turn."""
        held = []
        job = None
        while self._heap:
            entry = heapq.heappop(self._heap)
            key, _, seq, path = entry
            live = self._live.get(path)
            if not live or live[0] != seq:  # superseded by a later put
                continue
            if path in self._taken:
                held.append(entry)
                continue
            del self._live[path]
            self._taken.add(path)
            job = Job(path, live[1], -key)
            break
        for entry in held:
            heapq.heappush(self._heap, entry)
        return job

    def done(self, path: Path) -> None:
        """The worker let go of `path`: a later put of it may now be handed out."""
        with self._cond:
            self._taken.discard(path)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
