"""sd_notify without libsystemd: one datagram per message to $NOTIFY_SOCKET.

Invariant: outside systemd (no $NOTIFY_SOCKET) every call is a no-op, and a notify that
fails never takes the daemon down. Abstract sockets ('@name') are supported.
Protocol: https://www.freedesktop.org/software/systemd/man/sd_notify.html
"""

from __future__ import annotations

import os
import socket
import threading

import structlog

log = structlog.get_logger("bbsd.systemd")


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self._address = ("\0" + address[1:]) if address and address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: object) -> bool:
        """`send(READY=1, STATUS="...")` → "READY=1\\nSTATUS=..."; False when not under systemd or it failed."""
        if self._sock is None:
            return False
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            self._sock.sendto(message, self._address)
        except OSError as e:
            log.warning("systemd.notify_failed", error=str(e))
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def extend_timeout(self, seconds: float, status: str) -> bool:
        return self.send(EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000), STATUS=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half of WatchdogSec (systemd's advice), when the watchdog is on for this very process."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


class ExtendingStartTimeout:
    """While the model loads, tell systemd every 10 s to wait 30 s more (a 20 GB model takes a while)."""

    def __init__(self, notifier) -> None:
        self._notifier, self._done = notifier, threading.Event()
        self._thread = threading.Thread(target=self._beat, name="bbsd-load-heartbeat", daemon=True)

    def _beat(self) -> None:
        while True:
            self._notifier.extend_timeout(30, "loading the model")
            if self._done.wait(10):
                return

    def __enter__(self):
        if self._notifier.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
