"""The daemon's status file: what `bbsd status` shows, kept without a network port.

Invariants: each daemon instance (one config file) has its own state folder, derived from the
config's path unless `[service] state_dir` names one, so two daemons on one PC never share a
status file and `bbsd status --config X` reads X's; a daemon refuses to start on a state folder
that a running daemon of another config holds. `status.json` is replaced atomically (readers never see
half a file) when what it shows changes (at most about once a second), and otherwise every
HEARTBEAT_S; never fsynced: it is a convenience, and an idle daemon must not wear the disk.
Latency and memory come from labelled photos only: a failed photo is counted by its error code,
never as a latency point (its few milliseconds, or none) or as the daemon's own smaller RSS.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bbsd import atomic, instance
from bbsd.errors import ConfigError, SidecarWriteError
from bbsd.metrics import by_code, percentile

FILE = instance.STATUS_FILE
HEARTBEAT_S = 30.0


def claim(folder: Path, config: Path) -> None:
    """Refuse to share a state folder with a running daemon of another config (an explicit state_dir)."""
    doc = read(folder)
    if not doc or doc.get("config") in (None, str(config)) or doc.get("state") == "stopped":
        return
    if alive(doc.get("pid", 0)) and doc["pid"] != os.getpid():
        raise ConfigError(f"state folder {folder} is in use by the bbsd daemon of {doc['config']} (pid {doc['pid']})",
                          f"give each daemon its own [service] state_dir in {config}, or leave it unset")


class Status:
    """Counters and recent latencies of this daemon run; `write` publishes them."""

    def __init__(self, folder: Path, model: str, config: Path | None = None) -> None:
        self.path = folder / FILE
        self.config = str(config) if config else None
        self.started = time.time()
        self.model = model
        self.labeled = self.failed = 0
        self.failures: Counter[str] = Counter()  # failed photos by error code
        self.latencies: deque[float] = deque(maxlen=1000)
        self.last_ms: float | None = None
        self.rss_mb: float | None = None
        self.vram_mb: float | None = None
        self.busy = 0  # photos in hand (several with a remote backend)
        self.endpoints: list[dict[str, Any]] = []  # a remote backend's per-endpoint health and latency
        self._written = 0.0
        self._shown: tuple | None = None

    def record(self, ok: bool, total_ms: float | None, memory: dict[str, float | None] | None,
               code: str = "") -> None:
        """One photo done: a labelled one's time and memory, or a failed one's error code."""
        if not ok:
            self.failed += 1
            self.failures[code] += 1
            return
        self.labeled += 1
        if total_ms is not None:
            self.latencies.append(total_ms)
            self.last_ms = round(total_ms, 1)
        if memory:
            self.rss_mb, self.vram_mb = memory.get("rss"), memory.get("vram")

    def snapshot(self, state: str, queue_depth: int, in_flight: str | None) -> dict[str, Any]:
        lat = list(self.latencies)
        return {
            "pid": os.getpid(), "state": state, "model": self.model, "config": self.config,
            "started_at": datetime.fromtimestamp(self.started, UTC).isoformat(timespec="seconds"),
            "uptime_s": round(time.time() - self.started), "queue_depth": queue_depth, "in_flight": in_flight,
            "labeled": self.labeled, "failed": self.failed, "failures": by_code(self.failures.elements()),
            "last_ms": self.last_ms,
            "p50_ms": percentile(lat, 0.5), "p95_ms": percentile(lat, 0.95),
            "rss_mb": self.rss_mb, "vram_mb": self.vram_mb, "busy": self.busy,
            **({"endpoints": self.endpoints} if self.endpoints else {}),
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def write(self, state: str, queue_depth: int, in_flight: str | None, force: bool = False) -> None:
        shown = (state, queue_depth, in_flight, self.labeled, self.failed, self.rss_mb, self.busy,
                 [(e.get("url"), e.get("state"), e.get("in_flight")) for e in self.endpoints])
        since = time.monotonic() - self._written
        if not force and (since < 1.0 or (shown == self._shown and since < HEARTBEAT_S)):
            return
        self._written, self._shown = time.monotonic(), shown
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # ASCII (a file name's lone surrogates escaped); a value of a type JSON lacks is shown as text
            data = json.dumps(self.snapshot(state, queue_depth, in_flight), default=str).encode()
            atomic.write_bytes(self.path, data, durable=False)
        except (OSError, SidecarWriteError, ValueError):
            pass  # status is a convenience; labelling goes on without it


def read(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / FILE).read_text())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    """A process of that id exists (one of another user's counts: the bbsd user's daemon)."""
    return pid > 0 and psutil.pid_exists(pid)
