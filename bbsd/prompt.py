"""The prompt and the reply schema, built from the catalog.

Invariant: the reply schema only admits catalog names for characters and props (enums),
and so does the GBNF grammar written beside it (`grammar.py`), which the engine samples under. A change to
the wording or the schema bumps PROMPT_VERSION, which relabels photos on purpose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bbsd import grammar
from bbsd.catalog import Catalog

PROMPT_VERSION = "bbsd.prompt/2"  # 2: an empty catalog list admits only []
CAPTION_MAX = 200
SCENE_MAX = 80
TEXT_ITEMS_MAX = 5
TEXT_ITEM_MAX = 60


@dataclass(frozen=True)
class Prompt:
    """The fixed part of every request: the same for all photos until the catalog changes."""

    version: str
    system: str
    user: str
    schema: dict[str, Any]
    catalog_digest: str
    grammar: str  # GBNF for llama.cpp: the schema's language, with every name escaped by us

    def schema_json(self) -> str:
        # Insertion order is the order the grammar makes the model write the fields in.
        return json.dumps(self.schema)


def build(catalog: Catalog) -> Prompt:
    return Prompt(
        version=PROMPT_VERSION,
        system=_system_text(catalog),
        user="Label this photo from the show. Reply with the JSON object only.",
        schema=reply_schema(catalog),
        catalog_digest=catalog.digest(),
        grammar=grammar.reply_grammar(catalog, CAPTION_MAX, SCENE_MAX, TEXT_ITEMS_MAX, TEXT_ITEM_MAX),
    )


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


def reply_schema(catalog: Catalog) -> dict[str, Any]:
    """JSON Schema of the model's reply (backends without GBNF use it; the grammar says the same)."""
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
