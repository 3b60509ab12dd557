"""The GBNF grammar that constrains the model's reply, written by us from the catalog.

Invariant: every catalog name appears in the grammar as one GBNF string literal of its JSON
encoding, escaped character by character (quotes, backslashes, anything outside printable
ASCII), so no name can end a literal early. llama-cpp-python's `json_schema_to_gbnf` did not
escape the JSON escapes it wrote (`"Mr. \\"Moon\\""`): the grammar failed to parse and
llama.cpp's sampler crashed on every photo. The language is the one that converter produced
for our reply schema, so valid replies are unchanged.
"""

from __future__ import annotations

import json

from bbsd.show.catalog import Catalog
from bbsd.show.questions import Question

# A JSON string character, as llama.cpp's own JSON grammar writes it.
CHAR = r'char ::= [^"\\] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
SPACE = 'space ::= " "?'


def literal(text: str) -> str:
    """`text` as a GBNF string literal that matches exactly these characters."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04X}")
        else:
            out.append(f"\\U{code:08X}")
    return '"' + "".join(out) + '"'


def _key(name: str) -> str:
    return literal(json.dumps(name)) + " space"


def _array(rule: str, item: str | None, max_items: int) -> list[str]:
    """`rule` is a JSON array of at most `max_items` `item`s (an empty array when item is None)."""
    if item is None or max_items == 0:
        return [f'{rule} ::= "[" space "]" space']
    body = f'{rule}-item ("," space {rule}-item){{0,{max_items - 1}}}' if max_items > 1 else f"{rule}-item"
    return [f'{rule} ::= "[" space ({body})? "]" space', f"{rule}-item ::= {item}"]


def _string(rule: str, max_length: int) -> str:
    return f'{rule} ::= "\\"" char{{0,{max_length}}} "\\"" space'


def _names(names: tuple[str, ...]) -> str | None:
    if not names:
        return None
    return " | ".join(literal(json.dumps(n, ensure_ascii=False)) for n in names)


def _answer(q: Question) -> str:
    """One answer's value: only the declared yes/no or list answers, integers of the range, capped text."""
    if q.kind == "integer":  # every number listed: the range is small (at most 101 values)
        return "(" + " | ".join(f'"{n}"' for n in range(q.low, q.high + 1)) + ") space"
    if q.kind == "text":
        return f'"\\"" char{{0,{q.max_length}}} "\\"" space'
    return "(" + " | ".join(literal(json.dumps(a, ensure_ascii=False)) for a in q.closed_answers() or ()) + ") space"


def _answers(questions: tuple[Question, ...]) -> list[str]:
    """The `answers` object: every question's key, in the configured order, each with its typed value."""
    kvs = ' "," space '.join(f"answer-{i}-kv" for i in range(len(questions)))
    rules = [f'answers ::= "{{" space {kvs} "}}" space']
    for i, q in enumerate(questions):
        rules += [f'answer-{i}-kv ::= {_key(q.key)} ":" space answer-{i}', f"answer-{i} ::= {_answer(q)}"]
    return rules


def reply_grammar(catalog: Catalog, caption_max: int, scene_max: int, items_max: int, item_max: int,
                  questions: tuple[Question, ...] = ()) -> str:
    """The reply object in the schema's field order: characters, props, caption, scene, visible_text[, answers]."""
    fields = ("characters", "props", "caption", "scene", "visible_text", *(("answers",) if questions else ()))
    root = ' "," space '.join(f"{f.replace('_', '-')}-kv" for f in fields)
    rules = [
        f'root ::= "{{" space {root} "}}" space',
        *[f'{f.replace("_", "-")}-kv ::= {_key(f)} ":" space {f.replace("_", "-")}' for f in fields],
        *_array("characters", _names(catalog.character_names()), len(catalog.characters)),
        *_array("props", _names(catalog.prop_names()), len(catalog.props)),
        _string("caption", caption_max),
        _string("scene", scene_max),
        *_array("visible-text", f'"\\"" char{{0,{item_max}}} "\\"" space', items_max),
        *(_answers(questions) if questions else ()),
        CHAR,
        SPACE,
    ]
    return "\n".join(rules) + "\n"
