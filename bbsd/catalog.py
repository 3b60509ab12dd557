"""The show's catalog: the puppets (characters) and props a label may name.

Invariant: a label only ever contains names from this catalog, and every name (like every
keyword level a question adds) survives as one keyword in the photo tools; its digest
identifies the catalog a sidecar was made with, so a catalog change relabels.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SECTIONS = ("characters", "props")
Fail = Callable[[str, str, str], Exception]  # config.Validator.fail: (key, problem, hint) -> ConfigError


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str = ""


@dataclass(frozen=True)
class Catalog:
    characters: tuple[CatalogEntry, ...] = ()
    props: tuple[CatalogEntry, ...] = ()

    def character_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.characters)

    def prop_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.props)

    def digest(self) -> str:
        """Stable sha256 of the catalog's content (order matters: it is the prompt's order)."""
        data = {
            "characters": [[e.name, e.description] for e in self.characters],
            "props": [[e.name, e.description] for e in self.props],
        }
        return hashlib.sha256(json.dumps(data, ensure_ascii=False).encode()).hexdigest()


def parse(raw: dict[str, Any], fail: Fail) -> Catalog:
    """Validate `[[characters]]` and `[[props]]`; raise the first problem as one line naming the entry."""
    parts = {}
    for section in SECTIONS:
        body = raw.get(section, [])
        if not isinstance(body, list):
            raise fail(section, "must be an array of tables", f"write each entry as [[{section}]]")
        parts[section] = tuple(_entry(item, f"{section}[{i}]", fail) for i, item in enumerate(body))
        seen: dict[str, int] = {}
        for i, entry in enumerate(parts[section]):
            first = seen.setdefault(entry.name.casefold(), i)
            if first != i:
                raise fail(f"{section}[{i}].name", f"{entry.name!r} repeats {section}[{first}] "
                             f"{parts[section][first].name!r} (names are compared ignoring case)",
                             "give every entry a unique name")
    return Catalog(characters=parts["characters"], props=parts["props"])


# Photo tools split hierarchical keywords at these: Lightroom, darktable and digiKam's
# lr:hierarchicalSubject at '|', digiKam:TagsList at '/'. XMP has no escape for them.
HIERARCHY_DELIMITERS = {"|": "Lightroom, darktable and digiKam", "/": "digiKam"}


def _entry(item: Any, where: str, fail: Fail) -> CatalogEntry:
    if not isinstance(item, dict):
        raise fail(where, "must be a table", "write it as [[characters]] with name and description")
    unknown = set(item) - {"name", "description"}
    if unknown:
        raise fail(f"{where}.{sorted(unknown)[0]}", "is not a known key", "known: name, description")
    name, description = item.get("name"), item.get("description", "")
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 80:
        raise fail(f"{where}.name", "must be a non-empty string of at most 80 characters", "name the entry")
    check_keyword(name.strip(), f"{where}.name", fail)
    if not isinstance(description, str) or len(description) > 500:
        raise fail(f"{where}.description", "must be a string of at most 500 characters",
                     "describe what it looks like")
    return CatalogEntry(name=name.strip(), description=description.strip())


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

