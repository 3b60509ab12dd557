"""What text bbsd's outputs can hold: XML 1.0 (the XMP sidecar) and a terminal (the console, `bbsd status`).

Invariants: `UNSAFE` matches every code point that XML 1.0 cannot hold or that no photo tool
should get as text — C0 controls other than tab, LF and CR, DEL and the C1 controls, lone
surrogates (a file name Python read as invalid UTF-8), and the Unicode non-characters
(U+FDD0–U+FDEF and U+nFFFE/U+nFFFF in every plane). Model output is cleaned of them with
`strip_unsafe`; configuration that holds one is refused (`first_unsafe` names it). `printable`
shows any string on a terminal with control and bidirectional-override characters escaped as
text (`\\x1b`): file names, server error bodies and model output reach the console, and an
escape sequence in them must be read, not obeyed. Names are compared in NFC (`nfc`): the
same letters typed on macOS (NFD) and Linux (NFC) are one name.
"""

from __future__ import annotations

import re
import unicodedata

# U+nFFFE and U+nFFFF in each of the 17 planes, written as ranges for a regex character class.
_PLANE_ENDS = "".join(f"{chr(p * 0x10000 + 0xFFFE)}-{chr(p * 0x10000 + 0xFFFF)}" for p in range(17))
_NONCHARACTERS = "\ufdd0-\ufdef" + _PLANE_ENDS
UNSAFE = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff{_NONCHARACTERS}]")
# What a terminal acts on or shows misleadingly: every control (tab and line breaks too: one
# record is one line), lone surrogates, non-characters, and the bidi marks and overrides that
# can make a file name read backwards ("Trojan source").
_TERMINAL = re.compile(f"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff{_NONCHARACTERS}]")


def strip_unsafe(value: str) -> str:
    """`value` without the characters XML 1.0 or a photo tool cannot hold (tab, LF and CR stay)."""
    return UNSAFE.sub("", value)


def first_unsafe(value: str) -> str | None:
    """The first character of `value` that `strip_unsafe` would remove, or None."""
    found = UNSAFE.search(value)
    return found.group() if found else None


def describe(ch: str) -> str:
    """`U+FFFF (a Unicode non-character)`: a refused character named for a person."""
    code = ord(ch)
    kind = ("a lone surrogate" if 0xD800 <= code <= 0xDFFF else
            "a Unicode non-character" if UNSAFE.match(ch) and unicodedata.category(ch) != "Cc" else
            "a control character")
    return f"U+{code:04X} ({kind})"


def nfc(value: str) -> str:
    """Unicode NFC: the composed form every name is kept and compared in."""
    return unicodedata.normalize("NFC", value)


def printable(value: str, keep: str = "") -> str:
    """`value` safe to print on a terminal: controls shown as escapes (`\\x1b`, `\\u202e`, `\\udcff`).

    Characters in `keep` pass (a traceback keeps its line breaks)."""
    return _TERMINAL.sub(lambda m: m.group() if m.group() in keep else _escape(m.group()), value)


def _escape(ch: str) -> str:
    return ch.encode("unicode_escape").decode("ascii")
