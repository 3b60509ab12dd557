"""The `fake` backend, a test double: deterministic replies without a model, for fast pipeline tests.

A plugin (docs/developer/plugins.md): the suite loads it into every bbsd process it starts, and into
its own, with BBSD_PLUGINS=tests.fakes.engine (tests/conftest.py); it is not in the shipped package.
Never chosen implicitly: it must be named in the configuration, and the daemon logs `engine.plugin_backend` at
start so nobody mistakes its labels for real ones. Its [fake] table lets tests ask for several photos
in flight (`concurrency`) and a per-photo delay.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from bbsd.config_keys import Key, Validator, section
from bbsd.engine import registry
from bbsd.engine.confidence import Step
from bbsd.engine.labeler import UNNAMED, Inference, ModelInfo, PhotoRef
from bbsd.engine.prompt import Prompt

TABLES = {"fake": {
    "concurrency": Key("int", 1, "photos in flight at once (tests of the daemon's worker threads)", 1, 64),
    "delay_ms": Key("int", 0, "time each reply takes", 0, 600_000),
    "replies": Key("path", None, "JSON file mapping a photo's file name to the reply object to give for it "
                   "(`bbsd eval` tests with answers known in advance)"),
    "confidences": Key("path", None, "JSON file mapping a photo's file name to the token probabilities of its "
                       "scripted reply, per field: {\"names\": {name: confidence}, \"missed\": [name or null, "
                       "score]} (tests of confidence and review figures)"),
}}


@dataclass(frozen=True)
class FakeSettings:
    concurrency: int
    delay_ms: int
    replies: Path | None
    confidences: Path | None = None


class FakeLabeler:
    """Replies with the first catalog names and a caption naming the image size.

    `replies` scripts raw reply texts in order (then falls back to the default),
    which lets tests feed invalid replies through the real validation path. `by_name` scripts a
    reply per photo file name (as the pipeline names the photo: `PhotoRef.name`), whatever order photos come in.
    `confidences` gives such a photo token probabilities (`Inference.steps`), as the local engine reports them:
    per field, each name's confidence and the strongest name not written (`confidence.score` reads them back).
    """

    gpu = False

    def __init__(self, replies: Iterable[str] = (), delay_s: float = 0.0, concurrency: int = 1,
                 by_name: Mapping[str, Any] | None = None, confidences: Mapping[str, Any] | None = None) -> None:
        self.info = ModelInfo(backend="fake", file="fake", mmproj=None)
        self.concurrency = concurrency
        self._replies = list(replies)
        self._delay_s = delay_s
        self._by_name = dict(by_name or {})
        self._confidences = dict(confidences or {})
        self._lock = threading.Lock()
        self.calls = 0

    def infer(self, image: Image.Image, prompt: Prompt, *, attempt: int,
              cancelled: Callable[[], bool], alone: bool = False, photo: PhotoRef = UNNAMED) -> Inference:
        with self._lock:
            self.calls += 1
            scripted = self._replies.pop(0) if self._replies else None
        time.sleep(self._delay_s)
        named = self._by_name.get(photo.name)
        if scripted is None and named is not None:
            scripted = named if isinstance(named, str) else json.dumps(named)
        text = scripted if scripted is not None else self._default(image, prompt)
        steps = _steps(text, self._confidences[photo.name]) if photo.name in self._confidences else ()
        return Inference(text=text, prompt_tokens=0, output_tokens=len(text), encode_ms=0.0, generate_ms=0.0,
                         steps=steps)

    @staticmethod
    def _default(image: Image.Image, prompt: Prompt) -> str:
        props = prompt.schema["properties"]
        first = [p.get("items", {}).get("enum", [])[:1] for p in (props["characters"], props["props"])]
        reply = {
            "characters": first[0], "props": first[1],
            "caption": f"fake label of a {image.width}x{image.height} image",
            "scene": "test", "visible_text": [],
        }
        if "answers" in props:  # the first answer each question's schema admits
            reply["answers"] = {k: _first_answer(a) for k, a in props["answers"]["properties"].items()}
        return json.dumps(reply)

    def health(self) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        pass


def _steps(text: str, fields: Mapping[str, Any]) -> tuple[Step, ...]:
    """One sampled step per scripted name (its quoted text, at its confidence) and one at each list's `]`,
    whose alternative is one more name (`missed`: that name, or null for a bare `,`) at its score."""
    steps = []
    for field, want in fields.items():
        key = f'"{field}": ['
        at = text.index(key) + len(key)
        close = text.index("]", at)  # the fake's scripted names hold no `]`
        for name, p in want.get("names", {}).items():
            start = text.index(json.dumps(name), at, close)
            steps.append(Step(start, start + len(json.dumps(name)), p, None))
        name, score = want.get("missed") or (None, 0.0)
        alt = (", " + json.dumps(name) if name else ", ") if score else None
        steps.append(Step(close, close + 1, 1.0 - score, alt, score))
    return tuple(sorted(steps, key=lambda s: s.start))


def _first_answer(schema: dict[str, Any]) -> str | int:
    if "enum" in schema:
        return schema["enum"][0]
    return schema["minimum"] if schema.get("type") == "integer" else "fake"


def configure(raw: dict[str, Any], v: Validator, env: Mapping[str, str], engine) -> FakeSettings:
    return FakeSettings(**section(raw.get("fake", {}), "fake", TABLES["fake"], v, env))


def open_labeler(settings) -> FakeLabeler:
    s: FakeSettings = settings.backend
    by_name = json.loads(s.replies.read_text(encoding="utf-8")) if s.replies else None
    confidences = json.loads(s.confidences.read_text(encoding="utf-8")) if s.confidences else None
    return FakeLabeler(delay_s=s.delay_ms / 1000, concurrency=s.concurrency, by_name=by_name, confidences=confidences)


BACKEND = registry.Backend(name="fake", tables=TABLES, configure=configure, open=open_labeler, isolate=True)
registry.register(BACKEND.name, BACKEND)
