"""`fake` backend: deterministic replies without a model, for fast pipeline tests.

Never chosen implicitly: it must be named in the configuration, and the daemon logs
`engine.fake` at start so nobody mistakes its labels for real ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable

from PIL import Image

from bbsd.labeler import Inference, ModelInfo
from bbsd.prompt import Prompt


class FakeLabeler:
    """Replies with the first catalog names and a caption naming the image size.

    `replies` scripts raw reply texts in order (then falls back to the default),
    which lets tests feed invalid replies through the real validation path.
    """

    def __init__(self, replies: Iterable[str] = (), delay_s: float = 0.0) -> None:
        self.info = ModelInfo(backend="fake", file="fake", mmproj=None)
        self._replies = list(replies)
        self._delay_s = delay_s
        self.calls = 0

    def infer(self, image: Image.Image, prompt: Prompt, *, attempt: int,
              cancelled: Callable[[], bool]) -> Inference:
        self.calls += 1
        time.sleep(self._delay_s)
        text = self._replies.pop(0) if self._replies else self._default(image, prompt)
        return Inference(text=text, prompt_tokens=0, output_tokens=len(text), encode_ms=0.0, generate_ms=0.0)

    @staticmethod
    def _default(image: Image.Image, prompt: Prompt) -> str:
        props = prompt.schema["properties"]
        first = [p.get("items", {}).get("enum", [])[:1] for p in (props["characters"], props["props"])]
        return json.dumps({
            "characters": first[0], "props": first[1],
            "caption": f"fake label of a {image.width}x{image.height} image",
            "scene": "test", "visible_text": [],
        })

    def close(self) -> None:
        pass


def open_labeler(settings) -> FakeLabeler:
    return FakeLabeler()
