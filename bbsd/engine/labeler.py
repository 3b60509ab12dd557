"""The `Labeler` protocol and its value types: all the daemon knows about a model.

Invariant: this module imports nothing of bbsd but the prompt's type, so every backend, the
supervisor and the pipeline can depend on it without a cycle. A photo's identity travels as a
`PhotoRef` beside its pixels, never in them. The registry that finds backends by name is
`bbsd.engine.registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from bbsd.errors import PhotoError

if TYPE_CHECKING:
    from PIL import Image

    from bbsd.engine.prompt import Prompt


@dataclass(frozen=True)
class PhotoRef:
    """Who a photo is, for an engine: the one value that carries its identity from the pipeline
    through a worker process and back, beside its pixels (never in the image's metadata).

    `name`: its file name, for logs (and a scripted fake's replies); `order`: how new it is (the
    queue's order: capture time, else mtime), so an engine's batches take the newest first;
    `sha256`: its content's digest, hashed once by the pipeline before it was decoded (None where
    nothing was hashed: `bbsd eval`, a probe). Never its path: an engine knows nothing of folders.
    """

    name: str = ""
    order: float = 0.0
    sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "order": self.order, "sha256": self.sha256}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PhotoRef:
        """From a worker's request header (`order` and `sha256` may be missing: an older daemon, a test)."""
        return cls(str(doc.get("name", "")), float(doc.get("order", 0.0)), doc.get("sha256"))


UNNAMED = PhotoRef()  # a photo nobody named (warm-up images, benchmarks, tests)


class EngineCode(StrEnum):
    """The error codes a labeler raises `PhotoError` with that bbsd acts on (the pipeline retries a
    crash alone); a `str`, so a sidecar and a log say them as before."""

    CRASH = "engine_crash"  # the engine process died with the photo in it
    TIMEOUT = "engine_timeout"  # it gave no answer in time, the photo alone in it
    ERROR = "engine_error"  # it answered with something it could not make into a reply


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
    # Who answered, for the sidecar and the log (a remote backend: endpoint, model, client
    # latency, the server's own timings). Never a secret.
    served: dict[str, Any] | None = None
    # The sampled tokens of the names with their probabilities (`confidence.Step`), where the
    # backend can see them; the pipeline turns them into each name's confidence.
    steps: tuple = ()
    # What answered when it is not the labeller's `info` of the moment: an engine worker's model,
    # as it said at its start (a worker restarted since with another model must not name this reply).
    model: ModelInfo | None = None


@dataclass(frozen=True)
class Job:
    """One photo for an engine that labels several at once (`serve`): `tag` is the caller's own
    name for it, handed back with its result."""

    image: Image.Image
    prompt: Prompt
    attempt: int
    tag: Any = None
    alone: bool = False  # a retry after an engine crash: nothing is labelled beside it
    photo: PhotoRef = UNNAMED

    def same_prefix(self, other: Job) -> bool:
        """Whether both prompts share the cached prefix (the catalog did not change in between)."""
        a, b = self.prompt, other.prompt
        return (a.system, a.user, a.grammar, a.references) == (b.system, b.user, b.grammar, b.references)


@dataclass(frozen=True)
class ModelInfo:
    """What a sidecar records about the model that made it (part of "is this sidecar current"). An
    isolated engine's worker reports it in its hello: it names what that process loaded."""

    backend: str
    file: str
    mmproj: str | None
    lora: str | None = None  # a LoRA adapter on the text model ([model] lora): it changes the labels too
    # What tells two models with one file name apart: (role, size in bytes, sha256 of the whole file)
    # for each file loaded, role "file", "mmproj" or "lora" (`fingerprint`); empty without local files.
    files: tuple[tuple[str, int, str], ...] = ()
    # The engine settings a photo's error may come from (context_size, max_output_tokens,
    # image_max_side), as (name, value): an error sidecar is stale once one of them changed.
    limits: tuple[tuple[str, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "file": self.file, "mmproj": self.mmproj, "lora": self.lora,
                "files": [list(f) for f in self.files], "limits": [list(v) for v in self.limits]}

    def digest(self) -> str | None:
        """The text model file's sha256, where bbsd hashed it (a local model)."""
        return next((h for role, _, h in self.files if role == "file"), None)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ModelInfo:
        return cls(doc["backend"], doc["file"], doc["mmproj"], doc.get("lora"),
                   tuple((str(r), int(n), str(h)) for r, n, h in doc.get("files", ())),
                   tuple((str(k), int(v)) for k, v in doc.get("limits", ())))


class Labeler(Protocol):
    info: ModelInfo
    # How many photos the daemon may hand over at once (one worker thread, each with its own
    # decoder, per unit); an in-process model says 1.
    concurrency: int
    gpu: bool  # whether memory figures should include VRAM

    def infer(
        self, image: Image.Image, prompt: Prompt, *, attempt: int, cancelled: Callable[[], bool],
        alone: bool = False, photo: PhotoRef = UNNAMED,
    ) -> Inference:
        """Return the model's raw reply for one RGB image; `attempt` > 0 asks for a varied retry;
        `alone` asks that no other photo be labelled beside this one (it may be the one that crashed
        the engine), and matters only to a labeler that labels several photos together; `photo` says
        which photo the pixels are (its name for logs, its order for batches).

        Safe to call from `concurrency` threads at once.
        """
        ...

    def health(self) -> list[dict[str, Any]]:
        """Per-endpoint health for the status file (empty for a local model)."""
        ...

    def close(self) -> None: ...


class EngineCrashError(PhotoError):
    def __init__(self, detail: str) -> None:
        super().__init__(EngineCode.CRASH, f"the engine worker died while labelling this photo ({detail})",
                         "bbsd restarted it; a photo that kills it twice is not retried until it changes")


class EngineTimeoutError(PhotoError):
    def __init__(self, seconds: float) -> None:
        super().__init__(EngineCode.TIMEOUT, f"the engine gave no answer within {seconds:g} s",
                         "the worker was restarted; raise [worker] timeout_seconds for very slow machines")
