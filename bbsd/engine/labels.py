"""Labels and the validation of a model's reply into them.

Invariant: a `Labels` value only holds catalog names, without duplicates, strings within
the reply's bounds (below; the prompt states them to the model), and one answer per configured
question of its declared type (yes/no, a listed answer, an integer in range, capped text).
Grammars can be bypassed (a backend without one, a truncated reply), so every reply is parsed and
checked here, whatever produced it.

Text the model writes (caption, scene, visible text, text answers, names) is cleaned of what
XML 1.0 or a photo tool cannot hold (`text.UNSAFE`: controls, lone surrogates, U+FFFE, U+FFFF
and the other non-characters) — removed, not refused, as llama.cpp's grammar lets them through —
and put in NFC, so a name written in NFD (`e` + combining accent) is the catalog's name.

`cut` names the fields bbsd closed or left empty when the reply reached the output cap (the
`"cut"` member the engine writes, `replies.py`); only the reply's own field names are kept.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from bbsd.errors import PhotoError
from bbsd.show.catalog import Catalog
from bbsd.show.questions import Question
from bbsd.text import nfc, strip_unsafe

# The reply's bounds: the prompt asks for them, the grammar enforces them, validation here caps them.
CAPTION_MAX = 200
SCENE_MAX = 80
TEXT_ITEMS_MAX = 5
TEXT_ITEM_MAX = 60


@dataclass(frozen=True)
class Labels:
    characters: tuple[str, ...]
    props: tuple[str, ...]
    caption: str
    scene: str
    visible_text: tuple[str, ...]
    answers: tuple[tuple[str, str | int], ...] = ()  # (question key, answer) in the configured order
    cut: tuple[str, ...] = ()  # fields cut short at the output cap, in the reply's order

    def to_json(self) -> dict[str, Any]:
        """Without questions there is no `answers` key, and without a cut no `cut` key: such sidecars
        keep the shape they always had."""
        doc = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
               if k not in ("answers", "cut")}
        if self.answers:
            doc["answers"] = dict(self.answers)
        if self.cut:
            doc["cut"] = list(self.cut)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Labels:
        return cls(characters=tuple(doc.get("characters", ())), props=tuple(doc.get("props", ())),
                   caption=doc.get("caption", ""), scene=doc.get("scene", ""),
                   visible_text=tuple(doc.get("visible_text", ())),
                   answers=tuple(doc.get("answers", {}).items()), cut=tuple(doc.get("cut", ())))


class InvalidReplyError(PhotoError):
    def __init__(self, problem: str) -> None:
        super().__init__("invalid_reply", f"model reply is not valid: {problem}",
                         "retried once; if this persists, try another model or a larger max_output_tokens")


def parse_reply(text: str, catalog: Catalog, questions: tuple[Question, ...] = ()) -> Labels:
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
        caption=_text(data, "caption", CAPTION_MAX),
        scene=_text(data, "scene", SCENE_MAX),
        visible_text=_texts(data, "visible_text"),
        answers=_answers(data, questions),
        cut=_cut(data),
    )


FIELDS = ("characters", "props", "caption", "scene", "visible_text", "answers")


def _cut(data: dict[str, Any]) -> tuple[str, ...]:
    value = data.get("cut", [])
    return tuple(f for f in FIELDS if isinstance(value, list) and f in value)


def _answers(data: dict[str, Any], questions: tuple[Question, ...]) -> tuple[tuple[str, str | int], ...]:
    if not questions:
        return ()
    given = data.get("answers")
    if not isinstance(given, dict):
        raise InvalidReplyError("'answers' is missing or not an object")
    unknown = [k for k in given if k not in {q.key for q in questions}]
    if unknown:
        raise InvalidReplyError(f"'answers' has {unknown[0]!r}, which is not a configured question")
    return tuple((q.key, _answer(q, given.get(q.key))) for q in questions)


def _answer(q: Question, value: Any) -> str | int:
    """The answer if it is of the question's type, else `InvalidReplyError` naming the question."""
    closed = q.closed_answers()
    if closed is not None and isinstance(value, str) and _tidy(value) in closed:
        return _tidy(value)
    if q.kind == "integer" and isinstance(value, int) and not isinstance(value, bool) and q.low <= value <= q.high:
        return value
    if q.kind == "text" and isinstance(value, str):
        return _clean(value, q.max_length)
    want = {"yes_no": "yes or no", "choice": "one of its listed answers", "text": "a string",
            "integer": f"a whole number from {q.low} to {q.high}"}[q.kind]
    raise InvalidReplyError(f"answer {q.key!r} is {value!r}, not {want}")


def _names(data: dict[str, Any], key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidReplyError(f"'{key}' is missing or not a list of strings")
    names = [_tidy(v) for v in value]
    unknown = [v for v in names if v not in allowed]
    if unknown:
        raise InvalidReplyError(f"'{key}' names {unknown[0]!r}, which is not in the catalog")
    return tuple(dict.fromkeys(names))  # dedupe, keep the model's order


def _tidy(value: str) -> str:
    """NFC, without what XML cannot hold: the form catalog names and listed answers are kept in."""
    return nfc(strip_unsafe(value))


def _clean(value: str, limit: int) -> str:
    return " ".join(_tidy(value).split())[:limit]


def _text(data: dict[str, Any], key: str, limit: int) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise InvalidReplyError(f"'{key}' is missing or not a string")
    return _clean(value, limit)


def _texts(data: dict[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidReplyError(f"'{key}' is missing or not a list of strings")
    cleaned = (_clean(v, TEXT_ITEM_MAX) for v in value)
    return tuple(dict.fromkeys(v for v in cleaned if v))[: TEXT_ITEMS_MAX]
