"""`WorkerLabeler`: the `Labeler` protocol over a supervised engine worker process.

Invariants: the daemon survives anything the engine does — an abort (GGML_ASSERT), a hang,
a kill — because the model lives in a child process; a dead worker is replaced at the next
request, from the settings the daemon validated (never the file as it is now), and `info` becomes
what the new worker says it loaded; the request that killed it raises `EngineCrashError` (the pipeline retries once,
then quarantines the photo); a hung worker is killed after `timeout_seconds` and the photo
gets `engine_timeout`; the worker is recycled after N photos or when its memory grows past
the bound over its post-load baseline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import select
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import structlog
from PIL import Image

from bbsd.contain import child, ipc
from bbsd.engine import labeler
from bbsd.engine.confidence import Step
from bbsd.engine.labeler import UNNAMED, EngineCode, Inference, ModelInfo, PhotoRef
from bbsd.engine.prompt import Prompt
from bbsd.errors import AbandonedError, ModelError, PhotoError

log = structlog.get_logger("bbsd.supervisor")


def worker_argv(config_path: str, warm_up: bool = False, profile: Path | None = None) -> list[str]:
    """The command that starts an engine worker (with the eval profile, if any, laid over the config)."""
    return (child.argv("_worker", config_path) + (["--warm-up"] if warm_up else [])
            + (["--profile", str(profile)] if profile else []))


class WorkerKilledError(ModelError):
    """The worker was killed while it started (SIGKILL, SIGTERM: a person, the OOM killer), not refused."""


RESTART_MIN_S, RESTART_MAX_S = 0.5, 30.0  # backoff between starts of a worker killed while starting


class _Worker(child.Child):
    """The engine worker: a child whose hello carries its memory after the model loaded, and what it
    loaded (`info`). `settings`: the configuration the daemon validated, handed over at start."""

    def __init__(self, argv: list[str], start_timeout: float, settings=None) -> None:
        t0 = time.monotonic()
        try:
            super().__init__(argv, start_timeout, settings)
        except child.StartError as e:
            if e.hello is not None:
                raise ModelError(e.hello["message"], e.hello["hint"]) from None
            raise (WorkerKilledError if e.killed else ModelError)(
                f"the engine worker did not start ({e})",
                "see the llama.log / worker events above; run `bbsd check`") from None
        self.photos = 0
        self.baseline_mb = self.hello["rss_mb"]
        self.rss_mb = self.hello["rss_mb"]
        self.info = ModelInfo.from_json(self.hello["info"])
        log.info("worker.started", pid=self.proc.pid, rss_mb=self.baseline_mb, vram_mb=self.hello["vram_mb"],
                 start_ms=round((time.monotonic() - t0) * 1000), model=self.info.file,
                 sha256=self.info.digest())


class _Lost(StrEnum):
    """How the photos in a worker were lost: it died, hung past a deadline, or the daemon stops."""
    CRASH, TIMEOUT, SHUTDOWN = "crash", "timeout", "shutdown"


class _Ticket:
    """One photo handed to the worker labeler, until its result (or error) is known."""

    def __init__(self, image: Image.Image, prompt: Prompt, attempt: int, alone: bool, photo: PhotoRef) -> None:
        self.image, self.prompt, self.attempt, self.alone = image, prompt, attempt, alone
        self.photo = photo  # who it is: its name for the logs, its order (newest first) for the batches
        self.outcome: Inference | BaseException | None = None
        self.id = 0  # the worker's name for it, once sent
        self.timeout_s = 0.0
        self.deadline = 0.0

    def request(self) -> dict:
        return {"type": "infer", "id": self.id, "prompt": dataclasses.asdict(self.prompt),
                "photo": {**self.photo.to_json(),  # its name for the worker's logs and the test hooks
                          "width": self.image.width, "height": self.image.height, "attempt": self.attempt,
                          "alone": self.alone}}


class WorkerLabeler:
    """Photos handed over by several threads at once are in the worker together, up to the engine's
    `parallel`: each is sent as soon as the worker has room for it (newest first), joins the replies
    being generated at their next decode step, and comes back on its own when its reply is complete.
    The calling threads take turns driving the worker's pipes (no thread of its own): the driver
    sends what fits and reads what comes back, and hands its turn on once its own photo is done."""

    def __init__(self, settings, warm_up: bool = False) -> None:
        self._settings = settings
        self._argv = worker_argv(str(settings.source), warm_up, settings.profile)  # a restarted worker warms up too
        self._worker: _Worker | None = None
        hello = self._ensure().hello  # load at start: a bad model fails `run` and `check` at once
        self.gpu = bool(hello.get("gpu"))
        self.parallel = int(hello.get("parallel", 1))
        # One photo more in hand than the worker takes when batching: it is decoded while the others
        # generate, and sent the moment one of them is done. One at a time stays one: the newest
        # photo of a burst then never waits behind an older photo decoded ahead of it.
        self.concurrency = self.parallel + 1 if self.parallel > 1 else 1
        self._cond = threading.Condition()
        self._pending: list[_Ticket] = []
        self._in_flight: dict[int, _Ticket] = {}
        self._ids = itertools.count(1)
        self._driving = False
        # A photo handed over to an idle worker leads: while it is in the worker only newer photos
        # join it (its group), so the newest photo of a burst comes back in about one photo's time, not
        # a full batch's, also when an older one was decoded a moment before it and led. Older photos
        # fill the batch once the whole group is done; only photos that joined while the lead itself
        # was there belong to it, so a stream of newer photos never starves an older one.
        # `_idle`: the worker emptied with nothing waiting.
        self._idle, self._lead = True, 0  # _lead: the leading photo's id while it is in the worker
        self._group: set[int] = set()  # the lead and the photos that joined it, while in the worker
        # Written when a photo is handed over, so that a driver waiting for results sends it at once.
        self._wake_r, wake_w = os.pipe()
        self._wake_w: int | None = wake_w
        os.set_blocking(self._wake_r, False)
        os.set_blocking(wake_w, False)

    def health(self) -> list[dict]:
        return []

    def _ensure(self, cancelled: Callable[[], bool] | None = None) -> _Worker:
        """The running worker, started (again) if need be. A restart (`cancelled` given: a photo waits)
        whose worker is killed while it starts is tried again with backoff until one runs or the
        daemon stops (`AbandonedError`); a worker that refuses to start (`fatal`) fails as at start-up."""
        failures = 0
        while self._worker is None:
            try:
                self._worker = _Worker(self._argv, self._settings.worker.start_timeout_seconds, self._settings)
            except WorkerKilledError as e:
                if cancelled is None:
                    raise
                failures += 1
                delay = min(RESTART_MAX_S, RESTART_MIN_S * 2 ** (failures - 1))
                log.warning("worker.start_failed", reason=e.message, failures=failures, retry_in_s=delay)
                child.wait(delay, cancelled)
                continue
            # What the worker itself says it loaded, not a guess from settings: a model file replaced
            # under the same name since the last worker started is named by its new digest.
            self.info = self._worker.info
        return self._worker

    def infer(self, image: Image.Image, prompt: Prompt, *, attempt: int,
              cancelled: Callable[[], bool], alone: bool = False, photo: PhotoRef = UNNAMED) -> Inference:
        ticket = _Ticket(image, prompt, attempt, alone, photo)
        with self._cond:
            self._pending.append(ticket)
            self._wake()
            while ticket.outcome is None:
                if ticket in self._pending and cancelled():
                    self._pending.remove(ticket)
                    raise _abandoned()
                if self._driving:
                    self._cond.wait(child.POLL_S)
                    continue
                self._driving = True
                try:
                    self._drive(cancelled)
                finally:
                    self._driving = False
                    self._cond.notify_all()
        if isinstance(ticket.outcome, BaseException):
            raise ticket.outcome
        return ticket.outcome

    def _wake(self) -> None:
        if self._wake_w is not None:  # None once closed (its number may belong to another file by then)
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"!")

    def _drive(self, cancelled: Callable[[], bool]) -> None:
        """One turn (lock held; released while on the pipes): send what may go, else read what came."""
        if cancelled():  # nothing more goes to the worker; what is in it is abandoned with it
            if self._in_flight:
                self._lose(_Lost.SHUTDOWN)
            else:
                self._cond.wait(child.POLL_S)
            return
        batch = self._admissible()
        if batch:
            self._send(batch, cancelled)
        elif self._in_flight:
            self._receive(cancelled)
        else:
            self._cond.wait(child.POLL_S)

    def _admissible(self) -> list[_Ticket]:
        """What goes to the worker now, marked in flight: the newest photos while fewer than `parallel`
        are there. A photo retried after a crash goes alone, once the worker is empty, and nothing
        goes beside it (a photo that crashed the worker must not take others with it twice); nothing
        goes while a recycle waits for the worker to empty."""
        if not self._pending or (self._in_flight and (self._recycle_reason() or
                                                      any(t.alone for t in self._in_flight.values()))):
            return []
        retries = [t for t in self._pending if t.alone]
        leads = not self._in_flight and not retries and self._idle and self.parallel > 1
        batch = self._newest(leads) if not retries else [] if self._in_flight else retries[:1]
        self._idle = False
        for t in batch:
            self._pending.remove(t)
            t.id = next(self._ids)
            self._in_flight[t.id] = t
        if leads:
            self._lead = batch[0].id
        if self._lead:
            self._group.update(t.id for t in batch)
        return batch

    def _newest(self, leads: bool) -> list[_Ticket]:
        """The newest photos waiting, as many as the worker has room for. Into an idle worker (at
        `parallel` > 1) only the newest goes, the lead; while its group is in the worker only a photo
        newer than each photo there joins (the newest may be decoded a moment after an older one)."""
        newest = sorted(self._pending, key=lambda t: -t.photo.order)
        if leads:
            return newest[:1]
        if self._group:
            top = max(t.photo.order for t in self._in_flight.values())
            newest = [t for t in newest if t.photo.order > top]
        return newest[:self.parallel - len(self._in_flight)]

    def _emptied(self) -> None:
        """The worker holds no photo now: idle, unless photos wait (they fill the batch, no lead)."""
        self._idle, self._lead = not self._pending, 0
        self._group.clear()

    def _send(self, batch: list[_Ticket], cancelled: Callable[[], bool]) -> None:
        """One request per photo. Its deadline counts from now, `timeout_seconds` for each photo then
        in the worker (they share its steps)."""
        timeout = self._settings.worker.timeout_seconds * len(self._in_flight)
        failed: ModelError | AbandonedError | None = None
        self._cond.release()
        try:
            worker = self._ensure(cancelled)
        except (ModelError, AbandonedError) as e:  # no worker: these photos were never in one
            failed = e
        except (OSError, ValueError) as e:  # its start itself failed (a pipe, a garbled hello)
            failed = ModelError(f"the engine worker did not start ({e})",
                                "see the worker events above; run `bbsd check`")
        else:
            for t in batch:  # a worker's start does not count
                t.timeout_s, t.deadline = timeout, time.monotonic() + timeout
            with contextlib.suppress(OSError):  # the worker died: reading its pipe says so, and every photo pays
                for t in batch:
                    ipc.send(worker.proc.stdin.fileno(), t.request(), t.image.convert("RGB").tobytes())
        finally:
            self._cond.acquire()
        for t in batch if failed else ():
            del self._in_flight[t.id]
            t.outcome = failed
        if failed and not self._in_flight:
            self._emptied()

    def _receive(self, cancelled: Callable[[], bool]) -> None:
        """Wait (at most POLL_S, lock released) for a result and hand it to its photo; a worker that
        died, hangs past a photo's deadline or is abandoned at shutdown costs each photo in it."""
        worker = self._worker
        if worker is None:  # lost while these photos were being sent
            self._lose(_Lost.CRASH)
            return
        deadline = min(t.deadline for t in self._in_flight.values())
        fd = worker.proc.stdout.fileno()
        message, lost = None, None
        self._cond.release()
        try:
            wait = max(0.0, min(child.POLL_S, deadline - time.monotonic()))
            ready = select.select([fd, self._wake_r], [], [], wait)[0]
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            if fd in ready:
                message, _ = ipc.receive(fd, deadline)
        except TimeoutError:
            lost = _Lost.TIMEOUT
        except (EOFError, OSError):
            lost = _Lost.CRASH
        finally:
            self._cond.acquire()
        if message is None and lost is None:
            lost = _Lost.SHUTDOWN if cancelled() else _Lost.TIMEOUT if time.monotonic() >= deadline else None
        if lost:
            self._lose(lost)
        elif message is not None:
            self._dispatch(message, worker)

    def _dispatch(self, message: dict, worker: _Worker) -> None:
        ticket = self._in_flight.pop(message.get("id"), None)
        if ticket is None:
            log.warning("worker.unexpected", type=message.get("type"), id=message.get("id"))
            return
        if ticket.id == self._lead:  # the lead is done: nothing joins its group any more
            self._lead = 0
        self._group.discard(ticket.id)  # once the group is done, the photos waiting fill the batch
        try:
            ticket.outcome = _inference(message["result"], message, worker.info)
        except (KeyError, TypeError, ValueError) as e:  # a worker of another version: the photo, not the thread
            ticket.outcome = PhotoError(EngineCode.ERROR, f"the engine worker sent a result bbsd cannot read ({e!r})",
                                        "restart bbsd so that daemon and worker are the same version")
        worker.photos += 1
        worker.rss_mb = message["rss_mb"]
        if not self._in_flight:
            self._emptied()
            if self._recycle_reason():
                self._recycle(worker)

    def _lose(self, reason: _Lost) -> None:
        """Kill the worker; each photo in it gets the error of how it was lost. A hang with several
        photos in the worker cannot say which one hung: each gets a crash (the pipeline retries it
        alone), so only the photo that hangs alone gets `engine_timeout`, as only the photo that kills
        the worker alone twice is quarantined."""
        detail = self._discard(reason)
        n = len(self._in_flight)
        for t in self._in_flight.values():
            if reason is _Lost.SHUTDOWN:
                t.outcome = _abandoned()
            elif reason is _Lost.TIMEOUT and n == 1:
                t.outcome = labeler.EngineTimeoutError(t.timeout_s)
            elif reason is _Lost.TIMEOUT:
                t.outcome = labeler.EngineCrashError(f"hung with {n} photos in it, killed after {t.timeout_s:g} s")
            else:
                t.outcome = labeler.EngineCrashError(detail)
        self._in_flight.clear()
        self._emptied()

    def _discard(self, reason: _Lost) -> str:
        """Kill the current worker (the next request starts a new one); return how it ended."""
        worker, self._worker = self._worker, None
        if worker is None:
            return reason.value
        detail = worker.kill()
        log.warning("worker.lost", pid=worker.proc.pid, reason=reason.value, how=detail, photos=worker.photos)
        return detail

    def _recycle_reason(self) -> str | None:
        worker, w = self._worker, self._settings.worker
        if worker is None:
            return None
        if w.recycle_after_photos and worker.photos >= w.recycle_after_photos:
            return "photos"
        if w.recycle_rss_growth_mb and worker.rss_mb - worker.baseline_mb > w.recycle_rss_growth_mb:
            return "memory"
        return None

    def _recycle(self, worker: _Worker) -> None:
        """Stop the worker, now empty (lock released meanwhile: it may take a few seconds to exit)."""
        growth = worker.rss_mb - worker.baseline_mb
        log.info("worker.recycled", pid=worker.proc.pid, reason=self._recycle_reason(), photos=worker.photos,
                 rss_mb=worker.rss_mb, baseline_mb=worker.baseline_mb, growth_mb=round(growth, 1),
                 bound_mb=self._settings.worker.recycle_rss_growth_mb)
        self._worker = None
        self._cond.release()
        try:
            worker.stop()
        finally:
            self._cond.acquire()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        with self._cond:
            if self._wake_w is not None:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_w = None


def _abandoned() -> AbandonedError:
    return AbandonedError("labelling abandoned at shutdown", "the photo stays pending and is redone at start")


def _inference(r: dict, reply: dict, model: ModelInfo) -> Inference | PhotoError:
    """A photo's result message; `reply` carries the worker's memory when it sent it, `model` is
    what that worker loaded."""
    if r["type"] == "photo_error":
        return PhotoError(r["code"], r["message"], r["hint"])
    return Inference(text=r["text"], prompt_tokens=r["prompt_tokens"], output_tokens=r["output_tokens"],
                     encode_ms=r["encode_ms"], generate_ms=r["generate_ms"], rss_mb=reply["rss_mb"],
                     vram_mb=reply["vram_mb"], evaluated_tokens=r.get("evaluated_tokens"),
                     sampled_tokens=r.get("sampled_tokens"), steps=tuple(Step.from_json(row) for row in r["steps"]),
                     model=model)
