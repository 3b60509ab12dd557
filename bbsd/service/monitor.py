"""What the daemon tells the outside world about itself: systemd notifications and the status file.

Invariants: READY is sent once, after the model loaded and the watcher runs; WATCHDOG pings
go out only while the labelling worker is healthy (idle, or busy for less than the per-photo
timeout); STOPPING is sent before the drain begins. Outside systemd all of it is a no-op
except the status file.
"""

from __future__ import annotations

import time
from pathlib import Path

from bbsd.service import state
from bbsd.service.sdnotify import Notifier, watchdog_interval


class Monitor:
    def __init__(self, state_folder: Path, model: str, busy_limit_s: float, notifier: Notifier | None = None,
                 config: Path | None = None) -> None:
        self.notifier = notifier or Notifier()
        self.status = state.Status(state_folder, model, config)
        self._busy_limit = busy_limit_s
        self._watchdog_every = watchdog_interval()
        self._last_ping = 0.0
        self._last_status = ""
        self.phase = "starting"

    def ready(self, queue_depth: int) -> None:
        self.phase = "running"
        self.notifier.ready(self._line(queue_depth))
        self.status.write(self.phase, queue_depth, None, force=True)

    def photo_done(self, ok: bool, total_ms: float | None, memory: dict | None, code: str = "") -> None:
        self.status.record(ok, total_ms, memory, code)

    def tick(self, queue_depth: int, in_flight: str | None, busy_since: float | None, *, busy: int = 0,
             endpoints: list[dict] | None = None) -> None:
        """Called from the main loop a few times a second; `in_flight`/`busy_since` are the oldest photo in hand."""
        now = time.monotonic()
        healthy = busy_since is None or now - busy_since < self._busy_limit
        if self._watchdog_every and healthy and now - self._last_ping >= self._watchdog_every:
            self.notifier.watchdog()
            self._last_ping = now
        line = self._line(queue_depth)
        if line != self._last_status:
            self.notifier.status(line)
            self._last_status = line
        self.status.busy, self.status.endpoints = busy, endpoints or []
        self.status.write(self.phase, queue_depth, in_flight)

    def stopping(self, queue_depth: int) -> None:
        self.phase = "stopping"
        self.notifier.stopping(f"stopping; {queue_depth} photos left for the next start")
        self.status.write(self.phase, queue_depth, None, force=True)

    def stopped(self) -> None:
        self.phase = "stopped"
        self.status.write(self.phase, 0, None, force=True)
        self.notifier.close()

    def _line(self, queue_depth: int) -> str:
        s = self.status
        last = f"{s.last_ms:.0f} ms" if s.last_ms is not None else "-"
        return f"queue {queue_depth}, labelled {s.labeled}, failed {s.failed}, last {last}"
