"""The show's catalog: the puppets (characters) and props a label may name.

Invariant: a label only ever contains names from this catalog; its digest identifies
the catalog a sidecar was made with, so a catalog change relabels.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


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
