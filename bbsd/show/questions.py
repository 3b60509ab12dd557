"""The show's own questions (`[[questions]]`): typed answer fields the model fills in for every photo.

Invariant: a `Question` is valid when it exists — a stable key safe as a JSON key and an XMP
property name, a keyword label and closed answers that survive as single keyword levels (no `|`
or `/`, no control characters), and bounds small enough that the grammar lists every answer.
Their digest joins the prompt's identity, so changing a question relabels on purpose. Texts
are kept in Unicode NFC (a model's answer is compared in NFC too) and hold nothing an XMP
sidecar cannot (`text.UNSAFE`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bbsd.show.catalog import Fail, check_keyword, check_text
from bbsd.text import nfc

YES_NO = ("yes", "no")
KINDS = ("yes_no", "choice", "integer", "text")
MAX_QUESTIONS = 16  # each one costs output tokens on every photo (docs/producer/questions.md)
KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Catalog branches share the keyword root: a question labelled like one would mix into it.
RESERVED_LABELS = ("characters", "props")

# Every field of a [[questions]] entry: (what it is for, which types take it). Bounds are checked below.
FIELDS = {
    "key": ("stable name: the JSON key and XMP property; [a-z][a-z0-9_], at most 32", KINDS),
    "question": ("the text the model is asked, at most 300 characters", KINDS),
    "type": ("yes_no | choice | integer | text", KINDS),
    "label": ("keyword level in the XMP (default: the key, capitalised, _ as spaces), at most 40", KINDS),
    "choices": ("choice: 2 to 20 answers, each at most 40 characters, unique ignoring case", ("choice",)),
    "min": ("integer: smallest answer, 0 to 1000", ("integer",)),
    "max": ("integer: largest answer, at most 100 above min", ("integer",)),
    "max_length": ("text: answer length cap in characters, 1 to 200 (default 40)", ("text",)),
}


@dataclass(frozen=True)
class Question:
    key: str
    text: str
    kind: str  # one of KINDS
    label: str
    choices: tuple[str, ...] = ()  # choice
    low: int = 0  # integer
    high: int = 0
    max_length: int = 0  # text

    def closed_answers(self) -> tuple[str, ...] | None:
        """The only answers a yes/no or closed-list question has; None for integer and text.

        This is the hook for `bbsd eval`: accuracy per key against the truth manifest, and a
        confusion matrix over these answers where they exist.
        """
        return YES_NO if self.kind == "yes_no" else self.choices if self.kind == "choice" else None

    def instruction(self) -> str:
        """How the system text asks it: the question, then the form of the answer."""
        form = {
            "yes_no": "Answer yes or no.",
            "choice": "Answer one of: " + ", ".join(self.choices) + ".",
            "integer": f"Answer a whole number from {self.low} to {self.high}.",
            "text": f"Answer in at most {self.max_length} characters.",
        }[self.kind]
        return f"- {self.key}: {self.text} {form}"


def digest(questions: tuple[Question, ...]) -> str:
    """sha256 of everything that shapes the prompt or the keywords; "" when there are none."""
    if not questions:
        return ""
    return hashlib.sha256(json.dumps([asdict(q) for q in questions], ensure_ascii=False).encode()).hexdigest()




def parse(body: Any, fail: Fail) -> tuple[Question, ...]:
    """Validate the `[[questions]]` array; raise the first problem as one line naming the entry."""
    if not isinstance(body, list):
        raise fail("questions", "must be an array of tables", "write each entry as [[questions]]")
    if len(body) > MAX_QUESTIONS:
        raise fail("questions", f"has {len(body)} entries, more than {MAX_QUESTIONS}",
                   "every question costs output tokens on every photo: keep the ones editors filter on")
    out = tuple(_entry(item, f"questions[{i}]", fail) for i, item in enumerate(body))
    _unique(out, "key", lambda q: q.key, fail)
    _unique(out, "label", lambda q: q.label.casefold(), fail)
    return out


def _unique(questions: tuple[Question, ...], field: str, of: Callable[[Question], str], fail: Fail) -> None:
    seen: dict[str, int] = {}
    for i, q in enumerate(questions):
        first = seen.setdefault(of(q), i)
        if first != i:
            raise fail(f"questions[{i}].{field}", f"repeats questions[{first}].{field} {of(q)!r}",
                       f"give every question its own {field}")


def _entry(item: Any, where: str, fail: Fail) -> Question:
    if not isinstance(item, dict):
        raise fail(where, "must be a table", "write it as [[questions]] with key, question and type")
    kind = _text(item, "type", where, fail, 20)
    if kind not in KINDS:
        raise fail(f"{where}.type", f"is {kind!r}", f"use one of: {', '.join(KINDS)}")
    for name in item:
        if name not in FIELDS or kind not in FIELDS[name][1]:
            takes = [f for f, (_, kinds) in FIELDS.items() if kind in kinds]
            raise fail(f"{where}.{name}", f"is not a key of a {kind} question", f"known: {', '.join(takes)}")
    key = _text(item, "key", where, fail, 32)
    if not KEY.fullmatch(key):
        raise fail(f"{where}.key", f"{key!r} is not a stable key",
                   "use lower-case letters, digits and _, starting with a letter (e.g. puppeteer_visible)")
    label = _text(item, "label", where, fail, 40, default=key.replace("_", " ").capitalize())
    check_keyword(label, f"{where}.label", fail)
    if label.casefold() in RESERVED_LABELS:
        raise fail(f"{where}.label", f"{label!r} is the catalog's keyword branch", "give the question its own label")
    return Question(key=key, text=_text(item, "question", where, fail, 300), kind=kind, label=label,
                    **_shape(item, kind, where, fail))


def _shape(item: dict, kind: str, where: str, fail: Fail) -> dict[str, Any]:
    """The type's own fields: the closed list, the integer range or the text cap."""
    if kind == "choice":
        return {"choices": _choices(item.get("choices"), f"{where}.choices", fail)}
    if kind == "integer":
        low = _int(item, "min", where, fail, 0, 1000, None)
        high = _int(item, "max", where, fail, low + 1, low + 100, None)
        return {"low": low, "high": high}
    if kind == "text":
        return {"max_length": _int(item, "max_length", where, fail, 1, 200, 40)}
    return {}


