"""Memory figures for each photo: resident set size, and GPU memory when a GPU is used.

VRAM comes from NVML (the `nvidia-ml-py` package, optional) for this process; without a
GPU in use it is None, never a guess.
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

import psutil


def rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def vram_mb(gpu_in_use: bool) -> float | None:
    if not gpu_in_use:
        return None
    nvml = _nvml()
    if nvml is None:
        return None
    total = 0
    try:
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory:
                    total += proc.usedGpuMemory
    except Exception:  # NVML errors vary by driver; a missing figure must not fail a photo
        return None
    return round(total / 2**20, 1)


@lru_cache(maxsize=1)
def _nvml():
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:
        return None


def free_vram_mb() -> float | None:
    """Free memory of the first GPU (NVML), or None without one."""
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        info = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(0))
    except Exception:  # no device, or a driver error: same answer
        return None
    return info.free / 2**20


def total_vram_mb() -> float | None:
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        return nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(0)).total / 2**20
    except Exception:  # no device, or a driver error
        return None


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0 < q < 1, in hundredths) by linear interpolation between the closest ranks,
    rounded to 0.1: what the report, `bbsd status` and `bbsd eval` all print. None without values."""
    if not values:
        return None
    if len(values) == 1:
        return round(float(values[0]), 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1], 1)


def by_code(codes: Iterable[str]) -> dict[str, int]:
    """Failed photos per error code, the most frequent first (ties by code): what the report, `bbsd status`
    and `bbsd eval` show beside their latency and memory, which count labelled photos only."""
    return dict(sorted(Counter(c or "unknown" for c in codes).items(), key=lambda kv: (-kv[1], kv[0])))
