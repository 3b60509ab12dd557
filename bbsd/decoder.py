"""`Decoder`: photos decoded in a supervised child process (`decode_worker`), never in the daemon.

Invariants: a decoder crash is retried once in a fresh process and then costs that photo
alone (`decoder_crash`, the same two-strikes rule as engine crashes); a decode past
`[decode] timeout_seconds` kills the process and gets `decode_timeout`; a probe (capture
time, RAW size) that fails for any reason returns nothing and the caller falls back to the
file's metadata. Each thread that decodes owns its own `Decoder`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from PIL import Image

from bbsd import child, safefs
from bbsd.errors import AbandonedError, BbsdError, IncompletePhotoError, PhotoError
from bbsd.imaging import Decoded

log = structlog.get_logger("bbsd.decoder")
START_TIMEOUT_S = 120.0  # a cold start on a loaded PC imports Pillow, LibRaw and libheif
PROBE_TIMEOUT_S = 10.0  # a probe reads a header: anything longer is a hostile file


class DecoderError(BbsdError):
    """The decoder process cannot be started at all (a broken installation, not a photo)."""


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
            raise cls(reply["code"], reply["message"], reply["hint"])
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
        proc = self._ensure()
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

    def _ensure(self) -> child.Child:
        if self._child is None:
            t0 = time.monotonic()
            try:
                self._child = child.Child(self._argv, START_TIMEOUT_S)
            except child.StartError as e:
                raise DecoderError(f"the photo decoder process did not start ({e})",
                                   "reinstall bbsd; run `bbsd check`") from None
            log.debug("decoder.started", pid=self._child.proc.pid, role=self._role,
                      start_ms=round((time.monotonic() - t0) * 1000))
        return self._child

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
