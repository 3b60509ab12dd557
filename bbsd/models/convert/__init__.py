"""`bbsd models convert`: an InternVL checkpoint folder becomes a text GGUF and an mmproj GGUF that belong together.

Invariants: nothing appears in the output folder unless the whole conversion succeeded and the pair passed
`bbsd models inspect`'s pairing check (the work happens in a hidden folder beside the outputs, renamed into
place at the end, removed on any failure); llama.cpp's own conversion code does the work, in a child process
(see runner.py and internvl.py for what bbsd adds); the default install does not need torch — only this
command does, through `pip install 'bbsd[convert]'`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from bbsd.errors import ConvertError
from bbsd.models.convert import checkpoint

# quantisation -> (llama.cpp ftype name, final text size as a fraction of the 16-bit checkpoint)
QUANTS = {"Q4_K_M": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", 0.31), "Q8_0": ("LLAMA_FTYPE_MOSTLY_Q8_0", 0.54),
          "F16": (None, 1.0)}
NEEDS = ("torch", "transformers", "sentencepiece", "google.protobuf")


@dataclass(frozen=True)
class Converted:
    text: Path
    mmproj: Path
    seconds: float
    registered: str  # what the registry now says about it


def convert(path: Path, out: Path, quant: str, progress: bool) -> Converted:
    """Convert, quantise, verify the pairing, place both files in `out` and register them."""
    started = time.monotonic()
    _check_extra()  # first: where conversion cannot run at all, what the folder holds does not matter
    ck = checkpoint.read(path)
    checkpoint.check_space(out, checkpoint.needed_bytes(ck, QUANTS[quant][1]))
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=out))
    try:
        text16, mmproj = work / f"{ck.name}-F16.gguf", work / f"mmproj-{ck.name}-F16.gguf"
        _run_child(ck, text16, mmproj, "f16" if quant == "F16" else "auto", progress)
        text = text16 if quant == "F16" else _quantise(text16, work / f"{ck.name}-{quant}.gguf", quant, progress)
        _verify(text, mmproj)
        placed = [out / p.name for p in (text, mmproj)]
        for src, dst in zip((text, mmproj), placed, strict=True):
            os.replace(src, dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from bbsd.models.convert import register

    return Converted(placed[0], placed[1], time.monotonic() - started, register.record(out, ck, *placed))


def _check_extra() -> None:
    missing = [m for m in NEEDS if importlib.util.find_spec(m.split(".")[0]) is None]
    if missing and getattr(sys, "frozen", False):  # the venue artefact leaves torch out on purpose (GBs)
        raise ConvertError("the venue artefact cannot convert checkpoints (it does not bundle torch)",
                           "convert on a PC with Python (pip install 'bbsd[convert]'), then copy the GGUF pair "
                           "(and the models.toml the conversion wrote beside it, if any) into gguf_models/ here")
    if missing:
        raise ConvertError(f"conversion needs {', '.join(missing)}, which the default install leaves out",
                           "pip install 'bbsd[convert]'")


def _run_child(ck: checkpoint.Checkpoint, text: Path, mmproj: Path, outtype: str, progress: bool) -> None:
    """llama.cpp's converter in a child process; its progress bars pass through, its last lines explain a failure."""
    cmd = [sys.executable, "-m", "bbsd.models.convert.runner", str(ck.path), str(text), str(mmproj), outtype, ck.name]
    tail: deque[str] = deque(maxlen=8)
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, bufsize=1) as child:
        for line in child.stderr:
            tail.append(line.rstrip())
            if progress:
                sys.stderr.write(line)
    if child.returncode != 0:
        last = next((t for t in reversed(tail) if t.strip()), f"exit code {child.returncode}")
        raise ConvertError(f"llama.cpp's converter failed on {ck.name}: {last.strip()[:300]}",
                           "run again with BBSD_DEBUG=1 for the full trace; report it with the checkpoint's name")


def _quantise(src: Path, dst: Path, quant: str, progress: bool) -> Path:
    """llama.cpp's quantiser through llama-cpp-python (the same code as llama-quantize), with a size-based bar."""
    import ctypes
    import threading

    from bbsd.llama_binding import import_llama

    llama_cpp = import_llama()  # the C++ runtime pinned first, as for every use of llama.cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant][0])
    params.nthread = os.cpu_count() or 1
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(llama_cpp.llama_model_quantize(
        str(src).encode(), str(dst).encode(), ctypes.byref(params))))
    expected = int(src.stat().st_size * QUANTS[quant][1])
    with _SizeBar(f"quantising to {quant}", expected, progress) as bar:
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
            bar.update(dst.stat().st_size if dst.exists() else 0)
    if result != [0]:
        raise ConvertError(f"quantising to {quant} failed (llama.cpp code {result})",
                           "try --quant Q8_0 or F16; see the llama.cpp lines above")
    return dst


def _verify(text: Path, mmproj: Path) -> None:
    from bbsd.models import registry as models

    ok, why = models.pairing(models.inspect(text), models.inspect(mmproj))
    if not ok:
        raise ConvertError(f"the converted files {why}", "report it with the checkpoint's name")


class _SizeBar:
    """A rich progress bar driven by a file's size on a terminal; silent otherwise."""

    def __init__(self, what: str, total: int, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeElapsedColumn

            self._bar = Progress("{task.description}", BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                                 transient=True)
            self._task = self._bar.add_task(what, total=total or None)

    def __enter__(self):
        if self._bar:
            self._bar.start()
        return self

    def update(self, done: int) -> None:
        if self._bar:
            self._bar.update(self._task, completed=done)

    def __exit__(self, *exc) -> None:
        if self._bar:
            self._bar.stop()
