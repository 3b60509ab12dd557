"""The `Labeler` protocol and the registry of backends.

Invariant: the rest of bbsd talks to a model only through `Labeler.infer`; backends are
looked up by name and imported lazily, so the CLI never loads llama.cpp unless a command
needs the model. New backends (a supervised worker, a remote OpenAI-compatible server)
register here and change nothing else.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bbsd.errors import ConfigError

if TYPE_CHECKING:
    from PIL import Image

    from bbsd.config import Settings
    from bbsd.prompt import Prompt


@dataclass(frozen=True)
class Inference:
    """One raw reply and what it cost; validation happens in the pipeline, not the backend."""

    text: str
    prompt_tokens: int
    output_tokens: int
    encode_ms: float  # image encoding and prompt evaluation
    generate_ms: float  # sampling the reply
    rss_mb: float | None = None  # the engine process's memory, when it is not this process
    vram_mb: float | None = None
    evaluated_tokens: int | None = None  # prompt tokens evaluated for this photo (the rest was cached)
    sampled_tokens: int | None = None  # output tokens sampled one by one (the rest the schema fixed)


@dataclass(frozen=True)
class ModelInfo:
    """What a sidecar records about the model that made it."""

    backend: str
    file: str
    mmproj: str | None


class Labeler(Protocol):
    info: ModelInfo

    def infer(
        self, image: Image.Image, prompt: Prompt, *, attempt: int, cancelled: Callable[[], bool]
    ) -> Inference:
        """Return the model's raw reply for one RGB image; `attempt` > 0 asks for a varied retry."""
        ...

    def close(self) -> None: ...


BACKENDS: dict[str, str] = {
    "llama": "bbsd.llama_engine:open_labeler",
    "fake": "bbsd.fake_engine:open_labeler",
}


def open_labeler(settings: Settings, warm_up: bool = False) -> Labeler:
    """The configured backend, in a supervised worker process unless [worker] isolate = false.

    `warm_up` labels a generated image once before returning (the daemon: its first photo is
    then as fast as the rest). Raises `ModelError` when the model cannot be used.
    """
    if settings.worker.isolate:
        from bbsd.supervisor import WorkerLabeler

        return WorkerLabeler(settings, warm_up=warm_up)
    labeler = open_in_process(settings)
    if warm_up:
        from bbsd.worker import warm_up as warm

        warm(labeler, settings)
    return labeler


def model_info(settings: Settings) -> ModelInfo:
    """What a labeler for these settings will report, known without loading anything."""
    m = settings.model
    return ModelInfo(backend=m.backend, file=m.path.name if m.path else m.backend,
                     mmproj=m.mmproj.name if m.mmproj else None)


class LazyLabeler:
    """Opens the configured backend at the first photo that needs the model, not before.

    `bbsd label` on photos whose sidecars are current (or on files that are not images)
    answers in milliseconds instead of loading gigabytes of weights first.
    """

    def __init__(self, settings: Settings) -> None:
        self.info = model_info(settings)
        self._settings = settings
        self._inner: Labeler | None = None

    @property
    def loaded(self) -> bool:
        return self._inner is not None

    def infer(self, image: Image.Image, prompt: Prompt, *, attempt: int, cancelled: Callable[[], bool]) -> Inference:
        if self._inner is None:
            self._inner = open_labeler(self._settings)
        return self._inner.infer(image, prompt, attempt=attempt, cancelled=cancelled)

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None


def open_in_process(settings: Settings) -> Labeler:
    """Load the configured backend into this process (the worker does this)."""
    target = BACKENDS.get(settings.model.backend)
    if target is None:
        raise ConfigError(f"unknown backend {settings.model.backend!r}", f"use one of: {', '.join(BACKENDS)}")
    module, _, factory = target.partition(":")
    return getattr(importlib.import_module(module), factory)(settings)
