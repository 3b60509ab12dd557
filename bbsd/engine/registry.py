"""The registry of labelling backends, and what each one contributes to the rest of bbsd.

Invariant: nothing outside a backend's own module knows its settings. A backend is one
module exposing `BACKEND`, a `Backend` that owns its configuration tables and their
validation, its `bbsd check` lines, the systemd unit's needs and how to open a `Labeler`.
Modules are imported lazily (only the configured one, when needed), so the CLI never loads
llama.cpp for a command that does not use it. Adding a backend to bbsd is its module plus one line
in `BACKENDS`; a plugin adds one with `register` (docs/developer/plugins.md).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bbsd.engine.labeler import UNNAMED, PhotoRef
from bbsd.errors import ConfigError

if TYPE_CHECKING:
    from PIL import Image

    from bbsd.config import Settings
    from bbsd.config_keys import Key, Validator
    from bbsd.engine.labeler import Inference, Labeler, ModelInfo
    from bbsd.engine.prompt import Prompt

# Each backend by name: the module that exposes its `BACKEND` (imported when first needed), or a
# `Backend` a plugin registered. Plugins add to it (`register`); bbsd's own are `SHIPPED`.
BACKENDS: dict[str, str | Backend] = {
    "llama": "bbsd.engine.llama.backend",
    "openai": "bbsd.engine.openai.backend",
}
SHIPPED = tuple(BACKENDS)  # what the configuration reference lists
DEFAULT = "llama"


@dataclass(frozen=True)
class UnitNeeds:
    """What the systemd unit must allow for a backend (the rest stays locked down)."""

    read_paths: tuple[Path, ...] = ()  # files the service reads (a home folder makes ProtectHome read-only)
    gpu: bool = False  # the NVIDIA device drop-in
    network: bool = False  # IP networking at all (otherwise PrivateNetwork=yes)
    # With network: the only addresses it may reach (IPAddressAllow=); empty = any (host names).
    ip_allow: tuple[str, ...] = ()


@dataclass(frozen=True)
class Backend:
    name: str
    # Configuration keys it owns, by section (a section may be shared with the core, like [engine]).
    tables: Mapping[str, Mapping[str, Key]]
    # Validate the raw TOML (and `BBSD_*` environment) into the backend's own frozen settings.
    configure: Callable[[dict[str, Any], Validator, Mapping[str, str], Any], Any]
    open: Callable[[Settings], Labeler]
    # Run in the supervised worker process when [worker] isolate = true (an in-process model);
    # a remote client has nothing to contain and runs in the daemon.
    isolate: bool = True
    # `bbsd run` labels a generated image before READY (a local model caches its prompt prefix then).
    # A remote backend says False: with every server down the warm-up would hold the start forever.
    warm_up: bool = True
    # What its Labeler will report as `info`, known without opening it (`bbsd label` decides from it
    # whether a sidecar is current before loading a model).
    info: Callable[[Settings], ModelInfo] = field(default=lambda s: _plain_info(s))
    check: Callable[[Settings], list[str]] = field(default=lambda s: [])
    unit: Callable[[Settings], UnitNeeds] = field(default=lambda s: UnitNeeds())
    # Which weights the model holds where bbsd made it itself ("random": its test model; "toy": trained on
    # the toy show), read from the files' headers without loading them; None for any other model.
    # `bbsd run` and `bbsd check` say it once at start (`checks.weights`).
    weights: Callable[[Settings], str | None] = field(default=lambda s: None)


def get(name: str) -> Backend:
    entry = BACKENDS.get(name)
    if entry is None:
        raise ConfigError(f"unknown backend {name!r}", f"use one of: {', '.join(BACKENDS)}")
    return importlib.import_module(entry).BACKEND if isinstance(entry, str) else entry


def register(name: str, backend: str | Backend) -> None:
    """Make a backend known by `name` (a plugin calls this when bbsd imports it): the name of a module
    that exposes `BACKEND`, imported when the backend is first needed, or the `Backend` itself.

    Registering the same again is harmless; a name already taken by another backend is refused, so a
    plugin can never replace one of bbsd's own.
    """
    if isinstance(backend, Backend) and backend.name != name:
        raise ValueError(f"a backend registered as {name!r} must be named so, not {backend.name!r}")
    taken = BACKENDS.get(name)
    if taken is not None and taken != backend:
        raise ValueError(f"the backend name {name!r} is taken (by {taken if isinstance(taken, str) else 'a plugin'})")
    BACKENDS[name] = backend


def owner_of(section: str, key: str | None = None) -> str | None:
    """Which backend owns a configuration section (or one key of it), for a helpful error."""
    for name in BACKENDS:
        tables = get(name).tables
        if section in tables and (key is None or key in tables[section]):
            return name
    return None


def changed_tables(old: Settings, new: Settings) -> list[str]:
    """The configuration tables of the backend's own settings that differ between two loads (for
    SIGHUP's restart notice): the table a user edited, not the name of a settings object."""
    if old.engine.backend != new.engine.backend:
        return ["engine"]
    tables = get(new.engine.backend).tables
    changed = []
    for f in dataclasses.fields(old.backend):
        if getattr(old.backend, f.name) != getattr(new.backend, f.name):
            table = next((t for t, keys in tables.items() if f.name in keys), "engine")  # else an [engine] copy
            changed += [table] if table not in changed else []
    return changed


