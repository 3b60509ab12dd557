"""Messages between the daemon and its engine worker: a JSON header and an optional byte payload.

Frame: 4-byte header length, 8-byte payload length (big-endian), header (UTF-8 JSON), payload.
Invariant: a reader either gets a whole message, or `EOFError` (the peer is gone), or
`TimeoutError` (the deadline passed) — never a part. A `TimeoutError` may come after part of a
message was read, so the stream is then out of step: the caller discards that peer (the
supervisors kill the child), and never reads from it again.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any

_PREFIX = struct.Struct(">IQ")


def send(fd: int, header: dict[str, Any], payload: bytes = b"") -> None:
    head = json.dumps(header).encode()
    _write_all(fd, _PREFIX.pack(len(head), len(payload)) + head)
    if payload:
        _write_all(fd, payload)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def receive(fd: int, deadline: float | None = None) -> tuple[dict[str, Any], bytes]:
    """Read one message; `deadline` is a time.monotonic() value (None waits forever)."""
    n_head, n_payload = _PREFIX.unpack(_read_exact(fd, _PREFIX.size, deadline))
    header = json.loads(_read_exact(fd, n_head, deadline))
    return header, _read_exact(fd, n_payload, deadline) if n_payload else b""


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, remaining = [], n
    while remaining:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError("no reply before the deadline")
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise EOFError("peer closed the pipe")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
