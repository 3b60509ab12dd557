"""`WorkerLabeler`: the `Labeler` protocol over a supervised engine worker process.

Invariants: the daemon survives anything the engine does — an abort (GGML_ASSERT), a hang,
a kill — because the model lives in a child process; a dead worker is replaced at the next
request and the request that killed it raises `EngineCrashError` (the pipeline retries once,
then quarantines the photo); a hung worker is killed after `timeout_seconds` and the photo
gets `engine_timeout`; the worker is recycled after N photos or when its memory grows past
the bound over its post-load baseline.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable

import structlog
from PIL import Image

from bbsd import ipc
from bbsd.errors import AbandonedError, ModelError, PhotoError
from bbsd.labeler import Inference, ModelInfo
from bbsd.prompt import Prompt

log = structlog.get_logger("bbsd.supervisor")
POLL_S = 0.2  # how often a waiting request checks for shutdown


class EngineCrashError(PhotoError):
    def __init__(self, detail: str) -> None:
        super().__init__("engine_crash", f"the engine worker died while labelling this photo ({detail})",
                         "bbsd restarted it; a photo that kills it twice is not retried until it changes")


class EngineTimeoutError(PhotoError):
    def __init__(self, seconds: float) -> None:
        super().__init__("engine_timeout", f"the engine gave no answer within {seconds:g} s",
                         "the worker was restarted; raise [worker] timeout_seconds for very slow machines")


def worker_argv(config_path: str) -> list[str]:
    """The command that starts a worker: the frozen binary itself, or this Python with -m bbsd."""
    base = [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m", "bbsd"]
    return [*base, "_worker", "--config", config_path, "--parent", str(os.getpid())]


class _Worker:
    """One running child process and its pipes."""

    def __init__(self, argv: list[str], start_timeout: float) -> None:
        t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        self.photos = 0
        try:
            hello, _ = ipc.receive(self.proc.stdout.fileno(), time.monotonic() + start_timeout)
        except (EOFError, TimeoutError) as e:
            self.kill()
            raise ModelError(f"the engine worker did not start ({type(e).__name__}: {e})",
                             "see the llama.log / worker events above; run `bbsd check`") from None
        if hello["type"] == "fatal":
            self.kill()
            raise ModelError(hello["message"], hello["hint"])
        self.baseline_mb = hello["rss_mb"]
        self.rss_mb = hello["rss_mb"]
        log.info("worker.started", pid=self.proc.pid, rss_mb=self.baseline_mb, vram_mb=hello["vram_mb"],
                 start_ms=round((time.monotonic() - t0) * 1000))

    def request(self, header: dict, payload: bytes, deadline: float, cancelled: Callable[[], bool]) -> dict:
        ipc.send(self.proc.stdin.fileno(), header, payload)
        while True:
            step = min(deadline, time.monotonic() + POLL_S)
            try:
                reply, _ = ipc.receive(self.proc.stdout.fileno(), step)
                return reply
            except TimeoutError:
                if cancelled():
                    raise AbandonedError("labelling abandoned at shutdown", "redone at the next start") from None
                if time.monotonic() >= deadline:
                    raise

    def stop(self, grace_s: float = 5.0) -> None:
        if self.proc.poll() is None:
            try:
                ipc.send(self.proc.stdin.fileno(), {"type": "exit"})
                self.proc.wait(timeout=grace_s)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream:
                stream.close()


class WorkerLabeler:
    def __init__(self, settings) -> None:
        self._settings = settings
        self._argv = worker_argv(str(settings.source))
        m = settings.model
        self.info = ModelInfo(backend=m.backend, file=m.path.name if m.path else m.backend,
                              mmproj=m.mmproj.name if m.mmproj else None)
        self._worker: _Worker | None = None
        self._ensure()  # load at start: a bad model fails `run` and `check` at once, not at the first photo

    def _ensure(self) -> _Worker:
        if self._worker is None:
            self._worker = _Worker(self._argv, self._settings.worker.start_timeout_seconds)
        return self._worker

    def infer(self, image: Image.Image, prompt: Prompt, *, attempt: int,
              cancelled: Callable[[], bool]) -> Inference:
        worker = self._ensure()
        timeout = self._settings.worker.timeout_seconds
        header = {"type": "infer", "name": image.info.get("bbsd_name", ""),  # for logs and the test hooks
                  "width": image.width, "height": image.height, "attempt": attempt,
                  "prompt": dataclasses.asdict(prompt)}
        t0 = time.monotonic()
        try:
            reply = worker.request(header, image.convert("RGB").tobytes(), t0 + timeout, cancelled)
        except AbandonedError:
            self._discard("shutdown")
            raise
        except TimeoutError:
            self._discard("timeout")
            raise EngineTimeoutError(timeout) from None
        except (EOFError, OSError):
            raise EngineCrashError(self._discard("crash")) from None
        if reply["type"] == "photo_error":
            raise PhotoError(reply["code"], reply["message"], reply["hint"])
        worker.photos += 1
        worker.rss_mb = reply["rss_mb"]
        self._maybe_recycle(worker)
        return Inference(text=reply["text"], prompt_tokens=reply["prompt_tokens"],
                         output_tokens=reply["output_tokens"], encode_ms=reply["encode_ms"],
                         generate_ms=reply["generate_ms"], rss_mb=reply["rss_mb"], vram_mb=reply["vram_mb"])

    def _discard(self, reason: str) -> str:
        """Kill the current worker (the next request starts a new one); return how it ended."""
        worker, self._worker = self._worker, None
        if worker is None:
            return reason
        worker.kill()
        code = worker.proc.returncode
        detail = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        log.warning("worker.lost", pid=worker.proc.pid, reason=reason, how=detail, photos=worker.photos)
        return detail

    def _maybe_recycle(self, worker: _Worker) -> None:
        w = self._settings.worker
        growth = worker.rss_mb - worker.baseline_mb
        reason = None
        if w.recycle_after_photos and worker.photos >= w.recycle_after_photos:
            reason = "photos"
        elif w.recycle_rss_growth_mb and growth > w.recycle_rss_growth_mb:
            reason = "memory"
        if reason:
            log.info("worker.recycled", pid=worker.proc.pid, reason=reason, photos=worker.photos,
                     rss_mb=worker.rss_mb, baseline_mb=worker.baseline_mb, growth_mb=round(growth, 1),
                     bound_mb=w.recycle_rss_growth_mb)
            worker.stop()
            self._worker = None

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
