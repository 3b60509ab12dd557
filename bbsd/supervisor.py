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
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from PIL import Image

from bbsd import child
from bbsd.confidence import Step
from bbsd.errors import AbandonedError, ModelError, PhotoError
from bbsd.labeler import Inference, ModelInfo
from bbsd.prompt import Prompt

log = structlog.get_logger("bbsd.supervisor")


class EngineCrashError(PhotoError):
    def __init__(self, detail: str) -> None:
        super().__init__("engine_crash", f"the engine worker died while labelling this photo ({detail})",
                         "bbsd restarted it; a photo that kills it twice is not retried until it changes")


class EngineTimeoutError(PhotoError):
    def __init__(self, seconds: float) -> None:
        super().__init__("engine_timeout", f"the engine gave no answer within {seconds:g} s",
                         "the worker was restarted; raise [worker] timeout_seconds for very slow machines")


def worker_argv(config_path: str, warm_up: bool = False, profile: Path | None = None) -> list[str]:
    """The command that starts an engine worker (with the eval profile, if any, laid over the config)."""
    return (child.argv("_worker", config_path) + (["--warm-up"] if warm_up else [])
            + (["--profile", str(profile)] if profile else []))


class _Worker(child.Child):
    """The engine worker: a child whose hello carries its memory after the model loaded."""

    def __init__(self, argv: list[str], start_timeout: float) -> None:
        t0 = time.monotonic()
        try:
            super().__init__(argv, start_timeout)
        except child.StartError as e:
            if e.hello is not None:
                raise ModelError(e.hello["message"], e.hello["hint"]) from None
            raise ModelError(f"the engine worker did not start ({e})",
                             "see the llama.log / worker events above; run `bbsd check`") from None
        self.photos = 0
        self.baseline_mb = self.hello["rss_mb"]
        self.rss_mb = self.hello["rss_mb"]
        log.info("worker.started", pid=self.proc.pid, rss_mb=self.baseline_mb, vram_mb=self.hello["vram_mb"],
                 start_ms=round((time.monotonic() - t0) * 1000))


class WorkerLabeler:
    concurrency = 1  # one worker process, one photo at a time

    def __init__(self, settings, warm_up: bool = False) -> None:
        self._settings = settings
        self._argv = worker_argv(str(settings.source), warm_up, settings.profile)  # a restarted worker warms up too
        self._worker: _Worker | None = None
        hello = self._ensure().hello  # load at start: a bad model fails `run` and `check` at once
        self.info = ModelInfo(*hello["info"])  # what the backend itself says, not a guess from settings
        self.gpu = bool(hello.get("gpu"))

    def health(self) -> list[dict]:
        return []

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
            reply, _ = worker.request(header, image.convert("RGB").tobytes(), t0 + timeout, cancelled)
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
                         generate_ms=reply["generate_ms"], rss_mb=reply["rss_mb"], vram_mb=reply["vram_mb"],
                         evaluated_tokens=reply.get("evaluated_tokens"), sampled_tokens=reply.get("sampled_tokens"),
                         steps=tuple(Step.from_json(row) for row in reply.get("steps", ())))

    def _discard(self, reason: str) -> str:
        """Kill the current worker (the next request starts a new one); return how it ended."""
        worker, self._worker = self._worker, None
        if worker is None:
            return reason
        detail = worker.kill()
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
