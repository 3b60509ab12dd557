"""Jump-forward decoding: what the reply schema fixes is appended as text, not sampled token by token.

Invariants: `Cursor.forced(text)` returns only text that every schema-valid continuation of
`text` must start with — keys and punctuation, the rest of an enum name once its start is
unambiguous, the closing bracket of a full list or quote of a full string — written without the
optional whitespace the grammar also allows. Where the model has a real choice it returns "".
If the model's text is not what this cursor understands, it returns None and the caller samples
as usual (the grammar sampler stays the judge of every token, forced or sampled).

`Cursor.closing(text)` is the shortest text that makes `text` a complete reply (the open string,
list and object closed, the fields not yet written left empty), for a reply about to reach the
output cap: it never invents a value that cannot be empty (an answer, a name with several
candidates left): it stops there (`complete` false) and the model chooses; and it says which of
the reply's fields it cut.

Understood schema shapes (what `prompt.reply_schema` produces): objects with all properties
required in a fixed order and no others; arrays with `maxItems` of enum strings or of strings;
strings with `maxLength`; enums of strings without escapes; integers with `minimum` and `maximum`
(the answers to integer questions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Forced:
    text: str
    complete: bool  # the whole reply is written: stop generating


@dataclass(frozen=True)
class Closing:
    text: str
    cut: tuple[str, ...]  # the reply's fields (top-level keys) closed early or left empty, in order
    complete: bool = True  # False: `text` stops where the model must choose a value (an answer)


def longest(schema: dict[str, Any]) -> int:
    """Characters of the longest reply the schema (and so the grammar) allows, written compactly with one
    character per string character: at about a token a character, the output budget that never cuts a reply."""
    return len(widest(schema))


def widest(schema: dict[str, Any], empty: bool = False) -> str:
    """The longest reply the schema allows, written compactly (strings of `x`). `empty`: with every string
    and list empty, only what the model must choose at its longest (what follows a closing)."""
    if "enum" in schema:
        return max((json.dumps(str(v), ensure_ascii=False) for v in schema["enum"]), key=len, default='""')
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {}).items()
        return "{" + ",".join(f"{json.dumps(k)}:{widest(v, empty)}" for k, v in props) + "}"
    if kind == "array":
        return "[" + ",".join([widest(schema.get("items", {}))] * (0 if empty else schema.get("maxItems", 0))) + "]"
    if kind == "string":
        return '"' + "x" * (0 if empty else schema.get("maxLength", 0)) + '"'
    if kind == "integer":
        return max(str(schema.get("minimum", 0)), str(schema.get("maximum", 0)), key=len)
    return ""


class _Forced(Exception):  # noqa: N818 - control flow, not an error
    def __init__(self, text: str, open_string: tuple[int, int] | None = None) -> None:
        self.text = text
        self.open_string = open_string  # (characters written, maxLength) when the text ends inside a free string


class _Mismatch(Exception):
    pass


class Cursor:
    """One reply's cursor: call `forced` with the reply so far, which only ever grows."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self._schema = schema
        self._open: tuple[str, int, int] | None = None  # (text, characters, maxLength) inside a free string

    def forced(self, text: str) -> Forced | None:
        """The text that must come next after `text` (possibly ""), or None when `text` is not understood."""
        if self._still_open(text):
            return Forced("", complete=False)
        out = ""
        while True:
            try:
                _Parser(text + out).value(self._schema)
                return Forced(out, complete=True)
            except _Forced as f:
                if not f.text:
                    if not out and f.open_string is not None:
                        self._open = (text, *f.open_string)
                    return Forced(out, complete=False)
                out += f.text
            except _Mismatch:
                return None if not out else Forced(out, complete=False)

    def closing(self, text: str) -> Closing | None:
        """What closes `text` into a schema-valid reply, up to the next value the model must choose
        (then `complete` is false); None when `text` is not understood."""
        parser = _Parser(text, close=True)
        try:
            parser.value(self._schema)
            complete = True
        except _Forced:  # in closing, only a value the model must choose stops the parser
            complete = False
        except _Mismatch:
            return None
        keys = list(self._schema.get("properties", {}))
        cut = tuple(keys[keys.index(parser.cut_from):]) if parser.cut_from in keys else ()
        return Closing(parser.text[len(text):], cut, complete)

    def reserve(self) -> str:
        """The answers the model must still choose after a closing, at their longest (each closed answer
        and integer with its key; text answers may be left empty); "" without questions."""
        answers = self._schema.get("properties", {}).get("answers")
        return widest(answers, empty=True) if answers else ""

    def _still_open(self, text: str) -> bool:
        """Whether `text` only added plain characters to the free string it ended in last time, below its
        maxLength: then nothing is forced, and the reply is not parsed again (that costs its whole length
        on every token, and a caption is most of a reply)."""
        if self._open is None:
            return False
        before, chars, limit = self._open
        self._open = None
        new = text[len(before):]
        if not text.startswith(before) or '"' in new or "\\" in new or chars + len(new) >= limit:
            return False
        self._open = (text, chars + len(new), limit)
        return True


