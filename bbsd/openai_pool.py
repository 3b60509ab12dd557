"""The endpoints of the `openai` backend: who is up, who is least busy, and one HTTP exchange.

Invariants: an endpoint never has more than its `in_flight` requests open; a request goes to
the up endpoint with the lowest share of its limit in use; an endpoint that fails
`down_after_failures` times in a row is marked down and not used until a probe (GET
<root>/models, or /api/tags for Ollama) answers, at most every `probe_seconds`; API keys are
sent as a header only, never logged or returned. HTTP is the standard library's
http.client: one keep-alive connection per worker thread and endpoint, no extra dependency.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog

from bbsd.errors import AbandonedError

log = structlog.get_logger("bbsd.openai")
PROBE_TIMEOUT_S = 5.0


class TransientError(Exception):
    """The endpoint failed in a way another try may not (connection, timeout, 5xx, 429, garbage)."""


class _NotSent(Exception):
    """A kept-alive connection failed while the request was being written to it."""


class RejectedError(Exception):
    """The endpoint refused this request (4xx): trying it again elsewhere will not help."""


@dataclass(frozen=True)
class EndpointConfig:
    url: str  # base URL without /v1
    model: str
    in_flight: int
    api: str  # "openai" (chat completions) or "ollama" (/api/chat with `format`)
    key_env: str | None
    key_file: str | None


class Endpoint:
    def __init__(self, cfg: EndpointConfig, key: str | None) -> None:
        self.cfg = cfg
        self._key = key  # the Authorization header only
        parts = urlsplit(cfg.url)
        self._https = parts.scheme == "https"
        self._host, self._port, self._base = parts.hostname, parts.port, parts.path.rstrip("/")
        self.in_flight = self.done = self.failed = self.failures_in_a_row = 0
        self.down_until: float | None = None  # None = up
        self.last_error = ""
        self.latencies: deque[float] = deque(maxlen=500)

    def path(self, tail: str) -> str:
        """An OpenAI API path under the URL's root (/v1 unless the URL names one, as OVMS's /v3)."""
        return (self._base or ("" if self.cfg.api == "ollama" else "/v1")) + tail

    def share(self) -> float:
        return self.in_flight / self.cfg.in_flight

    def post(self, path: str, body: dict, timeout: float, conns: dict) -> dict:
        return self._exchange("POST", path, json.dumps(body).encode(), timeout, conns)

    def get(self, path: str, timeout: float) -> dict:
        return self._exchange("GET", path, None, timeout, {})

    def _exchange(self, method: str, path: str, data: bytes | None, timeout: float, conns: dict) -> dict:
        conn = _alive(conns.pop(self.cfg.url, None)) or self._connect(timeout)
        try:
            conn, resp, raw = self._send(conn, method, path, data, timeout)
        except _NotSent:
            # Our kept connection looked alive but was closed under us while we wrote the request:
            # the server cannot have seen it whole, so it goes again on a new connection, and this
            # is no failure of the endpoint (it must not count towards marking it down).
            conn, resp, raw = self._send(self._connect(timeout), method, path, data, timeout)
        conns[self.cfg.url] = conn  # keep-alive for this thread's next request
        if resp.status >= 500 or resp.status in (408, 429):
            raise TransientError(f"HTTP {resp.status}: {raw[:160].decode(errors='replace')}")
        if resp.status >= 400:
            raise RejectedError(f"HTTP {resp.status}: {raw[:300].decode(errors='replace')}")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise TransientError(f"HTTP {resp.status} but the body is not JSON: {raw[:80]!r}") from None
        if not isinstance(doc, dict):
            raise TransientError("the reply is not a JSON object")
        return doc

    def _send(self, conn: http.client.HTTPConnection, method: str, path: str, data: bytes | None,
              timeout: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, bytes]:
        """One request and its whole reply. _NotSent where a reused connection failed while the request
        was being written (never once it was sent: the server may be working on it, or have crashed
        on it, and sending it again would cost it twice)."""
        reused = conn.sock is not None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        try:
            conn.timeout = timeout
            if reused:
                conn.sock.settimeout(timeout)  # a socket is given the timeout only when it connects
            conn.request(method, self.path(path), body=data, headers=headers)
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            if reused and isinstance(e, OSError) and not isinstance(e, TimeoutError):
                raise _NotSent from None
            raise TransientError(f"{type(e).__name__}: {e}"[:200]) from None
        try:
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise TransientError(f"{type(e).__name__}: {e}"[:200]) from None
        return conn, resp, raw

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=timeout)

    def health(self) -> dict:
        from bbsd.state import percentile

        return {"url": self.cfg.url, "model": self.cfg.model, "state": "up" if self.down_until is None else "down",
                "in_flight": self.in_flight, "limit": self.cfg.in_flight, "done": self.done, "failed": self.failed,
                "p50_ms": percentile(list(self.latencies), 0.5), "last_error": self.last_error}


def _alive(conn: http.client.HTTPConnection | None) -> http.client.HTTPConnection | None:
    """A kept-alive connection still fit for the next request, else None (closed). A server closes
    idle ones (llama-server after 5 s, its cpp-httplib default) and drops all of them when it
    restarts; its end of the socket then reads as ready (EOF) before we have asked anything, which
    is what urllib3 checks too. Sending on such a connection would fail after the request went out,
    when it can no longer be told from a server that failed on the request."""
    if conn is None:
        return None
    if conn.sock is not None:
        with contextlib.suppress(OSError, ValueError):
            if not select.select([conn.sock], [], [], 0)[0]:
                return conn
    conn.close()
    return None


class Pool:
    """Hands out endpoints (least busy first) and takes back how each request went."""

    def __init__(self, endpoints: list[Endpoint], down_after: int, probe_seconds: float) -> None:
        self.endpoints = endpoints
        self._down_after = down_after
        self._probe_s = probe_seconds
        self._cond = threading.Condition()
        self._probing: set[str] = set()
        # Down endpoints are probed in the background too, so one rejoins (and `bbsd status` says so)
        # while no photo is waiting, not only when the next photo asks for a slot.
        self._closed = threading.Event()
        threading.Thread(target=self._probe_loop, name="bbsd-probe", daemon=True).start()

    def _probe_loop(self) -> None:
        while not self._closed.wait(min(self._probe_s, 1.0)):
            self._probe_due()

    def close(self) -> None:
        self._closed.set()

    def acquire(self, cancelled: Callable[[], bool], avoid: Endpoint | None = None) -> Endpoint:
        """Wait for a free slot on an up endpoint (probing down ones when due); raise AbandonedError on stop."""
        while True:
            if cancelled():
                raise AbandonedError("shutdown")
            self._probe_due()
            with self._cond:
                free = [e for e in self.endpoints if e.down_until is None and e.in_flight < e.cfg.in_flight]
                if len(free) > 1 and avoid in free:
                    free.remove(avoid)  # a retry goes elsewhere when it can
                if free:
                    chosen = min(free, key=lambda e: (e.share(), e.in_flight, e.done))
                    chosen.in_flight += 1
                    return chosen
                self._cond.wait(0.25)

    def release(self, e: Endpoint, ok: bool, latency_ms: float | None = None, error: str = "") -> None:
        with self._cond:
            e.in_flight -= 1
            if ok:
                e.done += 1
                e.failures_in_a_row = 0
                e.latencies.append(latency_ms or 0.0)
            else:
                e.failed += 1
                e.failures_in_a_row += 1
                e.last_error = error
                if e.down_until is None and e.failures_in_a_row >= self._down_after:
                    e.down_until = time.monotonic() + self._probe_s
                    log.warning("endpoint.down", url=e.cfg.url, failures=e.failures_in_a_row, error=error,
                                probe_in_s=self._probe_s)
            self._cond.notify_all()

    def _probe_due(self) -> None:
        now = time.monotonic()
        with self._cond:
            due = [e for e in self.endpoints if e.down_until is not None and e.down_until <= now
                   and e.cfg.url not in self._probing]
            self._probing.update(e.cfg.url for e in due)
        for e in due:
            try:
                e.get("/api/tags" if e.cfg.api == "ollama" else "/models", PROBE_TIMEOUT_S)
                ok, why = True, ""
            except (TransientError, RejectedError) as err:
                ok, why = False, str(err)
            with self._cond:
                self._probing.discard(e.cfg.url)
                if ok:
                    e.down_until, e.failures_in_a_row = None, 0
                    log.info("endpoint.up", url=e.cfg.url, reason="probe answered")
                else:
                    e.down_until, e.last_error = time.monotonic() + self._probe_s, why
                self._cond.notify_all()
