"""The show's catalog: the puppets (characters) and props a label may name.

Invariant: a label only ever contains names from this catalog, and every name (like every
keyword level a question adds) survives as one keyword in the photo tools; its digest
identifies the catalog a sidecar was made with, so a catalog change relabels. An entry's
reference photos are checked and hashed here (read, never parsed: the daemon decodes no image);
they stay out of `digest`, so a catalog without references keeps its digest — the prompt's
references digest (`references.digest`) identifies what is shown of them.

Names and descriptions are kept in Unicode NFC, and two names that are one name in NFC
(`éclair` typed composed and with a combining accent) or ignoring case are refused; no text
holds what XML 1.0 or a photo tool cannot (`text.UNSAFE`: controls, lone surrogates, U+FFFE,
U+FFFF and the other non-characters), as it would end in every labelled photo's XMP.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbsd import formats
from bbsd.fingerprint import file_sha256
from bbsd.text import describe, first_unsafe, nfc

SECTIONS = ("characters", "props")
Fail = Callable[[str, str, str], Exception]  # config.Validator.fail: (key, problem, hint) -> ConfigError
# What a reference photo may be: formats the contained decoders read, RAW aside (export a JPEG of it).
REFERENCES_PER_ENTRY = 4  # each reference costs an image's tokens in the prompt (evaluated once, kept cached)
REFERENCES_TOTAL = 16
REFERENCE_CAPTION_MAX = 120
REFERENCE_MAX_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Reference:
    """A reference photo of an entry: the file (resolved), its caption and its content's sha256."""

    file: Path
    caption: str
    sha256: str


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str = ""
    references: tuple[Reference, ...] = ()


@dataclass(frozen=True)
class Catalog:
    characters: tuple[CatalogEntry, ...] = ()
    props: tuple[CatalogEntry, ...] = ()

    def character_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.characters)

    def prop_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.props)

    def digest(self) -> str:
        """Stable sha256 of the names and descriptions (order matters: it is the prompt's order).

        Reference photos are not in it: what the prompt shows of them has its own digest."""
        data = {
            "characters": [[e.name, e.description] for e in self.characters],
            "props": [[e.name, e.description] for e in self.props],
        }
        return hashlib.sha256(json.dumps(data, ensure_ascii=False).encode()).hexdigest()

    def reference_count(self) -> int:
        return sum(len(e.references) for e in (*self.characters, *self.props))


def parse(raw: dict[str, Any], fail: Fail, base: Path = Path(".")) -> Catalog:
    """Validate `[[characters]]` and `[[props]]`; raise the first problem as one line naming the entry.

    Reference files resolve against `base` (the config file's folder).
    """
    parts = {}
    for section in SECTIONS:
        body = raw.get(section, [])
        if not isinstance(body, list):
            raise fail(section, "must be an array of tables", f"write each entry as [[{section}]]")
        parts[section] = tuple(_entry(item, f"{section}[{i}]", fail, base) for i, item in enumerate(body))
        _unique(section, parts[section], [item["name"].strip() for item in body], fail)
    _total_references(parts, fail)
    return Catalog(characters=parts["characters"], props=parts["props"])


def _unique(section: str, entries: tuple[CatalogEntry, ...], written: list[str], fail: Fail) -> None:
    """Refuse a name that repeats an earlier one, in NFC and ignoring case; name both entries as written."""
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        first = seen.setdefault(nfc(entry.name.casefold()), i)
        if first == i:
            continue
        why = ("(names are compared ignoring case)" if written[i].casefold() == written[first].casefold() else
               f"(the same letters, written {ascii(written[i])} and {ascii(written[first])}: an accent typed as a "
               "separate combining mark; names are compared in Unicode NFC, ignoring case)")
        raise fail(f"{section}[{i}].name", f"{written[i]!r} repeats {section}[{first}] {written[first]!r} {why}",
                   "give every entry a unique name")


def _total_references(parts: dict[str, tuple[CatalogEntry, ...]], fail: Fail) -> None:
    """Refuse, naming the entry that crosses it, a catalog with more reference photos than the limit."""
    count = 0
    for section in SECTIONS:
        for i, entry in enumerate(parts[section]):
            count += len(entry.references)
            if count > REFERENCES_TOTAL:
                raise fail(f"{section}[{i}].references", f"brings the catalog to {count} reference photos, more "
                           f"than {REFERENCES_TOTAL} in all", "keep the clearest one or two per entry: each one "
                           "costs an image's tokens in every prompt's context")


# Photo tools split hierarchical keywords at these: Lightroom, darktable and digiKam's
# lr:hierarchicalSubject at '|', digiKam:TagsList at '/'. XMP has no escape for them.
HIERARCHY_DELIMITERS = {"|": "Lightroom, darktable and digiKam", "/": "digiKam"}


