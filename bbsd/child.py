"""A supervised child process spoken to through `ipc` messages on its stdin/stdout.

Invariants: a child is started with its argv and answers a hello message before anything
else; every request has a deadline and a way to be abandoned (shutdown), so the caller
never blocks on a child that hangs; `kill` always reaps the process and closes its pipes.
Both the engine worker and the photo decoder are such children.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from bbsd import ipc
from bbsd.errors import AbandonedError

POLL_S = 0.2  # how often a waiting request checks for shutdown


def argv(command: str, config_path: str) -> list[str]:
    """The command that starts a child: the frozen binary itself, or this Python with -m bbsd."""
    base = [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m", "bbsd"]
    return [*base, command, "--config", config_path, "--parent", str(os.getpid())]


class StartError(Exception):
    """The child died or said `fatal` before it was ready; `hello` holds its message, if any."""

    def __init__(self, detail: str, hello: dict | None = None) -> None:
        super().__init__(detail)
        self.hello = hello


class Child:
    """One running child process and its pipes."""

    def __init__(self, argv: list[str], start_timeout: float) -> None:
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        except OSError as e:  # the executable cannot be run at all (permissions, a deleted installation)
            raise StartError(f"cannot start {argv[0]}: {e.strerror or e}") from None
        self.requests = 0
        try:
            self.hello, _ = ipc.receive(self.proc.stdout.fileno(), time.monotonic() + start_timeout)
        except (EOFError, TimeoutError) as e:
            self.kill()
            raise StartError(f"{type(e).__name__}: {e}") from None
        if self.hello["type"] == "fatal":
            self.kill()
            raise StartError(self.hello.get("message", "fatal"), self.hello)

    def request(self, header: dict, payload: bytes, deadline: float,
                cancelled: Callable[[], bool]) -> tuple[dict, bytes]:
        """Send one request and wait for its reply.

        Raises `TimeoutError` past the deadline, `AbandonedError` when `cancelled()` turns true,
        and `EOFError`/`OSError` when the child died.
        """
        ipc.send(self.proc.stdin.fileno(), header, payload)
        fd = self.proc.stdout.fileno()
        while True:
            # Wait for the first byte in short steps (to notice shutdown), then read the whole
            # message against the request's own deadline: a message is never cut in two by a
            # step, which would leave the pipe mid-message and every later reply misread.
            wait = min(POLL_S, deadline - time.monotonic())
            if wait > 0 and select.select([fd], [], [], wait)[0]:
                reply = ipc.receive(fd, deadline)
                self.requests += 1
                return reply
            if cancelled():
                raise AbandonedError("labelling abandoned at shutdown", "redone at the next start")
            if time.monotonic() >= deadline:
                raise TimeoutError("no reply before the deadline")

    def stop(self, grace_s: float = 5.0) -> None:
        if self.proc.poll() is None:
            try:
                ipc.send(self.proc.stdin.fileno(), {"type": "exit"})
                self.proc.wait(timeout=grace_s)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self) -> str:
        """Kill and reap the child; return how it ended ("signal 6", "exit code 1")."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream:
                stream.close()
        code = self.proc.returncode
        return f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"


# --- the child's side ---------------------------------------------------------------------------

def die_with_parent(parent: int) -> None:
    """Ask the kernel to kill this process when its parent dies, so no orphan holds memory."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return  # not Linux: the pipe's EOF still ends the child between requests
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def message_pipes() -> tuple[int, int]:
    """Keep the real stdin/stdout for messages; point fd 1 at stderr for stray native prints."""
    inp, out = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    return inp, out
