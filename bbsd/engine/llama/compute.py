"""llama.cpp's compute backends: loading them, naming them, and how many layers go to the GPU.

Invariant: a portable build (GGML_BACKEND_DL with one CPU library per instruction-set level)
has its backends loaded from llama_cpp/lib before the first model, so ggml picks the best CPU
variant this machine supports; a regular build (backends linked in) is left as it is.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import structlog

from bbsd.llama_binding import LLAMA_CPP_COMMIT, LLAMA_CPP_PYTHON, ggml, import_llama

log = structlog.get_logger("bbsd.backends")
_loaded = False


def _libggml():
    """The libggml that libllama itself uses.

    Wheels store libggml.so and libggml.so.0 as two files (zip has no symlinks), and
    llama_cpp._ggml opens the first while libllama links the second: two registries. Opening
    the soname after libllama is loaded returns libllama's copy.
    """
    import_llama()  # loads libllama, and with it libggml.so.0

    try:
        lib = ctypes.CDLL("libggml.so.0")
    except OSError:
        lib = ggml().libggml
    lib.ggml_backend_reg_count.restype = ctypes.c_size_t
    lib.ggml_backend_reg_get.restype = ctypes.c_void_p
    lib.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_reg_name.restype = ctypes.c_char_p
    lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_description.restype = ctypes.c_char_p
    lib.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
    return lib


def lib_dir() -> Path:
    llama_cpp = import_llama()

    return Path(llama_cpp.__file__).resolve().parent / "lib"


def load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    variants = sorted(p.name for p in lib_dir().glob("libggml-cpu-*.so"))
    if variants:  # a GGML_BACKEND_DL build: ggml would only look beside the executable and in the cwd
        from bbsd.engine.llama import log as llama_log

        llama_log.install()  # ggml reports which variant it picked: into our log, not raw stderr
        _libggml().ggml_backend_load_all_from_path(str(lib_dir()).encode())
        log.info("backends.loaded", registered=names(), cpu_variant=loaded_cpu_variant(), available=len(variants))


def names() -> list[str]:
    lib = _libggml()
    return [lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)).decode()
            for i in range(lib.ggml_backend_reg_count())]


def devices() -> list[str]:
    lib = _libggml()
    return [lib.ggml_backend_dev_description(lib.ggml_backend_dev_get(i)).decode(errors="replace")
            for i in range(lib.ggml_backend_dev_count())]


def describe() -> dict[str, object]:
    """What `bbsd --version --verbose` prints: versions, the llama.cpp build and its backends."""
    llama_cpp = import_llama()

    load()
    info: dict[str, object] = {"llama_cpp_python": llama_cpp.__version__}
    vendored = LLAMA_CPP_COMMIT if llama_cpp.__version__ == LLAMA_CPP_PYTHON else "unknown"
    info["llama_cpp"] = f"ggml-org/llama.cpp@{vendored} ({llama_cpp.llama_version().decode()})"
    info["backends"] = names()
    info["devices"] = devices()
    info["cpu_variants"] = sorted(p.name.removeprefix("libggml-cpu-").removesuffix(".so")
                                  for p in lib_dir().glob("libggml-cpu-*.so")) or ["built-in"]
    info["cpu_variant_loaded"] = loaded_cpu_variant() or "built-in"
    info["system"] = llama_cpp.llama_print_system_info().decode().strip() or "-"
    return info


def loaded_cpu_variant() -> str | None:
    """Which libggml-cpu-<variant>.so this process mapped (ggml picked the best this CPU runs)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    found = {line.rsplit("/", 1)[-1] for line in maps.splitlines() if "libggml-cpu-" in line}
    return ", ".join(sorted(v.removeprefix("libggml-cpu-").removesuffix(".so") for v in found)) or None


def gpu_layers(configured: int | str, model: Path, mmproj: Path, context: int) -> int:
    """`auto`: as many layers as fit in free VRAM (0 without a usable GPU); numbers pass through."""
    if configured != "auto":
        return int(configured)
    llama_cpp = import_llama()

    from bbsd import metrics
    from bbsd.models import registry as models

    free_mb = metrics.free_vram_mb()
    if not llama_cpp.llama_supports_gpu_offload() or not free_mb:
        log.info("engine.gpu_layers", auto=0, reason="no GPU offload available")
        return 0
    text = models.inspect(model)
    est = models.estimate_files(text, models.inspect(mmproj), context)
    per_layer = est.weights_mb / max(text.n_layer or 1, 1)
    room = 0.9 * free_mb - est.mmproj_mb - est.kv_mb - est.compute_mb
    layers = max(0, min(text.n_layer or 0, int(room / per_layer)))
    chosen = -1 if layers >= (text.n_layer or 0) else layers
    log.info("engine.gpu_layers", auto=chosen, free_vram_mb=round(free_mb), per_layer_mb=round(per_layer, 1))
    return chosen
