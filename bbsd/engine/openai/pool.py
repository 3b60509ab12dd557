"""The endpoints of the `openai` backend: who is up, who is least busy, and one HTTP exchange.

Invariants: an endpoint never has more than its `in_flight` requests open; a request goes to
the up endpoint with the lowest share of its limit in use; an endpoint that fails
`down_after_failures` times in a row is marked down and not used until a probe (GET
<root>/models, or /api/tags for Ollama) answers, at most every `probe_seconds`; API keys are
sent as a header only, never logged or returned. HTTP is the standard library's
http.client: one keep-alive connection per worker thread and endpoint, no extra dependency.

What a server sends is bounded before it is believed: one exchange, from connecting to the
reply's last byte, ends by its deadline however slowly the bytes come (`_Watchdog`); a reply is
read in chunks and refused past `REPLY_LIMIT_BYTES`; its JSON must be one object, and numbers
that are not finite (NaN, Infinity, 1e999) are read as null; what a server wrote that reaches a
message, a log or `bbsd status` is shown with its control characters escaped and capped.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import itertools
import json
import math
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog

from bbsd.errors import AbandonedError
from bbsd.text import printable

log = structlog.get_logger("bbsd.openai")
PROBE_TIMEOUT_S = 5.0
# A reply larger than this is a misbehaving server, not a label: it holds max_output_tokens'
# 8,192 at most at 256 bytes a token, far more than a token takes JSON-escaped, reasoning
# included (it counts towards the same limit). Reading on would let one server fill the
# daemon's memory, and parsing takes up to 25 times the text's size ([{},{},...]: 8 MiB took
# 200 MB), so the cap bounds that too. It counts as a failure of the endpoint
# (InvalidReplyError, retried elsewhere): the photo did nothing to cause it, and a server that
# does it again is marked down before it costs every photo as much.
REPLY_LIMIT_BYTES = 2 * 2**20
SERVER_TEXT_CHARS = 300  # what a server wrote, as far as it goes into a message or a log
_CHUNK = 64 * 1024


class ServerError(Exception):
    """A failure of one exchange; its message may quote the server, so it is escaped and capped."""

    def __init__(self, message: str) -> None:
        super().__init__(printable(message[:SERVER_TEXT_CHARS])[:SERVER_TEXT_CHARS])


class TransientError(ServerError):
    """The endpoint failed in a way another try may not (connection, timeout, 5xx, 429, garbage)."""


class InvalidReplyError(TransientError):
    """The endpoint answered, but not with a reply bbsd can read (not JSON, the wrong shape, too big)."""


class _NotSent(Exception):
    """A kept-alive connection failed while the request was being written to it."""


class RejectedError(ServerError):
    """The endpoint refused this request (4xx): trying it again elsewhere will not help."""


def _null(_constant: str) -> None:
    return None  # NaN, Infinity, -Infinity: a server's number that means nothing is dropped


def _finite(literal: str) -> float | None:
    value = float(literal)
    return value if math.isfinite(value) else None  # 1e999 reads as inf: dropped as well


def parse(raw: bytes) -> dict:
    """A reply body as one JSON object, its non-finite numbers as None; InvalidReplyError otherwise."""
    try:
        doc = json.loads(raw, parse_constant=_null, parse_float=_finite)
    except RecursionError:
        raise InvalidReplyError("the reply's JSON is nested too deeply") from None
    except ValueError:  # UnicodeDecodeError (not UTF-8) is one too
        raise InvalidReplyError(f"the body is not JSON: {raw[:80]!r}") from None
    if not isinstance(doc, dict):
        raise InvalidReplyError(f"the reply is a JSON {type(doc).__name__}, not an object")
    return doc


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
        deadline = time.monotonic() + timeout  # the whole exchange, not each read: a server may drip
        conn = _alive(conns.pop(self.cfg.url, None)) or self._connect()
        try:
            conn, status, raw = self._send(conn, method, path, data, deadline, timeout)
        except _NotSent:
            # Our kept connection looked alive but was closed under us while we wrote the request:
            # the server cannot have seen it whole, so it goes again on a new connection, and this
            # is no failure of the endpoint (it must not count towards marking it down).
            conn, status, raw = self._send(self._connect(), method, path, data, deadline, timeout)
        conns[self.cfg.url] = conn  # keep-alive for this thread's next request
        if status >= 500 or status in (408, 429):
            raise TransientError(f"HTTP {status}: {raw[:160].decode(errors='replace')}")
        if status >= 400:
            raise RejectedError(f"HTTP {status}: {raw[:300].decode(errors='replace')}")
        return parse(raw)

    def _send(self, conn: http.client.HTTPConnection, method: str, path: str, data: bytes | None,
              deadline: float, timeout: float) -> tuple[http.client.HTTPConnection, int, bytes]:
        """One request and its whole reply by `deadline`. _NotSent where a reused connection failed while
        the request was being written (never once it was sent: the server may be working on it, or
        have crashed on it, and sending it again would cost it twice)."""
        reused = conn.sock is not None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        watch, sent, failed, resp = _WATCHDOG.arm(conn, deadline), False, None, None
        try:
            _connect_by(conn, deadline)
            conn.request(method, self.path(path), body=data, headers=headers)
            sent = True
            resp = conn.getresponse()
            raw = _read(resp)
        except (OSError, http.client.HTTPException, InvalidReplyError) as e:
            failed = e
        finally:  # closed only once disarmed: a shutdown racing the close could hit a new socket on the same fd
            fired = _WATCHDOG.disarm(watch)
        if failed is None and not fired:
            return conn, resp.status, raw
        if resp is not None:
            resp.close()  # its file holds the socket open past conn.close(), and a server would go on sending
        conn.close()  # what is left of the reply is never read: the connection is spent
        if reused and not sent and isinstance(failed, OSError) and not isinstance(failed, TimeoutError) and not fired:
            raise _NotSent
        # `fired` with no error: the socket was shut down under a reply that ended just then, not one to trust
        raise _failure(failed, fired, timeout)

    def _connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port)

    def health(self) -> dict:
        from bbsd.metrics import percentile

        return {"url": self.cfg.url, "model": self.cfg.model, "state": "up" if self.down_until is None else "down",
                "in_flight": self.in_flight, "limit": self.cfg.in_flight, "done": self.done, "failed": self.failed,
                "p50_ms": percentile(list(self.latencies), 0.5), "last_error": self.last_error}


def _connect_by(conn: http.client.HTTPConnection, deadline: float) -> None:
    """Connect if not yet connected, each socket operation bounded by what is left of the deadline."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("no time left")
    conn.timeout = left
    if conn.sock is None:
        conn.connect()
    conn.sock.settimeout(left)  # a socket is given the timeout only when it connects


