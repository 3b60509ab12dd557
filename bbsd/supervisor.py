"""`WorkerLabeler`: the `Labeler` protocol over a supervised engine worker process.

Invariants: the daemon survives anything the engine does — an abort (GGML_ASSERT), a hang,
a kill — because the model lives in a child process; a dead worker is replaced at the next
request and the request that killed it raises `EngineCrashError` (the pipeline retries once,
then quarantines the photo); a hung worker is killed after `timeout_seconds` and the photo
gets `engine_timeout`; the worker is recycled after N photos or when its memory grows past
the bound over its post-load baseline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
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


class _Ticket:
    """One photo handed to the worker labeler, until its result (or error) is known."""

    def __init__(self, image: Image.Image, prompt: Prompt, attempt: int) -> None:
        self.image, self.prompt, self.attempt = image, prompt, attempt
        self.order = float(image.info.get("bbsd_order", 0.0))  # the photo's mtime: newest first
        self.outcome: Inference | BaseException | None = None


class WorkerLabeler:
    """Photos handed over by several threads at once go to the worker together, up to the engine's
    `parallel`, newest first; the thread that finds the worker idle takes the waiting photos to it
    (no thread of its own). Photos the threads are still decoding (`coming`) are waited for, so
    that a batch goes full rather than half full after every batch."""

    FILL_WAIT_S = 2.0  # at most this long for photos still being decoded: a batch never stalls on a slow one

    def __init__(self, settings, warm_up: bool = False) -> None:
        self._settings = settings
        self._argv = worker_argv(str(settings.source), warm_up, settings.profile)  # a restarted worker warms up too
        self._worker: _Worker | None = None
        hello = self._ensure().hello  # load at start: a bad model fails `run` and `check` at once
        self.info = ModelInfo(*hello["info"])  # what the backend itself says, not a guess from settings
        self.gpu = bool(hello.get("gpu"))
        self.parallel = int(hello.get("parallel", 1))
        # One photo more in hand than a batch takes when batching: it is decoded while the batch is
        # in the engine. One at a time stays one: the newest photo of a burst then never waits
        # behind an older photo decoded ahead of it.
        self.concurrency = self.parallel + 1 if self.parallel > 1 else 1
        self._cond = threading.Condition()
        self._pending: list[_Ticket] = []
        self._busy = False
        self._coming = 0  # threads between taking a photo and handing it over (or giving up on it)

    @contextlib.contextmanager
    def coming(self) -> Iterator[None]:
        """Around one photo's handling: while it is decoded, a batch waits for it (see FILL_WAIT_S)."""
        with self._cond:
            self._coming += 1
        try:
            yield
        finally:
            with self._cond:
                self._coming -= 1
                self._cond.notify_all()

    def health(self) -> list[dict]:
        return []

    def _ensure(self) -> _Worker:
        if self._worker is None:
            self._worker = _Worker(self._argv, self._settings.worker.start_timeout_seconds)
        return self._worker

    def infer(self, image: Image.Image, prompt: Prompt, *, attempt: int,
              cancelled: Callable[[], bool]) -> Inference:
        ticket = _Ticket(image, prompt, attempt)
        with self._cond:
            self._pending.append(ticket)
            self._cond.notify_all()  # a leader may be waiting for this photo to fill its batch
            while ticket.outcome is None:
                if self._busy:
                    self._cond.wait(0.2)
                    if ticket.outcome is None and ticket in self._pending and cancelled():
                        self._pending.remove(ticket)
                        raise AbandonedError("labelling abandoned at shutdown",
                                             "the photo stays pending and is redone at start")
                    continue
                self._busy = True  # before filling: the wait releases the lock, and one thread leads
                self._fill()
                batch = self._take()
                self._cond.release()
                try:
                    outcomes = self._run(batch, cancelled)
                finally:
                    self._cond.acquire()
                    self._busy = False
                for t, outcome in zip(batch, outcomes, strict=True):
                    t.outcome = outcome
                self._cond.notify_all()
        if isinstance(ticket.outcome, BaseException):
            raise ticket.outcome
        return ticket.outcome

    def _fill(self) -> None:
        """Wait (lock held) while fewer than `parallel` photos wait and others are still being decoded."""
        deadline = time.monotonic() + self.FILL_WAIT_S
        while (len(self._pending) < self.parallel and self._coming > len(self._pending)
               and not any(t.attempt for t in self._pending) and time.monotonic() < deadline):
            self._cond.wait(max(0.0, deadline - time.monotonic()))

    def _take(self) -> list[_Ticket]:
        """The next batch: a retry goes alone (a photo that crashed the worker must not take others
        with it twice), first photos go up to `parallel` together, newest first."""
        retries = [t for t in self._pending if t.attempt]
        fresh = sorted((t for t in self._pending if not t.attempt), key=lambda t: -t.order)
        batch = retries[:1] or fresh[:self.parallel]
        for t in batch:
            self._pending.remove(t)
        return batch

    def _run(self, batch: list[_Ticket], cancelled: Callable[[], bool]) -> list[Inference | BaseException]:
        """One request to the worker for the whole batch; a worker lost costs each photo of it."""
        worker = self._ensure()
        timeout = self._settings.worker.timeout_seconds * len(batch)
        header = {"type": "infer", "prompt": dataclasses.asdict(batch[0].prompt),
                  "photos": [{"name": t.image.info.get("bbsd_name", ""),  # for logs and the test hooks
                              "width": t.image.width, "height": t.image.height, "attempt": t.attempt}
                             for t in batch]}
        pixels = b"".join(t.image.convert("RGB").tobytes() for t in batch)
        t0 = time.monotonic()
        try:
            reply, _ = worker.request(header, pixels, t0 + timeout, cancelled)
        except AbandonedError:
            self._discard("shutdown")
            return [AbandonedError("labelling abandoned at shutdown", "the photo stays pending and is redone at start")
                    for _ in batch]
        except TimeoutError:
            self._discard("timeout")
            return [EngineTimeoutError(timeout) for _ in batch]
        except (EOFError, OSError):
            detail = self._discard("crash")
            return [EngineCrashError(detail) for _ in batch]
        worker.photos += len(batch)
        worker.rss_mb = reply["rss_mb"]
        self._maybe_recycle(worker)
        return [_inference(r, reply) for r in reply["results"]]

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


def _inference(r: dict, reply: dict) -> Inference | PhotoError:
    if r["type"] == "photo_error":
        return PhotoError(r["code"], r["message"], r["hint"])
    return Inference(text=r["text"], prompt_tokens=r["prompt_tokens"], output_tokens=r["output_tokens"],
                     encode_ms=r["encode_ms"], generate_ms=r["generate_ms"], rss_mb=reply["rss_mb"],
                     vram_mb=reply["vram_mb"], evaluated_tokens=r.get("evaluated_tokens"),
                     sampled_tokens=r.get("sampled_tokens"), steps=tuple(Step.from_json(row) for row in r["steps"]))
