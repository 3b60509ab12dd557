"""Labels and the validation of a model's reply into them.

Invariant: a `Labels` value only holds catalog names, without duplicates, and strings
within the prompt's bounds. Grammars can be bypassed (a backend without one, a
truncated reply), so every reply is parsed and checked here, whatever produced it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from bbsd import prompt as prompt_mod
from bbsd.catalog import Catalog
from bbsd.errors import PhotoError


@dataclass(frozen=True)
class Labels:
    characters: tuple[str, ...]
    props: tuple[str, ...]
    caption: str
    scene: str
    visible_text: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Labels:
        return cls(characters=tuple(doc.get("characters", ())), props=tuple(doc.get("props", ())),
                   caption=doc.get("caption", ""), scene=doc.get("scene", ""),
                   visible_text=tuple(doc.get("visible_text", ())))


class InvalidReplyError(PhotoError):
    def __init__(self, problem: str) -> None:
        super().__init__("invalid_reply", f"model reply is not valid: {problem}",
                         "retried once; if this persists, try another model or a larger max_output_tokens")


def parse_reply(text: str, catalog: Catalog) -> Labels:
    """Parse the raw reply text; raise `InvalidReplyError` naming the first problem."""
    try:
        # strict=False: llama.cpp's JSON grammar admits raw control characters inside strings;
        # they are removed below rather than failing an otherwise good reply.
        data = json.loads(text, strict=False)
    except json.JSONDecodeError as e:
        raise InvalidReplyError(f"not JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(data, dict):
        raise InvalidReplyError("not a JSON object")
    return Labels(
        characters=_names(data, "characters", catalog.character_names()),
        props=_names(data, "props", catalog.prop_names()),
        caption=_text(data, "caption", prompt_mod.CAPTION_MAX),
        scene=_text(data, "scene", prompt_mod.SCENE_MAX),
        visible_text=_texts(data, "visible_text"),
    )


def _names(data: dict[str, Any], key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    value = data.get(key)
    if not isinstance(value, list):
        raise InvalidReplyError(f"'{key}' is missing or not a list")
    unknown = [v for v in value if v not in allowed]
    if unknown:
        raise InvalidReplyError(f"'{key}' names {unknown[0]!r}, which is not in the catalog")
    return tuple(dict.fromkeys(value))  # dedupe, keep the model's order


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _clean(value: str, limit: int) -> str:
    return " ".join(_CONTROL.sub("", value).split())[:limit]


def _text(data: dict[str, Any], key: str, limit: int) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise InvalidReplyError(f"'{key}' is missing or not a string")
    return _clean(value, limit)


def _texts(data: dict[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidReplyError(f"'{key}' is missing or not a list of strings")
    cleaned = (_clean(v, prompt_mod.TEXT_ITEM_MAX) for v in value)
    return tuple(dict.fromkeys(v for v in cleaned if v))[: prompt_mod.TEXT_ITEMS_MAX]
