"""The photo decoder: a child process, and the only place where bbsd parses photo bytes.

Invariants: everything that reads a photo's pixels or metadata (decode and downscale, EXIF
orientation and capture time, RAW previews and sizes) runs here, so a decoder's exception,
native crash (libjpeg, libtiff, libheif, LibRaw), runaway allocation or hang costs one photo
and a restart of this small process, never the daemon; the address space is capped
(`[decode] memory_mb`) so a runaway allocation fails here instead of waking the OOM killer;
every request gets exactly one reply unless the process dies.

The suite injects faults at one seam, `answer`, from a plugin of its own (tests/fakes/faults.py).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from bbsd import formats, safefs
from bbsd.contain import child, ipc
from bbsd.errors import IncompletePhotoError, PhotoError

log = structlog.get_logger("bbsd.decoder")


def main(load: Callable[[], Any], parent: int) -> int:
    """The decoder process: `load` reads the configuration for a decoder started by hand (the daemon
    hands over the settings it validated)."""
    from bbsd import logs

    child.die_with_parent(parent)
    inp, out = child.message_pipes()
    # The configuration the daemon validated, never the file as it is now (it may be broken since)
    settings = child.receive_settings(inp, load)
    logs.configure(settings.log.level, settings.log.format)  # writes to its own copy of stderr
    structlog.contextvars.bind_contextvars(decoder_pid=os.getpid())
    _capture_chatter()
    from bbsd.photo import decode as imaging  # noqa: F401 - loaded before the cap, so the libraries' own mappings fit

    _cap_memory(settings.decode.memory_mb)
    ipc.send(out, {"type": "ready", "pid": os.getpid()})
    while True:
        try:
            request, _ = ipc.receive(inp)
        except EOFError:
            return 0
        if request["type"] == "exit":
            return 0
        reply, payload = answer(request)
        ipc.send(out, reply, payload)


_current = {"path": ""}  # the photo being read, for messages that arrive from other threads


def _capture_chatter() -> None:
    """Turn what decoder libraries print into debug events about the photo, not raw stderr lines.

    LibRaw and libtiff print to fd 2 from C; Pillow warns about corrupt EXIF through `warnings`.
    A damaged file is already reported in its sidecar, so these are details for `level = "debug"`.
    """
    import threading
    import warnings

    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.dup2(write_fd, 1)
    os.close(write_fd)
    threading.Thread(target=_pump, args=(read_fd,), name="bbsd-decoder-chatter", daemon=True).start()
    warnings.showwarning = lambda message, category, *_: log.debug(
        "decoder.warning", path=_current["path"], category=category.__name__, message=str(message)[:300])


def _pump(fd: int) -> None:
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if line.strip():
                log.debug("decoder.native_message", path=_current["path"], message=line.strip()[:300])


def _cap_memory(memory_mb: int) -> None:
    if memory_mb <= 0:
        return
    limit = memory_mb * 2**20
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError) as e:  # an already lower hard limit: keep it
        log.warning("decoder.memory_cap_failed", memory_mb=memory_mb, reason=str(e))


def answer(request: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """One request's reply; no exception escapes (a photo's failure is a reply, not a crash)."""
    path = Path(request["path"])
    _current["path"] = str(path)
    try:
        with _open(path, request) as f:
            if request["type"] == "probe":
                return {"type": "probed", **probe(path, f)}, b""
            return _decode(path, f, request["max_side"], request["max_pixels"])
    except PhotoError as e:
        return _error(e.code, e.message, e.hint, incomplete=isinstance(e, IncompletePhotoError),
                      detail=e.detail), b""
    except MemoryError:
        return _error("too_large", "decoding this file needs more memory than the decoder may use",
                      "export a smaller version, or raise [decode] memory_mb"), b""
    except Exception as e:  # a decoder library's own exception types are many and undocumented
        return _error("unreadable", "the file cannot be decoded",
                      "the file is damaged or not a photo; export or copy it again",
                      detail=f"{type(e).__name__}: {str(e)[:200]}"), b""


def _open(path: Path, request: dict[str, Any]) -> BinaryIO:
    """The file to read, opened here without following a link and only if regular (`safefs`).

    A photo's request carries `expect`, the identity (device, inode, size, mtime) of the file the
    daemon hashed: anything else found at the path now (a symlink swapped in, a new copy) is
    `changed` and looked at again later, never decoded in its place. A request without it (a
    reference photo the configuration names) may go through a link.
    """
    expect = request.get("expect")
    try:
        fd = safefs.open_regular(path, follow=request["type"] == "decode" and expect is None)
    except FileNotFoundError:
        raise IncompletePhotoError("changed", "the file is gone", "nothing to do: it is labelled if it comes back") \
            from None
    except safefs.NotRegularError as e:
        raise PhotoError("not_regular", e.strerror or "not a regular file",
                         "bbsd reads only regular files in a watch folder, never through a link") from None
    f = os.fdopen(fd, "rb")
    if expect is not None and list(safefs.ident(os.fstat(fd))) != list(expect):
        f.close()
        raise IncompletePhotoError("changed", "the file changed or was replaced after bbsd read it",
                                   "nothing to do: it is looked at again once it settles")
    return f


def _decode(path: Path, f: BinaryIO, max_side: int, max_pixels: int) -> tuple[dict[str, Any], bytes]:
    from bbsd.photo import decode as imaging

    decoded = imaging.decode(path, max_side, max_pixels, fileobj=f)
    image = decoded.image
    return ({"type": "decoded", "width": decoded.width, "height": decoded.height,
             "size": [image.width, image.height]}, image.tobytes())


def probe(path: Path, f: BinaryIO | None = None) -> dict[str, Any]:
    """What ordering and pairing need, from the header only: capture time, and a RAW's size."""
    from bbsd.photo import decode as imaging
    from bbsd.photo import raw

    if formats.is_raw(path):
        width, height = raw.dimensions(path, f)
        return {"capture_time": None, "width": width, "height": height}
    return {"capture_time": imaging.capture_time(path, f), "width": None, "height": None}


def _error(code: str, message: str, hint: str, incomplete: bool = False, detail: str = "") -> dict[str, Any]:
    return {"type": "photo_error", "code": code, "message": message, "hint": hint, "incomplete": incomplete,
            "detail": detail}
