"""`Decoder`: photos decoded in a supervised child process (`decode_worker`), never in the daemon.

Invariants: a decoder crash is retried once in a fresh process and then costs that photo
alone (`decoder_crash`, the same two-strikes rule as engine crashes); a decode past
`[decode] timeout_seconds` kills the process and gets `decode_timeout`; a probe (capture
time, RAW size) that fails for any reason returns nothing and the caller falls back to the
file's metadata. A decoder process that will not start again (killed during its start, a
broken binary after it once ran) is retried with backoff for as long as it takes, the photo
waiting: the service never ends for it. Each thread that decodes owns its own `Decoder`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from PIL import Image

from bbsd import safefs
from bbsd.contain import child
from bbsd.errors import AbandonedError, BbsdError, IncompletePhotoError, PhotoError
from bbsd.photo.pixels import Decoded

log = structlog.get_logger("bbsd.decoder")
START_TIMEOUT_S = 120.0  # a cold start on a loaded PC imports Pillow, LibRaw and libheif
PROBE_TIMEOUT_S = 10.0  # a probe reads a header: anything longer is a hostile file
RESTART_MIN_S, RESTART_MAX_S = 0.5, 30.0  # backoff between failed starts of a decoder that has run before


class DecoderError(BbsdError):
    """The decoder process cannot be started at all (a broken installation, not a photo). Raised only
    by the first start of a `Decoder`, never once one has run: the daemon retries those (`_ensure`)."""


@dataclass(frozen=True)
class Probe:
    capture_time: float | None
    width: int | None  # a RAW file's sensor size after orientation
    height: int | None


class _Crashed(Exception):
    pass


class Decoder:
    def __init__(self, settings, role: str = "decode") -> None:
        self._argv = child.argv("_decoder", str(settings.source))
        self._timeout = settings.decode.timeout_seconds
        self._max_pixels = int(settings.decode.max_megapixels * 1e6)
        self._role = role  # "decode" or "probe", for the log
        self._child: child.Child | None = None
        self._settings = settings  # handed to each process it starts: the configuration the daemon validated
        self._ran = False  # a process of this decoder has started once (later failures are retried)
        self._failures, self._retry_at = 0, 0.0  # failed starts in a row; when the next may be tried

    def start(self) -> None:
        """Start the process now (the daemon, before READY), so the first photo does not pay for it."""
        self._ensure()

    def decode(self, path: Path, max_side: int, cancelled: Callable[[], bool] = lambda: False, *,
               expect: safefs.Ident | None = None) -> Decoded:
        """Decode `path` to RGB with its longest side <= `max_side`; raise `PhotoError` when it cannot.

        `expect`: the identity of the file that was hashed (`safefs.sha256_fd`). The decoder opens
        the path without following links and decodes it only if it is still that file; otherwise
        `IncompletePhotoError` ("changed"). Without it (a file the configuration names) a link is followed.
        """
        request = {"type": "decode", "path": str(path), "max_side": max_side, "max_pixels": self._max_pixels,
                   "expect": list(expect) if expect is not None else None}
        for attempt in (0, 1):
            try:
                reply, payload = self._request(request, self._timeout, cancelled)
                break
            except _Crashed as e:
                if attempt == 1:
                    raise PhotoError("decoder_crash", f"the photo decoder died twice reading this file ({e})",
                                     "the file is not retried until it changes; check it opens elsewhere") from None
                log.warning("photo.retry", path=str(path), reason="decoder_crash", how=str(e))
        if reply["type"] == "photo_error":
            cls = IncompletePhotoError if reply["incomplete"] else PhotoError
            raise cls(reply["code"], reply["message"], reply["hint"], detail=reply.get("detail", ""))
        image = Image.frombytes("RGB", tuple(reply["size"]), payload)
        return Decoded(image=image, width=reply["width"], height=reply["height"])

    def probe(self, path: Path) -> Probe | None:
        """Capture time and RAW size from the header; None when the decoder could not say."""
        try:
            reply, _ = self._request({"type": "probe", "path": str(path)}, min(self._timeout, PROBE_TIMEOUT_S),
                                     lambda: False)
        except (_Crashed, PhotoError) as e:
            log.warning("photo.probe_failed", path=str(path), reason=str(e))
            return None
        if reply["type"] != "probed":
            return None
        return Probe(reply["capture_time"], reply["width"], reply["height"])

    def _request(self, header: dict, timeout: float, cancelled: Callable[[], bool]) -> tuple[dict, bytes]:
        proc = self._ensure(cancelled)
        try:
            return proc.request(header, b"", time.monotonic() + timeout, cancelled)
        except AbandonedError:
            self._discard("shutdown")
            raise
        except TimeoutError:
            self._discard("timeout")
            raise PhotoError("decode_timeout", f"decoding took longer than {timeout:g} s",
                             "the file is not retried until it changes; raise [decode] timeout_seconds "
                             "for very large files on slow machines") from None
        except (EOFError, OSError):
            raise _Crashed(self._discard("crash")) from None

    def _ensure(self, cancelled: Callable[[], bool] | None = None) -> child.Child:
        """The running decoder process, started (again) if need be.

        Only the very first start of this decoder may fail for good (`DecoderError`: a broken
        installation, said at start-up or by `bbsd check`), and not when it was killed. Once it has
        run, a start that fails is retried with backoff (RESTART_MIN_S doubling to RESTART_MAX_S)
        for as long as it takes: a photo waits for it (until `cancelled()`: `AbandonedError`), the
        main loop's probes do not (`_Crashed`: the probe falls back to the file's metadata).
        """
        if self._child is not None and self._child.proc.poll() is not None:
            self._discard("died_idle")  # killed between photos: no photo's fault, nothing to retry
        while self._child is None:
            self._await_retry(cancelled)
            t0 = time.monotonic()
            try:
                self._child = child.Child(self._argv, START_TIMEOUT_S, self._settings)
            except child.StartError as e:
                self._start_failed(e)
                continue
            log.log(logging.INFO if self._failures or self._ran else logging.DEBUG, "decoder.started",
                    pid=self._child.proc.pid, role=self._role, start_ms=round((time.monotonic() - t0) * 1000),
                    after_failures=self._failures)
            self._ran, self._failures = True, 0
        return self._child

    def _start_failed(self, e: child.StartError) -> None:
        if not self._ran and not e.killed:
            raise DecoderError(f"the photo decoder process did not start ({e})",
                               "reinstall bbsd; run `bbsd check`") from None
        self._failures += 1
        delay = min(RESTART_MAX_S, RESTART_MIN_S * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + delay
        log.warning("decoder.start_failed", role=self._role, reason=str(e), how=e.how, failures=self._failures,
                    retry_in_s=delay)

    def _await_retry(self, cancelled: Callable[[], bool] | None) -> None:
        """Wait out the backoff after a failed start; a probe (on the main loop) does not wait."""
        left = self._retry_at - time.monotonic()
        if left > 0 and self._role == "probe" and cancelled is not None:
            raise _Crashed(f"restarting after {self._failures} failed starts")
        child.wait(left, cancelled or (lambda: False))

    def _discard(self, reason: str) -> str:
        proc, self._child = self._child, None
        if proc is None:
            return reason
        how = proc.kill()
        log.warning("decoder.lost", pid=proc.proc.pid, role=self._role, reason=reason, how=how)
        return how

    def close(self) -> None:
        if self._child is not None:
            self._child.stop(grace_s=2.0)
            self._child = None
