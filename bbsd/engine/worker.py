"""The engine worker: a child process that owns the model and labels the photos the daemon hands
over, each request one photo with the daemon's id for it. Requests are read by a thread of their
own, so a photo handed over while replies are generating joins them at the next decode step (where
the engine batches: `replies.serve`); each result goes back, with that id, as soon as it is known.

Invariants: the worker works from the settings the daemon validated and handed over at its start
(`child`), never from the configuration file as it is now; its hello names what it loaded (`info`,
file digests included) and it refuses to start when the prompt leaves a photo no room in the
context (`startup.check_fit`); it never touches photos or sidecars — it gets pixels and a prompt, and
returns the raw reply with its own memory figures; the only image files it reads are the
catalog's reference photos the prompt names (decoded here, in this contained process, never in
the daemon); it dies with its parent (PR_SET_PDEATHSIG), so a killed daemon leaves no orphan
holding gigabytes; its stdout is the message pipe only (anything native code prints goes to
stderr instead).

The suite injects faults at two seams, from a plugin of its own (tests/fakes/faults.py): `_Inbox.admit`,
which takes each photo into the engine, and `_never_cancelled`, which the engine asks before each
decode step.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import structlog
from PIL import Image

from bbsd import metrics
from bbsd.contain import child, ipc
from bbsd.engine import startup
from bbsd.engine.labeler import Job, PhotoRef
from bbsd.engine.prompt import Prompt
from bbsd.errors import BbsdError, ConfigError, PhotoError

log = structlog.get_logger("bbsd.worker")


def main(load: Callable[[bool], Any], parent: int, warm: bool = False) -> int:
    """The engine worker process: `load(references)` reads the configuration for a worker started by
    hand (the daemon hands over the settings it validated)."""
    from bbsd import logs
    from bbsd.engine.registry import open_in_process

    child.die_with_parent(parent)
    inp, out = child.message_pipes()
    # The configuration the daemon validated, never the file as it is now (it may be broken since)
    handed = child.receive_settings(inp, lambda: None)
    settings, missing = (handed, None) if handed is not None else _settings(load)
    logs.configure(settings.log.level, settings.log.format)
    structlog.contextvars.bind_contextvars(worker_pid=os.getpid())
    if missing is not None:
        log.warning("worker.references_unreadable", message=missing.message, hint=missing.hint)
    try:
        labeler = open_in_process(settings)
        startup.check_fit(labeler, settings)
        if warm:
            startup.warm_up(labeler, settings)
    except BbsdError as e:
        ipc.send(out, {"type": "fatal", "message": e.message, "hint": e.hint, "kind": type(e).__name__})
        return 2
    gpu = labeler.gpu
    # `info` names what this process loaded (file digests included): the daemon's sidecars say it
    ipc.send(out, {"type": "ready", "pid": os.getpid(), "rss_mb": metrics.rss_mb(), "vram_mb": metrics.vram_mb(gpu),
                   "info": labeler.info.to_json(), "gpu": gpu, "parallel": getattr(labeler, "parallel", 1)})
    try:
        return _serve(labeler, inp, out, gpu)
    finally:
        labeler.close()


def _settings(load: Callable[[bool], Any]) -> tuple:
    """The configuration read from the file, for a worker started without settings handed over (by hand,
    by a test); the daemon always hands over what it validated. A reference photo gone must not stop the
    worker (and with it the service): it starts without references in its own warm-up prompt, and
    the photos, whose prompt names them, wait for them (`references.unusable`)."""
    try:
        return load(True), None
    except ConfigError as e:
        if ".references" not in e.message:
            raise
        return load(False), e


class _Closed(Exception):
    """The daemon said `exit`, or closed the pipe: the worker ends (whatever is in flight is abandoned)."""


class _Inbox:
    """The requests, read from the daemon's pipe by a thread of their own: a photo handed over while
    the engine is busy waits here for the next decode step, never in the pipe (the daemon's write
    would block on it)."""

    def __init__(self, fd: int) -> None:
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.waiting: list[Job] = []  # taken from the queue, not yet admitted (another prompt, a retry)
        self.running = 0  # admitted, result not sent yet
        threading.Thread(target=self._read, args=(fd,), name="inbox", daemon=True).start()

    def _read(self, fd: int) -> None:
        try:
            while True:
                request, pixels = ipc.receive(fd)
                if request["type"] == "exit":
                    break
                self._queue.put(_job(request, pixels))
        except (EOFError, OSError):
            pass
        except Exception as e:  # noqa: BLE001 - a request it cannot read: the worker ends (the daemon sees a
            # crash and retries its photos) rather than leave the daemon writing into a pipe nobody reads
            log.error("worker.bad_request", error=repr(e))
        finally:
            self._queue.put(None)

    def take(self, block: bool) -> None:
        """Move what arrived into `waiting` (`block`: wait for one at least); `_Closed` at the end."""
        try:
            job = self._queue.get(block)
            while True:
                if job is None:
                    raise _Closed
                self.waiting.append(job)
                job = self._queue.get_nowait()
        except queue.Empty:
            return

    def admit(self, accepts: Callable[[Job], bool]) -> Job | None:
        """The first waiting job the engine accepts now (the daemon sent them newest first)."""
        self.take(block=False)
        job = next((j for j in self.waiting if accepts(j)), None)
        if job is not None:
            self.waiting.remove(job)
            log.debug("worker.admitted", photo=job.photo.name, id=job.tag, beside=self.running)
            self.running += 1
        return job


def _job(request: dict, pixels: bytes) -> Job:
    photo = request["photo"]
    image = Image.frombytes("RGB", (photo["width"], photo["height"]), pixels)
    return Job(image, Prompt.from_json(request["prompt"]), photo["attempt"], request["id"],
               photo.get("alone", False), PhotoRef.from_json(photo))  # who it is, as the daemon said


def _serve(labeler, inp: int, out: int, gpu: bool) -> int:
    inbox = _Inbox(inp)

    def finish(job: Job, result) -> None:
        inbox.running -= 1
        log.debug("worker.finished", photo=job.photo.name, id=job.tag, beside=inbox.running)
        memory = {"rss_mb": metrics.rss_mb(), "vram_mb": metrics.vram_mb(gpu)}
        ipc.send(out, {"type": "result", "id": job.tag, "result": _result(result), **memory})

    serve = getattr(labeler, "serve", None) or (lambda admit, done, cancelled: _one_by_one(labeler, admit, done))
    try:
        while True:
            inbox.take(block=not inbox.waiting)
            serve(inbox.admit, finish, _never_cancelled)
    except _Closed:
        return 0


def _one_by_one(labeler, admit: Callable, finish: Callable) -> None:
    """A backend without `serve`: the waiting photos one at a time, in the order they came."""
    while (job := admit(lambda _: True)) is not None:
        try:
            result = labeler.infer(job.image, job.prompt, attempt=job.attempt, cancelled=lambda: False,
                                   photo=job.photo)
        except PhotoError as e:
            result = e
        finish(job, result)


def _result(r) -> dict:
    if isinstance(r, PhotoError):
        return {"type": "photo_error", "code": r.code, "message": r.message, "hint": r.hint}
    return {"type": "result", "text": r.text, "prompt_tokens": r.prompt_tokens, "output_tokens": r.output_tokens,
            "evaluated_tokens": r.evaluated_tokens, "sampled_tokens": r.sampled_tokens,
            "encode_ms": r.encode_ms, "generate_ms": r.generate_ms, "steps": [step.to_json() for step in r.steps]}


def _never_cancelled() -> bool:
    """Asked by the engine before each decode step: the worker is never cancelled (the daemon kills it)."""
    return False
