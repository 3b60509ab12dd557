"""The endpoints of the `openai` backend: who is up, who is least busy, and one HTTP exchange.

Invariants: an endpoint never has more than its `in_flight` requests open; a request goes to
the up endpoint with the lowest share of its limit in use; an endpoint that fails
`down_after_failures` times in a row is marked down and not used until a probe (GET
<root>/models, or /api/tags for Ollama) answers, at most every `probe_seconds`; API keys are
sent as a header only, never logged or returned. HTTP is urllib3's connection pool, one per
endpoint, keeping up to `in_flight` connections alive; a kept connection the server closed while
idle (its FIN reads as EOF) is replaced before the request. urllib3 never retries or redirects
on its own: bbsd's backoff and failover decide, and a request goes out again only when writing
it on a kept connection failed (the server cannot have it whole).

What a server sends is bounded before it is believed: one exchange, from connecting to the
reply's last byte, ends by its deadline however slowly the bytes come (`_Watch`); a reply is
read in chunks and refused past `REPLY_LIMIT_BYTES`; its JSON must be one object, and numbers
that are not finite (NaN, Infinity, 1e999) are read as null; what a server wrote that reaches a
message, a log or `bbsd status` is shown with its control characters escaped and capped.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection

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
        self._base = urlsplit(cfg.url).path.rstrip("/")
        # retries=False: urllib3 neither retries nor follows a redirect by itself. A POST it sent
        # again would cost the server twice, behind bbsd's own backoff: a retry storm.
        self._http = urllib3.connection_from_url(cfg.url, maxsize=cfg.in_flight, block=False, retries=False)
        self._http.ConnectionCls = _HTTPS if self._http.scheme == "https" else _HTTP
        self.in_flight = self.done = self.failed = self.failures_in_a_row = 0
        self.down_until: float | None = None  # None = up
        self.last_error = ""
        self.latencies: deque[float] = deque(maxlen=500)

    def path(self, tail: str) -> str:
        """An OpenAI API path under the URL's root (/v1 unless the URL names one, as OVMS's /v3)."""
        return (self._base or ("" if self.cfg.api == "ollama" else "/v1")) + tail

    def share(self) -> float:
        return self.in_flight / self.cfg.in_flight

    def post(self, path: str, body: dict, timeout: float) -> dict:
        return self._exchange("POST", path, json.dumps(body).encode(), timeout)

    def get(self, path: str, timeout: float) -> dict:
        return self._exchange("GET", path, None, timeout)

    def close(self) -> None:
        """Close the kept connections (one in use is closed when its request ends)."""
        self._http.close()

    def _exchange(self, method: str, path: str, data: bytes | None, timeout: float) -> dict:
        deadline = time.monotonic() + timeout  # the whole exchange, not each read: a server may drip
        try:
            status, raw = self._send(method, path, data, deadline, timeout, resend=False)
        except _NotSent:
            # A kept connection passed urllib3's check but was closed under us while we wrote the
            # request: the server cannot have seen it whole, so it goes again, once, and this is no
            # failure of the endpoint (it must not count towards marking it down).
            status, raw = self._send(method, path, data, deadline, timeout, resend=True)
        if status >= 500 or status in (408, 429):
            raise TransientError(f"HTTP {status}: {raw[:160].decode(errors='replace')}")
        if status >= 400:
            raise RejectedError(f"HTTP {status}: {raw[:300].decode(errors='replace')}")
        return parse(raw)

    def _send(self, method: str, path: str, data: bytes | None, deadline: float, timeout: float,
              resend: bool) -> tuple[int, bytes]:
        """One request and its whole reply by `deadline`. _NotSent where writing it on a kept connection
        failed (never once it was sent: the server may be working on it, or have crashed on it, and
        sending it again would cost it twice)."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        left = deadline - time.monotonic()
        watch, failed, resp = _Watch(left), None, None
        try:
            if left <= 0:
                raise TimeoutError("no time left")
            # decode_content=False: bbsd asks for no compression, and a gzip bomb would outgrow the cap
            resp = self._http.urlopen(method, self.path(path), body=data, headers=headers,
                                      timeout=urllib3.Timeout(total=left, read=left), preload_content=False,
                                      decode_content=False)
            raw = _read(resp)
        except (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError, InvalidReplyError) as e:
            failed = e
        finally:
            fired = watch.disarm()
        if resp is not None:
            if failed is not None or fired:
                resp.close()  # and its connection: the rest is never read, and a server would go on sending
            resp.release_conn()  # back to the pool: kept alive, or its place freed
        if failed is None and not fired:
            return resp.status, raw
        if watch.unsent and not fired and not resend:
            raise _NotSent
        # `fired` with no error: the socket was shut down under a reply that ended just then, not one to trust
        raise _failure(failed, fired, timeout)

    def health(self) -> dict:
        from bbsd.metrics import percentile

        return {"url": self.cfg.url, "model": self.cfg.model, "state": "up" if self.down_until is None else "down",
                "in_flight": self.in_flight, "limit": self.cfg.in_flight, "done": self.done, "failed": self.failed,
                "p50_ms": percentile(list(self.latencies), 0.5), "last_error": self.last_error}