def _entry(item: Any, where: str, fail: Fail, base: Path) -> CatalogEntry:
    if not isinstance(item, dict):
        raise fail(where, "must be a table", "write it as [[characters]] with name and description")
    unknown = set(item) - {"name", "description", "references"}
    if unknown:
        raise fail(f"{where}.{sorted(unknown)[0]}", "is not a known key", "known: name, description, references")
    name, description = item.get("name"), item.get("description", "")
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 80:
        raise fail(f"{where}.name", "must be a non-empty string of at most 80 characters", "name the entry")
    check_keyword(name.strip(), f"{where}.name", fail)
    if not isinstance(description, str) or len(description) > 500:
        raise fail(f"{where}.description", "must be a string of at most 500 characters",
                     "describe what it looks like")
    check_text(description, f"{where}.description", fail)
    return CatalogEntry(name=nfc(name.strip()), description=nfc(description.strip()),
                        references=_references(item.get("references", []), f"{where}.references", fail, base))


def _references(body: Any, where: str, fail: Fail, base: Path) -> tuple[Reference, ...]:
    example = 'references = [{ file = "refs/baba-yaga-1.jpg", caption = "full figure, from the left" }]'
    if not isinstance(body, list):
        raise fail(where, "must be a list of tables", f"write it as {example}")
    if len(body) > REFERENCES_PER_ENTRY:
        raise fail(where, f"lists {len(body)} photos, more than {REFERENCES_PER_ENTRY}",
                   "keep the clearest few: each one costs an image's tokens in every prompt's context")
    return tuple(_reference(item, f"{where}[{i}]", fail, base, example) for i, item in enumerate(body))


def _reference(item: Any, where: str, fail: Fail, base: Path, example: str) -> Reference:
    if not isinstance(item, dict):
        raise fail(where, "must be a table with file and caption", f"write it as {example}")
    unknown = set(item) - {"file", "caption"}
    if unknown:
        raise fail(f"{where}.{sorted(unknown)[0]}", "is not a known key", "known: file, caption")
    caption = item.get("caption")
    if not isinstance(caption, str) or not caption.strip() or len(caption.strip()) > REFERENCE_CAPTION_MAX:
        raise fail(f"{where}.caption", f"must be a non-empty string of at most {REFERENCE_CAPTION_MAX} characters",
                   "say in a few words what the photo shows of the entry, e.g. \"full figure, from the left\"")
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in caption):
        raise fail(f"{where}.caption", "contains a line break or control character", "write it on one line")
    check_text(caption, f"{where}.caption", fail)
    path = _reference_file(item.get("file"), f"{where}.file", fail, base)
    try:
        digest = file_sha256(path)
    except OSError as e:
        raise fail(f"{where}.file", f"{path} cannot be read ({e.strerror})",
                   "grant the bbsd user read access to it") from None
    return Reference(file=path, caption=nfc(caption.strip()), sha256=digest)


def _reference_file(value: Any, where: str, fail: Fail, base: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise fail(where, "must be a path to a photo", "a path relative to the config file's folder, "
                   "e.g. \"refs/baba-yaga-1.jpg\"")
    path = (base / Path(value).expanduser()).resolve()
    if formats.extension(path) not in formats.REFERENCES:
        raise fail(where, f"{value!r} is not a photo file bbsd shows as a reference",
                   f"use one of: {', '.join(formats.REFERENCES)} (export a JPEG of a RAW file)")
    if not path.exists():
        raise fail(where, f"{path} does not exist", "check the path; it is relative to the config file's folder")
    if not path.is_file():
        raise fail(where, f"{path} is not a file", "name a photo file, not a folder")
    if path.stat().st_size > REFERENCE_MAX_BYTES:
        raise fail(where, f"{path} is larger than {REFERENCE_MAX_BYTES // 2**20} MB",
                   "export a smaller JPEG: it is shown downscaled to [engine] image_max_side anyway")
    if path.stat().st_size == 0:
        raise fail(where, f"{path} is empty", "copy the photo again")
    return path


BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_keyword(name: str, where: str, fail: Fail) -> None:
    """Refuse what cannot survive as one keyword: hierarchy delimiters and control characters.

    Quotes, backslashes, apostrophes and any script are fine: the grammar escapes them.
    """
    for ch, tools in HIERARCHY_DELIMITERS.items():
        if ch in name:
            raise fail(where, f"{name!r} contains '{ch}', which {tools} read as a keyword level separator "
                         f"(one name would show as {name.count(ch) + 1} nested keywords)",
                         f"rename it without '{ch}', e.g. {name.replace(ch, ' and ' if ch == '|' else '-')!r}")
    bad = next((ch for ch in name if unicodedata.category(ch) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        raise fail(where, f"{name!r} contains the control character U+{ord(bad):04X}",
                     "write the name on one line without tabs or control characters")
    # A bidi embedding, override or isolate makes a keyword show in another order than it is stored
    # ("Trojan source"): in a photo tool's keyword list an editor would filter on what they cannot see.
    bad = next((ch for ch in name if ch in BIDI_CONTROLS), None)
    if bad is not None:
        raise fail(where, f"{name!r} contains the bidirectional control U+{ord(bad):04X}, which makes the "
                          "keyword show in another order than it is stored",
                   "delete the invisible character (right-to-left scripts need none in a name)")
    check_text(name, where, fail)


def check_text(value: str, where: str, fail: Fail) -> None:
    """Refuse text holding a character XML 1.0 or a photo tool cannot hold (tab and line breaks aside)."""
    bad = first_unsafe(value)
    if bad is not None:
        raise fail(where, f"{value!r} contains {describe(bad)}, which an XMP sidecar cannot hold",
                   "delete the character: it is invisible, often pasted in by accident")