def _choices(value: Any, where: str, fail: Fail) -> tuple[str, ...]:
    if not isinstance(value, list) or not 2 <= len(value) <= 20:
        raise fail(where, "must be a list of 2 to 20 answers", FIELDS["choices"][0])
    out: list[str] = []
    for i, answer in enumerate(value):
        if not isinstance(answer, str) or not answer.strip() or len(answer.strip()) > 40:
            raise fail(f"{where}[{i}]", f"{answer!r} is not a non-empty string of at most 40 characters",
                       FIELDS["choices"][0])
        check_keyword(answer.strip(), f"{where}[{i}]", fail)
        answer = nfc(answer.strip())
        if answer.casefold() in (a.casefold() for a in out):
            raise fail(f"{where}[{i}]", f"{answer!r} is listed twice (compared in Unicode NFC, ignoring case)",
                       "list every answer once")
        out.append(answer)
    return tuple(out)


def _text(item: dict, name: str, where: str, fail: Fail, limit: int, default: str | None = None) -> str:
    value = item.get(name, default)
    if value is None:
        raise fail(f"{where}.{name}", "is required", FIELDS[name][0])
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > limit:
        raise fail(f"{where}.{name}", f"must be a non-empty string of at most {limit} characters, got {value!r}",
                   FIELDS[name][0])
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise fail(f"{where}.{name}", "contains a control character", "write it on one line")
    check_text(value, f"{where}.{name}", fail)
    return nfc(value.strip())


def _int(item: dict, name: str, where: str, fail: Fail, low: int, high: int, default: int | None) -> int:
    value = item.get(name, default)
    if value is None:
        raise fail(f"{where}.{name}", "is required", FIELDS[name][0])
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise fail(f"{where}.{name}", f"is {value!r}, not a whole number from {low} to {high}", FIELDS[name][0])
    return value