def _read(resp: http.client.HTTPResponse) -> bytes:
    """The whole body, in chunks, refused past REPLY_LIMIT_BYTES before it is held in memory."""
    if resp.length is not None and resp.length > REPLY_LIMIT_BYTES:
        raise InvalidReplyError(f"the reply would be {resp.length:,} bytes, more than the "
                                f"{REPLY_LIMIT_BYTES // 2**20} MiB a reply may be")
    parts, size = [], 0
    while chunk := resp.read1(_CHUNK):
        size += len(chunk)
        if size > REPLY_LIMIT_BYTES:
            raise InvalidReplyError(f"the reply is larger than the {REPLY_LIMIT_BYTES // 2**20} MiB a reply may be")
        parts.append(chunk)
    if resp.length:  # read1 ends quietly at EOF, where read() would raise IncompleteRead
        raise http.client.IncompleteRead(b"", resp.length)
    resp.close()  # the connection may carry the next request
    return b"".join(parts)


def _failure(e: BaseException | None, fired: bool, timeout: float) -> TransientError:
    if fired or e is None or isinstance(e, TimeoutError):
        return TransientError(f"no whole reply within {timeout:g} s")
    if isinstance(e, InvalidReplyError):
        return e
    return TransientError(f"{type(e).__name__}: {e}")


class _Watch:
    """One exchange's deadline: `fired` once it passed, `done` once the exchange ended."""

    __slots__ = ("conn", "done", "fired")

    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self.conn = conn
        self.done = self.fired = False


class _Watchdog:
    """Shuts down the socket of an exchange whose deadline passed. A socket timeout bounds each read,
    and a server that sends a byte every second never lets one run out; a socket shut down wakes the
    thread blocked on it at once (its read sees the end of the stream). One thread for all exchanges."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Watch]] = []
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, conn: http.client.HTTPConnection, deadline: float) -> _Watch:
        watch = _Watch(conn)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._ids), watch))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="bbsd-deadline", daemon=True)
                self._thread.start()
            self._cond.notify()
        return watch

    def disarm(self, watch: _Watch) -> bool:
        """Whether the deadline fired; after this it never will (the connection may be kept)."""
        with self._cond:
            watch.done = True
            return watch.fired

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                left = self._heap[0][0] - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                watch = heapq.heappop(self._heap)[2]
                watch.fired = True
                sock = watch.conn.sock  # None while still connecting: connect's own timeout ends it
                if sock is not None:
                    with contextlib.suppress(OSError):  # the base class's: an SSL socket's would unwrap
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)


_WATCHDOG = _Watchdog()


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


@dataclass
class Slot:
    """One request's hold on an endpoint, and how the request went (None: not known)."""

    endpoint: Endpoint
    ok: bool | None = None
    latency_ms: float | None = None
    error: str = ""


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

    @contextlib.contextmanager
    def slot(self, cancelled: Callable[[], bool], avoid: Endpoint | None = None) -> Iterator[Slot]:
        """An endpoint's slot for one request, given back however the request ends: with the verdict
        the caller set on it, or none (an exception of bbsd's own: it counts for no endpoint)."""
        held = Slot(self.acquire(cancelled, avoid))
        try:
            yield held
        finally:
            self.release(held.endpoint, held.ok, held.latency_ms, held.error)

    def release(self, e: Endpoint, ok: bool | None, latency_ms: float | None = None, error: str = "") -> None:
        """Give `e`'s slot back; `ok` None: no verdict on the endpoint (only the slot is returned)."""
        with self._cond:
            e.in_flight -= 1
            if ok is None:
                pass
            elif ok:
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
            except ServerError as err:
                ok, why = False, str(err)
            except Exception as err:  # a probe that failed in any way leaves it down, to be probed again
                ok, why = False, printable(f"{type(err).__name__}: {err}"[:SERVER_TEXT_CHARS])
            with self._cond:
                self._probing.discard(e.cfg.url)
                if ok:
                    e.down_until, e.failures_in_a_row = None, 0
                    log.info("endpoint.up", url=e.cfg.url, reason="probe answered")
                else:
                    e.down_until, e.last_error = time.monotonic() + self._probe_s, why
                self._cond.notify_all()
