"""Fault injection, a plugin of the suite (docs/developer/plugins.md): a bbsd process that loads it
(`BBSD_PLUGINS=tests.fakes.engine,tests.fakes.faults`, `tests.fakes.FAULTS`) fails on purpose where
the test's environment says, by a substring of a photo's file name. The production code holds no hook:
this module wraps its functions at their seams.

The engine worker (`bbsd _worker`), as it takes a photo in (`_Inbox.admit`):
  BBSD_TEST_ABORT_ON      abort, as a GGML_ASSERT does; with BBSD_TEST_ABORT_BESIDE=N, on a photo's first
                          try (not alone) only once N other photos are in the worker too
  BBSD_TEST_HANG_ON       hang
  BBSD_TEST_SLOW_MS       each photo takes this much longer
  BBSD_TEST_LEAK_MB       each photo leaks this much memory (touched, so it counts in RSS)
and before each decode step (`_never_cancelled`): BBSD_TEST_STEP_MS, a slower step, logged `worker.step`
(the clock the batch tests count in).
The decoder (`bbsd _decoder`), before a request opens its file (`answer`):
  BBSD_TEST_DECODE_ABORT_ON, BBSD_TEST_DECODE_HANG_ON; BBSD_TEST_DECODE_DELAY_ON with
  BBSD_TEST_DECODE_DELAY_MS (default 1000), decodes only, logged `test.decode_delayed`
The daemon's main loop, as photos settle (`SettleTracker.poll`):
  BBSD_TEST_LOOP_FAIL_ON  the loop fails ("test hook: main loop fails on …")

Invariant: each production module is wrapped when this process imports it (at once if it already
has), so a process gets the faults of its own role and imports nothing it would not without them.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import structlog

_leak: list[bytearray] = []  # what BBSD_TEST_LEAK_MB allocated: kept, so it stays in RSS


def _on(fault: str, name: str) -> bool:
    """Whether BBSD_TEST_<fault> is set and names this file (a substring of its name)."""
    value = os.environ.get(f"BBSD_TEST_{fault}")
    return bool(value) and value in name


def _ms(fault: str, default: str = "") -> float:
    return int(os.environ.get(f"BBSD_TEST_{fault}", default) or 0) / 1000


# --- the engine worker ------------------------------------------------------------------------------

def _admitted(name: str, alone: bool, inbox) -> None:
    if _on("ABORT_ON", name):
        if not alone and os.environ.get("BBSD_TEST_ABORT_BESIDE"):
            _wait_for_company(inbox, int(os.environ["BBSD_TEST_ABORT_BESIDE"]))
        os.abort()
    if _on("HANG_ON", name):
        time.sleep(3600)
    time.sleep(_ms("SLOW_MS"))
    if os.environ.get("BBSD_TEST_LEAK_MB"):
        block = bytearray(int(os.environ["BBSD_TEST_LEAK_MB"]) * 2**20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page so it counts in RSS
        _leak.append(block)


def _wait_for_company(inbox, others: int, timeout_s: float = 60) -> None:
    """Until the worker holds `others` photos beside this one (running or handed over): a crash test
    of a batch must not depend on how fast the daemon decodes the neighbours."""
    deadline = time.monotonic() + timeout_s
    while inbox.running - 1 + len(inbox.waiting) < others and time.monotonic() < deadline:
        inbox.take(block=False)
        time.sleep(0.01)


def _engine_worker(module: ModuleType) -> None:
    admit, log = module._Inbox.admit, structlog.get_logger("bbsd.worker")

    def admit_with_faults(inbox, accepts):
        job = admit(inbox, accepts)
        if job is not None:
            _admitted(job.photo.name, job.alone, inbox)
        return job

    def slow_step() -> bool:
        if os.environ.get("BBSD_TEST_STEP_MS"):
            time.sleep(_ms("STEP_MS"))
            log.debug("worker.step")
        return False

    module._Inbox.admit = admit_with_faults
    module._never_cancelled = slow_step


# --- the decoder ------------------------------------------------------------------------------------

def _decoder(module: ModuleType) -> None:
    answer = module.answer

    def answer_with_faults(request: dict):
        path = Path(request["path"])
        if request["type"] == "decode" and _on("DECODE_DELAY_ON", path.name):
            module.log.info("test.decode_delayed", path=str(path))  # the file was hashed: the tests swap it now
            time.sleep(_ms("DECODE_DELAY_MS", "1000"))
        if _on("DECODE_ABORT_ON", path.name):
            os.abort()  # what a crash in libjpeg, libtiff or LibRaw does to the process
        if _on("DECODE_HANG_ON", path.name):
            time.sleep(3600)
        return answer(request)

    module.answer = answer_with_faults


# --- the daemon's main loop -------------------------------------------------------------------------

def _settling(module: ModuleType) -> None:
    poll = module.SettleTracker.poll

    def poll_with_faults(tracker, now: float) -> list[Path]:
        settled = poll(tracker, now)
        failing = next((p for p in settled if _on("LOOP_FAIL_ON", p.name)), None)
        if failing is not None:
            raise RuntimeError(f"test hook: main loop fails on {failing.name}")
        return settled

    module.SettleTracker.poll = poll_with_faults


# --- wrapping each module as it is imported ---------------------------------------------------------

class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a module it waits for, it lets the other finders find it and wraps
    the module once it is executed."""

    def __init__(self, wraps: dict[str, Callable[[ModuleType], None]]) -> None:
        self._wraps = wraps

    def find_spec(self, name, path, target=None):
        if name not in self._wraps:
            return None
        spec = next((s for f in sys.meta_path if f is not self and hasattr(f, "find_spec")
                     and (s := f.find_spec(name, path, target)) is not None), None)
        if spec is None or spec.loader is None:
            return None
        wrap, execute = self._wraps.pop(name), spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            wrap(module)

        spec.loader.exec_module = exec_module
        return spec


WRAPS = {"bbsd.engine.worker": _engine_worker, "bbsd.photo.worker": _decoder, "bbsd.arrive.settle": _settling}

_pending = {}
for _name, _wrap in WRAPS.items():
    if _name in sys.modules:
        _wrap(sys.modules[_name])
    else:
        _pending[_name] = _wrap
sys.meta_path.insert(0, _WrapOnImport(_pending))