def open_labeler(settings: Settings, warm_up: bool = False) -> Labeler:
    """The configured backend; an in-process model runs in a supervised worker unless [worker] isolate = false.

    `warm_up` labels a generated image once before returning (the daemon: its first photo is
    then as fast as the rest). Raises `ModelError` when the model cannot be used.
    """
    backend = get(settings.engine.backend)
    warm_up = warm_up and backend.warm_up
    if settings.worker.isolate and backend.isolate:
        from bbsd.engine.supervisor import WorkerLabeler

        return WorkerLabeler(settings, warm_up=warm_up)
    labeler = open_in_process(settings)
    from bbsd.engine.startup import check_fit
    from bbsd.engine.startup import warm_up as warm

    try:
        check_fit(labeler, settings)  # as the worker does: a catalog that cannot fit fails the start
        if warm_up:
            warm(labeler, settings)
    except BaseException:
        labeler.close()
        raise
    return labeler


def model_info(settings: Settings) -> ModelInfo:
    """What a labeler for these settings will report, known without loading anything (a backend with
    local files hashes them, once: `fingerprint`)."""
    return dataclasses.replace(get(settings.engine.backend).info(settings), limits=limits(settings))


def limits(settings: Settings) -> tuple[tuple[str, int], ...]:
    """The engine settings a photo's error may come from (`ModelInfo.limits`) for a backend that holds
    the context itself (a local model): its context size, the reply's bound and the image's size. A
    remote server's errors are the server's: none."""
    context = getattr(settings.backend, "context_size", None)
    if not isinstance(context, int):
        return ()
    return (("context_size", context), ("max_output_tokens", settings.engine.max_output_tokens),
            ("image_max_side", settings.engine.image_max_side))


def _plain_info(settings: Settings) -> ModelInfo:
    from bbsd.engine.labeler import ModelInfo

    return ModelInfo(backend=settings.engine.backend, file=settings.engine.backend, mmproj=None)


class LazyLabeler:
    """Opens the configured backend at the first photo that needs the model, not before.

    `bbsd label` on photos whose sidecars are current (or on files that are not images)
    answers in milliseconds instead of loading gigabytes of weights first.
    """

    concurrency = 1  # `bbsd label` labels one photo at a time

    def __init__(self, settings: Settings) -> None:
        self.info = model_info(settings)
        self._settings = settings
        self._inner: Labeler | None = None

    @property
    def loaded(self) -> bool:
        return self._inner is not None

    @property
    def gpu(self) -> bool:
        return self._inner.gpu if self._inner is not None else False

    def health(self) -> list[dict[str, Any]]:
        return self._inner.health() if self._inner is not None else []

    def infer(self, image: Image.Image, prompt: Prompt, *, attempt: int, cancelled: Callable[[], bool],
              alone: bool = False, photo: PhotoRef = UNNAMED) -> Inference:
        if self._inner is None:
            self._inner = open_labeler(self._settings)
        return self._inner.infer(image, prompt, attempt=attempt, cancelled=cancelled, alone=alone, photo=photo)

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None


def open_in_process(settings: Settings) -> Labeler:
    """Open the configured backend in this process (the worker does this); its `info` gets the limits
    it works under."""
    labeler = get(settings.engine.backend).open(settings)
    labeler.info = dataclasses.replace(labeler.info, limits=limits(settings))
    return labeler
