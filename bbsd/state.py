"""The daemon's status file: what `bbsd status` shows, kept without a network port.

Invariant: `status.json` in the state directory is replaced atomically (readers never see
half a file) when what it shows changes (at most about once a second), and otherwise every
HEARTBEAT_S; never fsynced: it is a convenience, and an idle daemon must not wear the disk.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bbsd import atomic
from bbsd.errors import SidecarWriteError

FILE = "status.json"
HEARTBEAT_S = 30.0


def state_dir(configured: Path | None) -> Path:
    """Configured dir, else systemd's $STATE_DIRECTORY, else /var/lib/bbsd if usable, else ~/.local/state/bbsd."""
    if configured is not None:
        return configured
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    system = Path("/var/lib/bbsd")
    if (system / FILE).exists() or (system.is_dir() and os.access(system, os.W_OK)):
        return system
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "bbsd"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo), 1)


class Status:
    """Counters and recent latencies of this daemon run; `write` publishes them."""

    def __init__(self, folder: Path, model: str) -> None:
        self.path = folder / FILE
        self.started = time.time()
        self.model = model
        self.labeled = self.failed = 0
        self.latencies: deque[float] = deque(maxlen=1000)
        self.last_ms: float | None = None
        self.rss_mb: float | None = None
        self.vram_mb: float | None = None
        self._written = 0.0
        self._shown: tuple | None = None

    def record(self, ok: bool, total_ms: float | None, memory: dict[str, float | None] | None) -> None:
        if ok:
            self.labeled += 1
        else:
            self.failed += 1
        if total_ms is not None:
            self.latencies.append(total_ms)
            self.last_ms = round(total_ms, 1)
        if memory:
            self.rss_mb, self.vram_mb = memory.get("rss"), memory.get("vram")

    def snapshot(self, state: str, queue_depth: int, in_flight: str | None) -> dict[str, Any]:
        lat = list(self.latencies)
        return {
            "pid": os.getpid(), "state": state, "model": self.model,
            "started_at": datetime.fromtimestamp(self.started, UTC).isoformat(timespec="seconds"),
            "uptime_s": round(time.time() - self.started), "queue_depth": queue_depth, "in_flight": in_flight,
            "labeled": self.labeled, "failed": self.failed, "last_ms": self.last_ms,
            "p50_ms": percentile(lat, 0.5), "p95_ms": percentile(lat, 0.95),
            "rss_mb": self.rss_mb, "vram_mb": self.vram_mb,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def write(self, state: str, queue_depth: int, in_flight: str | None, force: bool = False) -> None:
        shown = (state, queue_depth, in_flight, self.labeled, self.failed, self.rss_mb)
        since = time.monotonic() - self._written
        if not force and (since < 1.0 or (shown == self._shown and since < HEARTBEAT_S)):
            return
        self._written, self._shown = time.monotonic(), shown
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = json.dumps(self.snapshot(state, queue_depth, in_flight)).encode()
            atomic.write_bytes(self.path, data, durable=False)
        except (OSError, SidecarWriteError):
            pass  # status is a convenience; labelling goes on without it


def read(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / FILE).read_text())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by the bbsd user
    return True
