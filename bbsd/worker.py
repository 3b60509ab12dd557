"""The engine worker: a child process that owns the model and answers one request at a time
(one photo, or a batch that the engine labels together).

Invariants: the worker never touches photos or sidecars — it gets pixels and a prompt, and
returns the raw reply with its own memory figures; the only image files it reads are the
catalog's reference photos the prompt names (decoded here, in this contained process, never in
the daemon); it dies with its parent (PR_SET_PDEATHSIG), so a killed daemon leaves no orphan
holding gigabytes; its stdout is the message pipe only (anything native code prints goes to
stderr instead).

Test hooks (`BBSD_TEST_HOOKS=1` plus `BBSD_TEST_ABORT_ON`, `BBSD_TEST_HANG_ON`, `BBSD_TEST_SLOW_MS`,
`BBSD_TEST_LEAK_MB`) exist for the fault-injection tests only and do nothing unless
`BBSD_TEST_HOOKS=1` is set; never set it in production.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import structlog
from PIL import Image

from bbsd import child, ipc, metrics
from bbsd.errors import BbsdError, PhotoError
from bbsd.prompt import Prompt

log = structlog.get_logger("bbsd.worker")
_leak: list[bytearray] = []


def warm_up(labeler, settings) -> None:
    """Label a generated image once before the first photo, so the first photo of a show is not
    the slow one: the prompt prefix gets cached and lazily allocated buffers exist. Memory is
    measured after this, so the recycling baseline includes them."""
    from bbsd import prompt

    t0 = time.perf_counter()
    try:
        image = Image.new("RGB", (64, 48), (128, 128, 128))
        r = labeler.infer(image, prompt.for_settings(settings), attempt=0, cancelled=lambda: False)
    except PhotoError as e:  # the service still starts; the first photo will say what is wrong
        log.warning("engine.warm_up_failed", code=e.code, message=e.message, hint=e.hint)
        return
    log.info("engine.warmed_up", ms=round((time.perf_counter() - t0) * 1000), prompt_tokens=r.prompt_tokens,
             evaluated_tokens=r.evaluated_tokens)


def main(config_path: Path, parent: int, warm: bool = False, profile: Path | None = None) -> int:
    from bbsd import logs
    from bbsd.engines import open_in_process

    child.die_with_parent(parent)
    inp, out = child.message_pipes()
    settings, missing = _settings(config_path, profile)
    logs.configure(settings.log.level, settings.log.format)
    structlog.contextvars.bind_contextvars(worker_pid=os.getpid())
    if missing is not None:
        log.warning("worker.references_unreadable", message=missing.message, hint=missing.hint)
    try:
        labeler = open_in_process(settings)
        if warm:
            warm_up(labeler, settings)
    except BbsdError as e:
        ipc.send(out, {"type": "fatal", "message": e.message, "hint": e.hint, "kind": type(e).__name__})
        return 2
    gpu = labeler.gpu
    ipc.send(out, {"type": "ready", "pid": os.getpid(), "rss_mb": metrics.rss_mb(), "vram_mb": metrics.vram_mb(gpu),
                   "info": [labeler.info.backend, labeler.info.file, labeler.info.mmproj, labeler.info.lora],
                   "gpu": gpu, "parallel": getattr(labeler, "parallel", 1)})
    try:
        return _serve(labeler, inp, out, gpu)
    finally:
        labeler.close()


def _settings(config_path: Path, profile: Path | None) -> tuple:
    """The configuration the daemon validated. A reference photo gone since then must not stop the
    worker (and with it the service): it starts without references in its own warm-up prompt, and
    the photos, whose prompt names them, wait for them (`references.unusable`)."""
    from bbsd import config
    from bbsd.errors import ConfigError

    def load(references: bool):
        if profile:
            return config.load_profile(config_path, profile, references=references)
        return config.load(config_path, references=references)

    try:
        return load(True), None
    except ConfigError as e:
        if ".references" not in e.message:
            raise
        return load(False), e


def _serve(labeler, inp: int, out: int, gpu: bool) -> int:
    while True:
        try:
            request, pixels = ipc.receive(inp)
        except EOFError:
            return 0
        if request["type"] == "exit":
            return 0
        prompt = Prompt.from_json(request["prompt"])
        items, offset = [], 0
        for photo in request["photos"]:
            _test_hooks(photo["name"])
            size = photo["width"] * photo["height"] * 3
            image = Image.frombytes("RGB", (photo["width"], photo["height"]), pixels[offset:offset + size])
            image.info["bbsd_name"] = photo["name"]  # as in the parent: backends may name the photo in logs
            items.append((image, prompt, photo["attempt"]))
            offset += size
        results = _infer(labeler, items)
        memory = {"rss_mb": metrics.rss_mb(), "vram_mb": metrics.vram_mb(gpu)}
        ipc.send(out, {"type": "results", "results": [_result(r) for r in results], **memory})


def _infer(labeler, items: list) -> list:
    """The batch through `infer_many` where the backend has it (the llama engine), else one by one."""
    if hasattr(labeler, "infer_many"):
        return labeler.infer_many(items, cancelled=lambda: False)
    results = []
    for image, prompt, attempt in items:
        try:
            results.append(labeler.infer(image, prompt, attempt=attempt, cancelled=lambda: False))
        except PhotoError as e:
            results.append(e)
    return results


def _result(r) -> dict:
    if isinstance(r, PhotoError):
        return {"type": "photo_error", "code": r.code, "message": r.message, "hint": r.hint}
    return {"type": "result", "text": r.text, "prompt_tokens": r.prompt_tokens, "output_tokens": r.output_tokens,
            "evaluated_tokens": r.evaluated_tokens, "sampled_tokens": r.sampled_tokens,
            "encode_ms": r.encode_ms, "generate_ms": r.generate_ms, "steps": [step.to_json() for step in r.steps]}


def _test_hooks(name: str) -> None:
    env = os.environ
    if env.get("BBSD_TEST_HOOKS") != "1":
        return
    if env.get("BBSD_TEST_ABORT_ON") and env["BBSD_TEST_ABORT_ON"] in name:
        os.abort()  # what a GGML_ASSERT does to the process
    if env.get("BBSD_TEST_HANG_ON") and env["BBSD_TEST_HANG_ON"] in name:
        time.sleep(3600)
    if env.get("BBSD_TEST_SLOW_MS"):
        time.sleep(int(env["BBSD_TEST_SLOW_MS"]) / 1000)
    if env.get("BBSD_TEST_LEAK_MB"):
        block = bytearray(int(env["BBSD_TEST_LEAK_MB"]) * 2**20)
        block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page so it counts in RSS
        _leak.append(block)


