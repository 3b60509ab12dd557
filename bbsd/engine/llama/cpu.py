"""What this machine's processor means for how llama.cpp may run on it.

Invariant: read from /proc/cpuinfo only (no llama.cpp call), so it can be asked before a model loads; an
unreadable file answers as a processor without the feature (llama.cpp keeps its defaults).
"""

from __future__ import annotations

from pathlib import Path


def amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has Intel AMX (Xeon 4th generation and later). This llama.cpp's AMX kernels, which
    its extra buffer types route quantised weights to, crash on them (SIGSEGV in ggml_backend_amx_mul_mat
    on the first decode, for every Q8_0 and Q4_K_M text model tried, 64 to 512 wide; llama-mtmd-cli too;
    ggml-org/llama.cpp#20824): there the model loads without extra buffer types (no AMX, no repacking)."""
    try:
        text = cpuinfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return any(line.startswith("flags") and "amx_int8" in line.split() for line in text.splitlines())
