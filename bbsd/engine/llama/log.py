"""Route llama.cpp's and libmtmd's log lines into our structured log.

Invariant: nothing from the engine reaches stderr raw; each line becomes one
`llama.log` event. ggml calls back in fragments (level CONT continues a line),
so text is buffered until a newline. The callback objects live at module level
because ctypes callbacks must outlive every call from C.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading

import structlog

log = structlog.get_logger("bbsd.llama")

# enum ggml_log_level in the vendored ggml.h
_LEVELS = {0: "debug", 1: "debug", 2: "info", 3: "warning", 4: "error"}
_CONT = 5
_state = threading.local()
_callback = None


def _emit(level: str, line: str) -> None:
    line = line.strip()
    if not line:
        return
    # llama.cpp is chatty at info level: keep it at debug so the journal shows our events.
    getattr(log, "debug" if level == "info" else level)("llama.log", line=line, source_level=level)


def _on_log(level: int, text: bytes, _user_data) -> None:
    if sys.is_finalizing():
        return  # llama.cpp frees its models at exit, after logging has gone
    with contextlib.suppress(Exception):  # an exception must never cross back into C
        _route(level, text)


def _route(level: int, text: bytes) -> None:
    chunk = text.decode("utf-8", errors="replace") if text else ""
    pending = getattr(_state, "pending", "")
    if level != _CONT:
        if pending:
            _emit(_state.level, pending)
            pending = ""
        _state.level = _LEVELS.get(level, "info")
    elif not hasattr(_state, "level"):
        _state.level = "info"
    pending += chunk
    *lines, pending = pending.split("\n")
    for line in lines:
        _emit(_state.level, line)
    _state.pending = pending


def install() -> None:
    """Point both llama.cpp's and libmtmd's loggers at `_on_log` (idempotent)."""
    global _callback
    from bbsd.llama_binding import import_llama, mtmd

    llama_cpp, mtmd_cpp = import_llama(), mtmd()

    if _callback is None:
        _callback = llama_cpp.llama_log_callback(_on_log)
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_helper_log_set(_callback, ctypes.c_void_p(0))
