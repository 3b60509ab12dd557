"""A supervised child process spoken to through `ipc` messages on its stdin/stdout.

Invariants: a child is started with its argv, is handed the configuration the daemon validated
(the frozen `Settings`, pickled, as the first message on its stdin: a child never reads the
configuration file, which may have changed or broken since the daemon read it; the object, not
the text, because validating again reads the filesystem again — reference photos, the model
registry — and could fail where the daemon's validation passed) and answers a hello message
before anything else; every request has a deadline and a way to be abandoned
(shutdown), so the caller never blocks on a child that hangs; `kill` always reaps the process
and closes its pipes. Both the engine worker and the photo decoder are such children.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from bbsd.contain import ipc
from bbsd.errors import AbandonedError

POLL_S = 0.2  # how often a waiting request checks for shutdown


def argv(command: str, config_path: str) -> list[str]:
    """The command that starts a child: the frozen binary itself, or this Python with -m bbsd."""
    base = [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m", "bbsd"]
    return [*base, command, "--config", config_path, "--parent", str(os.getpid())]


class StartError(Exception):
    """The child died or said `fatal` before it was ready; `hello` holds its message, if any, and
    `how` how the process ended ("signal 9", "exit code 1"; "" when it never ran)."""

    def __init__(self, detail: str, hello: dict | None = None, how: str = "") -> None:
        super().__init__(detail)
        self.hello = hello
        self.how = how

    @property
    def killed(self) -> bool:
        """Ended by SIGKILL (a person, the OOM killer) or SIGTERM: nothing wrong with the installation."""
        return self.how in (f"signal {signal.SIGKILL.value}", f"signal {signal.SIGTERM.value}")


class Child:
    """One running child process and its pipes. `settings`: the validated configuration it is handed
    (None: the child reads the file named in its argv itself, as a child started by hand does)."""

    def __init__(self, argv: list[str], start_timeout: float, settings=None) -> None:
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        except OSError as e:  # the executable cannot be run at all (permissions, a deleted installation)
            raise StartError(f"cannot start {argv[0]}: {e.strerror or e}") from None
        self.requests = 0
        sender = _hand_over(self.proc.stdin.fileno(), settings)
        try:
            self.hello, _ = ipc.receive(self.proc.stdout.fileno(), time.monotonic() + start_timeout)
        except (EOFError, TimeoutError) as e:
            ours = isinstance(e, TimeoutError) and self.proc.poll() is None  # killed here, at the deadline
            if ours:
                self.proc.kill()
            sender.join()  # its write ends with the process (EPIPE): only then may its pipe be closed
            how = "killed at the start deadline" if ours else self.kill()
            self.kill()
            raise StartError(f"{type(e).__name__}: {e} ({how})", how=how) from None
        sender.join()  # done: the child read it all before it said hello
        if self.hello["type"] == "fatal":
            how = self.kill()
            raise StartError(self.hello.get("message", "fatal"), self.hello, how)

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


def _hand_over(fd: int, settings) -> threading.Thread:
    """Write the settings message from a thread of its own: a child that hangs before reading its
    stdin (a large catalog is more than a pipe holds) must not block the daemon past the start
    deadline. The child reads it whole before its hello; a child killed first ends the write (EPIPE)."""
    header = {"type": "settings", "load": settings is None}
    payload = b"" if settings is None else pickle.dumps(settings)

    def send() -> None:
        with contextlib.suppress(OSError):
            ipc.send(fd, header, payload)

    sender = threading.Thread(target=send, name="bbsd-child-settings", daemon=True)
    sender.start()
    return sender


def wait(seconds: float, cancelled: Callable[[], bool]) -> None:
    """Sleep `seconds` (a restart's backoff) in POLL_S steps; `AbandonedError` once `cancelled()` (shutdown)."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if cancelled():
            raise AbandonedError("labelling abandoned at shutdown", "the photo stays pending and is redone at start")
        time.sleep(min(POLL_S, left))


# --- the child's side ---------------------------------------------------------------------------

def receive_settings(fd: int, load: Callable[[], object]):
    """The configuration the daemon validated (the first message on stdin); `load()` reads the file
    instead when the parent sent none (a child started by hand or by a test)."""
    header, payload = ipc.receive(fd)
    if header.get("type") != "settings":
        raise EOFError(f"expected the settings message first, got {header.get('type')!r}")
    return load() if header.get("load") else pickle.loads(payload)  # noqa: S301 - our own parent wrote it


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