class _Parser:
    """Reads a partial reply against the schema; raises `_Forced` where the text ends, or with
    `close` appends what closes each open value there (`Cursor.closing`)."""

    def __init__(self, text: str, close: bool = False) -> None:
        self.text, self.i, self.close = text, 0, close
        self.depth = 0  # objects open: the reply's own fields are those at depth 1
        self.key: str | None = None  # the reply's field being read
        self.cut_from: str | None = None  # the first field `close` appended to

    def _end(self) -> bool:
        return self.i >= len(self.text)

    def _append(self, text: str, cut: bool = True) -> None:
        """Append closing text; `cut`: it ends a value early (not a full list or string's end)."""
        self.text += text
        if cut and self.cut_from is None:
            self.cut_from = self.key

    def _space(self) -> None:
        while self.i < len(self.text) and self.text[self.i] in " \t\n":
            self.i += 1

    def _peek(self) -> str | None:
        self._space()
        return self.text[self.i] if self.i < len(self.text) else None

    def _lit(self, lit: str, cut: bool = True) -> None:
        self._space()
        for k, ch in enumerate(lit):
            if self._end():
                if not self.close:
                    raise _Forced(lit[k:])
                self._append(lit[k:], cut)
            if self.text[self.i] != ch:
                raise _Mismatch
            self.i += 1

    def value(self, schema: dict[str, Any]) -> None:
        if "enum" in schema:
            return self._enum([str(v) for v in schema["enum"]])
        kind = schema.get("type")
        if kind == "object":
            return self._object(schema)
        if kind == "array":
            return self._array(schema)
        if kind == "string":
            return self._string(schema.get("maxLength"))
        if kind == "integer" and "minimum" in schema and "maximum" in schema:
            return self._integer([str(n) for n in range(schema["minimum"], schema["maximum"] + 1)])
        raise _Mismatch

    def _object(self, schema: dict[str, Any]) -> None:
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is not False or set(schema.get("required", ())) != set(props):
            raise _Mismatch  # optional or extra keys: the order of keys is not fixed
        self._lit("{")
        self.depth += 1
        for n, (key, sub) in enumerate(props.items()):
            if self.depth == 1:
                self.key = key
            self._lit(("," if n else "") + f'"{key}":')
            self.value(sub)
        self.depth -= 1
        self._lit("}", cut=False)  # a field left out was cut where its key was written

    def _array(self, schema: dict[str, Any]) -> None:
        limit = schema.get("maxItems")
        self._lit("[")
        n = 0
        while True:
            if limit is not None and n >= limit:
                return self._lit("]", cut=False)
            nxt = self._peek()
            if nxt is None and self.close:
                self._append("]")
                continue
            if nxt is None:
                raise _Forced("")  # another item or the end: the model chooses
            if nxt == "]":
                return self._lit("]")
            if n:
                self._lit(",")
            self.value(schema.get("items", {}))
            n += 1

    def _enum(self, names: list[str]) -> None:
        if any('"' in v or "\\" in v for v in names):
            raise _Mismatch  # escaped names: leave them to the sampler
        self._lit('"')
        start = self.i
        while True:
            typed = self.text[start:self.i]
            left = [v for v in names if v.startswith(typed)]
            if not left:
                raise _Mismatch
            if self._end() and self.close and (typed in names or len(left) == 1):
                # the one name left is the model's choice, complete; a name that others extend is cut short
                self._append(left[0][len(typed):] + '"' if len(left) == 1 else '"', cut=len(left) > 1)
            if self._end():
                raise _Forced(left[0][len(typed):] + '"' if len(left) == 1 else "")
            if self.text[self.i] == '"' and typed in names:
                self.i += 1
                return
            self.i += 1

    def _integer(self, numbers: list[str]) -> None:
        """Digits of one of `numbers`; the rest is forced only when no other number fits (`1` of 0..12 is not)."""
        self._space()
        start = self.i
        while self.i < len(self.text) and self.text[self.i].isdigit():
            self.i += 1
        typed = self.text[start:self.i]
        left = [n for n in numbers if n.startswith(typed)]
        if not left:
            raise _Mismatch
        if self.i >= len(self.text):
            if typed in numbers and (len(left) == 1 or self.close):
                return  # complete: what follows the number is forced too
            raise _Forced(left[0][len(typed):] if len(left) == 1 else "")
        if typed not in numbers:
            raise _Mismatch

    def _string(self, max_len: int | None) -> None:
        self._lit('"')
        chars = 0
        while True:
            if max_len is not None and chars >= max_len:
                return self._lit('"', cut=False)
            if self._end() and self.close:
                self._append('"')
            if self._end():
                raise _Forced("", (chars, max_len) if max_len is not None else None)
            ch = self.text[self.i]
            if ch == '"':
                self.i += 1
                return
            step = 2 if ch == "\\" and self.text[self.i + 1:self.i + 2] != "u" else 6 if ch == "\\" else 1
            if self.close and self.i + step > len(self.text):  # an escape cut short: completed, never dropped
                self._append("\\" if step == 2 else "0" * (self.i + step - len(self.text)))
            self.i += step
            chars += 1
