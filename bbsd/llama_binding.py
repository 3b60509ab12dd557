"""The one door to llama-cpp-python: every module that drives llama.cpp gets it from here.

Invariant: no other module of bbsd imports `llama_cpp`; this one imports it only after the
process's libstdc++ is pinned to the global symbol scope (`pin_cxx_runtime`), whatever was
imported before. An import-linter contract (pyproject.toml) keeps it so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from types import ModuleType

import structlog

log = structlog.get_logger("bbsd.llama")
# The llama.cpp commit vendored by the pinned llama-cpp-python (its CHANGELOG for 0.3.36);
# tests/models/test_models.py keeps this next to the pin in pyproject.toml.
LLAMA_CPP_PYTHON = "0.3.36"
LLAMA_CPP_COMMIT = "0c1e57098"

_cxx_pinned = False


def import_llama() -> ModuleType:
    """`import llama_cpp` after `pin_cxx_runtime()`: the only way bbsd imports llama-cpp-python."""
    pin_cxx_runtime()
    import llama_cpp

    return llama_cpp


def mtmd() -> ModuleType:
    """libmtmd's bindings (the vision projector), loaded the same way."""
    import_llama()
    from llama_cpp import mtmd_cpp

    return mtmd_cpp


def ggml() -> ModuleType:
    """llama-cpp-python's own libggml bindings (for a wheel whose soname cannot be opened)."""
    import_llama()
    from llama_cpp import _ggml

    return _ggml


def pin_cxx_runtime() -> None:
    """Put the process's libstdc++ in the global symbol scope before libllama loads (idempotent).

    A CUDA build's libggml-cuda.so carries its own copies of libstdc++'s locale and regex
    internals and exports them. llama-cpp-python opens its libraries RTLD_GLOBAL, so when
    libstdc++ was already loaded privately (numpy's, Pillow's and PyYAML's extensions load it
    RTLD_LOCAL), libllama's std::regex bound to libggml-cuda's copies and
    `llama_model_load_from_file` crashed in the tokenizer (an H200 run: numpy imported first
    crashed, llama_cpp first did not). Promoting the one libstdc++ to the global scope first makes
    every library bind to it, whatever was imported before.
    """
    global _cxx_pinned
    if _cxx_pinned:
        return
    name = ctypes.util.find_library("stdc++") or "libstdc++.so.6"
    try:
        ctypes.CDLL(name, mode=os.RTLD_GLOBAL)
    except OSError:
        log.debug("llama.cxx_runtime_not_found", library=name)  # a static build: nothing to pin
    _cxx_pinned = True
