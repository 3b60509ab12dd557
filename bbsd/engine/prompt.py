"""The prompt and the reply schema, built from the catalog and the show's questions.

Invariant: the reply schema only admits catalog names for characters and props (enums), and
for each question only its type's answers; so does the GBNF grammar written beside it
(`grammar.py`), which the engine samples under. A change to the wording or the schema bumps
PROMPT_VERSION, which relabels photos on purpose; the catalog's and the questions' digests
relabel when the configuration changes them. Without questions, prompt and schema are exactly
those of bbsd.prompt/2, so adding the feature relabels nothing; the same holds for reference
photos (`references`): the gallery shown before the photo has its own digest, empty when none is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bbsd.engine import grammar
from bbsd.engine.labels import CAPTION_MAX, SCENE_MAX, TEXT_ITEM_MAX, TEXT_ITEMS_MAX
from bbsd.show import questions as questions_mod
from bbsd.show import references as references_mod
from bbsd.show.catalog import Catalog
from bbsd.show.questions import Question

PROMPT_VERSION = "bbsd.prompt/2"  # 2: an empty catalog list admits only []


@dataclass(frozen=True)
class Prompt:
    """The fixed part of every request: the same for all photos until the catalog changes."""

    version: str
    system: str
    user: str
    schema: dict[str, Any]
    catalog_digest: str
    grammar: str  # GBNF for llama.cpp: the schema's language, with every name escaped by us
    questions_digest: str = ""  # "" without [[questions]]: the identity of bbsd.prompt/2 stays unchanged
    # The reference photos shown before the photo (`references.gallery`), and their identity ("" when none are).
    references: tuple[references_mod.Item, ...] = ()
    references_digest: str = ""

    def schema_json(self) -> str:
        # Insertion order is the order the grammar makes the model write the fields in.
        return json.dumps(self.schema)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Prompt:
        """The prompt back from `dataclasses.asdict` sent as JSON (the engine worker's requests)."""
        items = tuple(references_mod.Item(**item) for item in doc.get("references", ()))
        return cls(**{**doc, "references": items})


def for_settings(settings) -> Prompt:
    """The prompt a configuration asks: its catalog, its questions, its reference strategy."""
    return build(settings.catalog, settings.questions, settings.prompt.references)


def build(catalog: Catalog, questions: tuple[Question, ...] = (), references: str = "gallery") -> Prompt:
    """`references` is the strategy (`references.STRATEGIES`): gallery shows the catalog's reference photos."""
    shown = references_mod.gallery(catalog, references)
    return Prompt(
        version=PROMPT_VERSION,
        system=_system_text(catalog) + _questions_text(questions),
        user="Label this photo from the show. Reply with the JSON object only.",
        schema=reply_schema(catalog, questions),
        catalog_digest=catalog.digest(),
        grammar=grammar.reply_grammar(catalog, CAPTION_MAX, SCENE_MAX, TEXT_ITEMS_MAX, TEXT_ITEM_MAX, questions),
        questions_digest=questions_mod.digest(questions),
        references=shown,
        references_digest=references_mod.digest(shown, references),
    )


def _questions_text(questions: tuple[Question, ...]) -> str:
    if not questions:
        return ""
    return "\n".join(["", "", "answers: answer each question about this photo.", *(q.instruction() for q in questions)])


def _system_text(catalog: Catalog) -> str:
    lines = [
        "You label backstage and performance photos of the Balanced Blended Space puppet show.",
        "Name only the characters (puppets) and props listed below that are clearly visible.",
        "",
        "Characters:",
        *[f"- {e.name}: {e.description}" for e in catalog.characters],
        "",
        "Props:",
        *[f"- {e.name}: {e.description}" for e in catalog.props],
        "",
        f"caption: one sentence, at most {CAPTION_MAX} characters. "
        f"scene: a few words for the setting. visible_text: text readable in the photo, if any.",
    ]
    return "\n".join(lines)


def _names(names: tuple[str, ...]) -> dict[str, Any]:
    if not names:  # `items` is needed: without it the grammar converter ignores maxItems
        return {"type": "array", "items": {"type": "string"}, "maxItems": 0}
    return {"type": "array", "items": {"enum": list(names)}, "maxItems": len(names)}


def answer_schema(q: Question) -> dict[str, Any]:
    """One question's answer, typed as declared (the grammar writes the same language)."""
    if q.kind == "integer":
        return {"type": "integer", "minimum": q.low, "maximum": q.high}
    if q.kind == "text":
        return {"type": "string", "maxLength": q.max_length}
    return {"enum": list(q.closed_answers() or ())}


def reply_schema(catalog: Catalog, questions: tuple[Question, ...] = ()) -> dict[str, Any]:
    """JSON Schema of the model's reply (backends without GBNF use it; the grammar says the same)."""
    schema = _labels_schema(catalog)
    if questions:  # after the labels: the model has described the photo before it answers about it
        schema["properties"]["answers"] = {
            "type": "object",
            "properties": {q.key: answer_schema(q) for q in questions},
            "required": [q.key for q in questions],
            "additionalProperties": False,
        }
        schema["required"].append("answers")
    return schema


def _labels_schema(catalog: Catalog) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "characters": _names(catalog.character_names()),
            "props": _names(catalog.prop_names()),
            "caption": {"type": "string", "maxLength": CAPTION_MAX},
            "scene": {"type": "string", "maxLength": SCENE_MAX},
            "visible_text": {
                "type": "array",
                "items": {"type": "string", "maxLength": TEXT_ITEM_MAX},
                "maxItems": TEXT_ITEMS_MAX,
            },
        },
        "required": ["characters", "props", "caption", "scene", "visible_text"],
        "additionalProperties": False,
    }
