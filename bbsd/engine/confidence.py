"""Label confidence: how sure the model was of each name it wrote, from its own token probabilities.

Invariant: a name's confidence is the product of the probabilities, under the reply grammar, of
every token the model *sampled* from its choice to write another name (after `[` or the previous
name) through the name's closing quote. Text the schema forced (jump-forward) had no alternative
and counts as 1. The runner-up is the most probable branch off the chosen path (the path's
probability up to a token times an alternative's): another catalog name, or ending the list. At
each list's end, the alternative of one more name is kept too (`missed`). Backends report the
`Step`s; this module only reads them against the reply text, so it is pure and backend-agnostic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from bbsd.text import nfc, strip_unsafe

FIELDS = ("characters", "props")


@dataclass(frozen=True)
class Step:
    """One sampled token: where its text lies in the reply, its probability, the best alternative."""

    start: int  # character offsets of the token's text in the reply
    end: int
    p: float  # probability of the token chosen, among the tokens the grammar allowed (temperature 1)
    alt: str | None  # text of the most probable other allowed token; None if there was none
    alt_p: float = 0.0

    def to_json(self) -> list:
        return [self.start, self.end, round(self.p, 6), self.alt, round(self.alt_p, 6)]

    @classmethod
    def from_json(cls, row: list) -> Step:
        return cls(int(row[0]), int(row[1]), float(row[2]), row[3], float(row[4]))


@dataclass(frozen=True)
class Scored:
    name: str
    confidence: float
    runner_up: str | None  # another name, or None: ending the list (or nothing else) was the alternative
    runner_up_score: float

    def to_json(self) -> dict:
        return {"name": self.name, "confidence": round(self.confidence, 4), "runner_up": self.runner_up,
                "runner_up_score": round(self.runner_up_score, 4)}


def score(text: str, steps: list[Step], names: dict[str, list[str]]) -> dict[str, dict]:
    """Per field: the chosen names with confidence and runner-up, and the strongest name not chosen."""
    out = {}
    for field in FIELDS:
        spans, close = _elements(text, field)
        if spans is None:
            continue
        chosen = [name for name, _, _ in spans]
        scored = [_scored(text, steps, name, start, end, names.get(field, []), chosen) for name, start, end in spans]
        missed = _missed(text, steps, close, names.get(field, []), chosen)
        out[field] = {"names": [s.to_json() for s in scored], "missed": missed}
    return out


def needs_review(scores: dict[str, dict], threshold: float) -> bool:
    """A chosen name below the threshold, or a name not chosen at or above it: the model was on the fence."""
    if threshold <= 0:
        return False
    for field in scores.values():
        if any(n["confidence"] < threshold for n in field["names"]):
            return True
        if field["missed"] and field["missed"]["score"] >= threshold:
            return True
    return False


def _elements(text: str, field: str) -> tuple[list[tuple[str, int, int]] | None, int]:
    """(name, span start, span end) of each element of the `field` list, and the index of its `]`."""
    key = f'"{field}"'
    i = text.find(key)
    if i < 0:
        return None, -1
    i = _skip(text, i + len(key))
    if text[i:i + 1] != ":":
        return None, -1
    i = _skip(text, i + 1)
    if text[i:i + 1] != "[":
        return None, -1
    spans, start, i = [], i + 1, i + 1
    decoder = json.JSONDecoder()
    while True:
        i = _skip(text, i)
        if i >= len(text):
            return None, -1
        if text[i] == "]":
            return spans, i
        if text[i] == ",":
            i += 1
            continue
        try:
            name, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return None, -1
        spans.append((nfc(strip_unsafe(str(name))), start, end))  # the form labels.parse_reply keeps
        start = i = end


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\n\r":
        i += 1
    return i


def _overlapping(steps: list[Step], start: int, end: int) -> list[Step]:
    return [s for s in steps if s.start < end and s.end > start]


def _scored(text: str, steps: list[Step], name: str, start: int, end: int, names: list[str],
            chosen: list[str]) -> Scored:
    """The name's path probability, and the most probable branch off that path (a name, or the list's end)."""
    confidence, runner, runner_p = 1.0, None, 0.0
    for s in _overlapping(steps, start, end):
        if s.alt is not None:
            branch = confidence * s.alt_p  # reaching this token along the chosen path, then turning off
            other = _name_of(text[start:s.start] + s.alt, names, exclude=chosen)
            if branch > runner_p and (other is not None or _ends_list(s.alt)):
                runner, runner_p = other, branch
        confidence *= s.p
    return Scored(name, confidence, runner, runner_p)


def _ends_list(alt: str) -> bool:
    return alt.lstrip(" \t\n\r").startswith("]")


def _missed(text: str, steps: list[Step], close: int, names: list[str], chosen: list[str]) -> dict | None:
    """At the token that ended the list: the alternative of writing one more name, if there was one
    (which name, where the alternative token already says; null where it was only the `,`)."""
    for s in _overlapping(steps, close, close + 1):
        alt = (s.alt or "").lstrip(" \t\n\r")
        if alt.startswith(",") or alt.startswith('"'):
            name = _name_of(text[s.start:close] + s.alt, names, exclude=chosen)
            return {"name": name, "score": round(s.alt_p, 4)}
    return None


def _name_of(typed: str, names: list[str], exclude: list[str]) -> str | None:
    """The first name that `typed` (the element's text so far plus a token) could be the start of."""
    prefix = typed.lstrip(" \t\n\r,")
    if not prefix.startswith('"'):
        return None  # `]`: ending the list was the alternative
    prefix = prefix[1:]
    candidates = [n for n in names if n not in exclude]
    for n in candidates:
        if json.dumps(n, ensure_ascii=False)[1:].startswith(prefix) or n.startswith(prefix):
            return n if prefix or len(candidates) == 1 else None
    return None