def _read(resp: urllib3.BaseHTTPResponse) -> bytes:
    """The whole body, in chunks, refused past REPLY_LIMIT_BYTES before it is held in memory."""
    if resp.length_remaining is not None and resp.length_remaining > REPLY_LIMIT_BYTES:
        raise InvalidReplyError(f"the reply would be {resp.length_remaining:,} bytes, more than the "
                                f"{REPLY_LIMIT_BYTES // 2**20} MiB a reply may be")
    parts, size = [], 0
    while chunk := resp.read(_CHUNK):  # a body cut short raises IncompleteRead (its Content-Length)
        size += len(chunk)
        if size > REPLY_LIMIT_BYTES:
            raise InvalidReplyError(f"the reply is larger than the {REPLY_LIMIT_BYTES // 2**20} MiB a reply may be")
        parts.append(chunk)
    return b"".join(parts)


def _failure(e: BaseException | None, fired: bool, timeout: float) -> TransientError:
    # Named as the socket or http.client named it, under urllib3's wrappers: ProtocolError('Connection
    # aborted.', RemoteDisconnected(...)), NewConnectionError from a ConnectionRefusedError.
    while isinstance(e, urllib3.exceptions.HTTPError) and (
            inner := e.__cause__ or next((a for a in e.args if isinstance(a, BaseException)), None)):
        e = inner
    if fired or e is None or isinstance(e, (TimeoutError, urllib3.exceptions.TimeoutError)):
        return TransientError(f"no whole reply within {timeout:g} s")
    if isinstance(e, InvalidReplyError):
        return e
    return TransientError(f"{type(e).__name__}: {e}")


_CURRENT = threading.local()  # `watch`: the exchange this thread runs, which its connections join
_LOCK = threading.Lock()  # a deadline shuts a socket down, and a connection closes, only under it


class _Watch:
    """One exchange's deadline. A socket timeout bounds each read, and a server that sends a byte every
    second never lets one run out; at the deadline a timer shuts the exchange's socket down, which wakes
    the thread blocked on it at once (its read sees the end of the stream). `unsent`: writing the
    request on a kept connection failed."""

    def __init__(self, left: float) -> None:
        self.conn: HTTPConnection | None = None  # the connection the exchange runs on (_Watched)
        self.done = self.fired = self.unsent = False
        _CURRENT.watch = self
        self._timer = threading.Timer(left, self._fire)
        self._timer.name, self._timer.daemon = "bbsd-deadline", True
        self._timer.start()

    def disarm(self) -> bool:
        """Whether the deadline fired; after this it never will (the connection may be kept)."""
        self._timer.cancel()
        with _LOCK:
            self.done = True
            return self.fired

    def _fire(self) -> None:
        with _LOCK:
            if self.done:
                return
            self.fired = True
            sock = self.conn.sock if self.conn is not None else None  # None while connecting: its timeout ends it
            if sock is not None:
                with contextlib.suppress(OSError):  # the base class's: an SSL socket's would unwrap
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watched:
    """A urllib3 connection that joins the deadline watch of the exchange on its thread, and tells it
    when writing a request on a kept connection failed: urllib3 swallows a broken pipe there and
    reads on, so it would look like a request the server took and dropped, never sent again."""

    _fresh = False  # connected for the request about to go out, not kept from an earlier one

    def connect(self) -> None:  # the timeout, what is left of the deadline, bounds a TLS handshake as a whole
        super().connect()
        self._fresh = True

    def request(self, *args: object, **kwargs: object) -> None:
        watch = _CURRENT.watch
        watch.conn, kept = self, self.sock is not None and not self._fresh
        try:
            super().request(*args, **kwargs)  # connects first where not yet connected (plain HTTP)
        except OSError as e:
            watch.unsent = kept and not isinstance(e, TimeoutError)
            raise
        finally:
            self._fresh = False

    def close(self) -> None:
        with _LOCK:  # never while a deadline shuts its socket down: the fd could be a new socket's by then
            super().close()


_HTTP = type("_HTTP", (_Watched, HTTPConnection), {})
_HTTPS = type("_HTTPS", (_Watched, HTTPSConnection), {})


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
        """Stop probing and close the endpoints' kept connections."""
        self._closed.set()
        for e in self.endpoints:
            e.close()

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
