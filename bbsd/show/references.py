"""Visual references: photos of catalog entries, with short captions, shown to the model.

Invariants: the daemon process never parses a reference's bytes — it hashes them when the
configuration is read (`catalog.parse`), and the images are decoded where photos are (the engine
worker, or a decoder process for remote backends), by `Images`, which refuses a file whose content
no longer matches the digest the prompt was built with; the prompt's identity (`digest`) covers
every reference's content and caption and the strategy, and is empty when nothing is shown, so a
catalog without references keeps its prompt and its sidecars exactly.

Strategies (`[prompt] references`): `gallery` shows every reference, each image followed by a
caption line naming its entry, before the photo; the engine keeps that gallery in the KV cache
with the rest of the prompt's fixed prefix, so a photo still costs one image. `off` shows none.
A second strategy, `pairwise` (after the reply, check each uncertain name against its own
references, one "same character?" question per pair, ranked by the yes-probability), is planned,
not built: it would plug in at `Pipeline._label`, after the reply is validated and scored
(`Pipeline.confidence` says which names are uncertain); see docs/producer/eval.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from bbsd import fingerprint
from bbsd.errors import PhotoError

if TYPE_CHECKING:
    from bbsd.show.catalog import Catalog

Shown = TypeVar("Shown")  # what a backend makes of a reference: a PIL image, a JPEG data URI

STRATEGIES = {
    "gallery": "each reference image with its caption line before the photo, cached with the prompt's prefix",
    "off": "no reference images: the prompt is the catalog's text alone",
}
PLANNED = {
    "pairwise": "uncertain names checked against their references one pair at a time after the reply",
}
INTRO = "Reference photos of the show's characters and props, each followed by whose it is:"
FORMAT = "bbsd.gallery/1"  # the wording below; a change to it relabels (it is part of the digest)


@dataclass(frozen=True)
class Item:
    """One reference as the prompt shows it: whose it is, the file, its caption, its content's sha256."""

    name: str
    file: str  # absolute path, resolved against the config's folder
    caption: str
    sha256: str
    where: str  # the configuration key, for messages: characters[0].references[1]

    def line(self) -> str:
        return f"Reference: {self.name} — {self.caption}"


def gallery(catalog: Catalog, strategy: str) -> tuple[Item, ...]:
    """The references a prompt shows before the photo, in catalog order; none unless the strategy is gallery."""
    if strategy != "gallery":
        return ()
    return tuple(Item(entry.name, str(ref.file), ref.caption, ref.sha256, f"{section}[{i}].references[{j}]")
                 for section, entries in (("characters", catalog.characters), ("props", catalog.props))
                 for i, entry in enumerate(entries) for j, ref in enumerate(entry.references))


def digest(items: tuple[Item, ...], strategy: str) -> str:
    """The shown references' identity (content, caption, whose, order, wording); "" when none are shown."""
    if not items:
        return ""
    data = {"strategy": strategy, "format": FORMAT, "intro": INTRO,
            "items": [[i.name, i.caption, i.sha256] for i in items]}
    return hashlib.sha256(json.dumps(data, ensure_ascii=False).encode()).hexdigest()


class Images(Generic[Shown]):
    """Reference images decoded once and kept, by file and content digest, for the prompts that show them.

    `decode(path, max_side)` is the contained decoding of the process it runs in: `imaging.decode`
    in the engine worker, the `Decoder` process for a remote backend (which keeps the JPEG it
    sends). Not thread-safe: one owner, or a lock around `load`.
    """

    def __init__(self, decode: Callable[[Path, int], Shown]) -> None:
        self._decode = decode
        self._cache: dict[tuple[str, str, int], Shown] = {}

    def load(self, items: tuple[Item, ...], max_side: int) -> list[Shown]:
        """The images of `items`, in order; raise `PhotoError` naming the reference that cannot be used."""
        wanted = {(i.file, i.sha256, max_side) for i in items}
        self._cache = {k: v for k, v in self._cache.items() if k in wanted}  # a new catalog's leftovers go
        return [self._one(i, max_side) for i in items]

    def _one(self, item: Item, max_side: int) -> Shown:
        key = (item.file, item.sha256, max_side)
        if key not in self._cache:
            self._cache[key] = self._read(item, max_side)
        return self._cache[key]

    def _read(self, item: Item, max_side: int) -> Shown:
        path = Path(item.file)
        try:
            now = fingerprint.file_sha256(path)
        except OSError as e:
            raise PhotoError("reference_unreadable", f"reference {item.where} ({path}) cannot be read ({e.strerror})",
                             "restore the file, or remove the reference and reload the configuration") from None
        if now != item.sha256:
            raise PhotoError("reference_changed", f"reference {item.where} ({path.name}) changed since the "
                             "configuration was read", "reload the configuration (systemctl reload bbsd, or "
                             "restart) so the new picture is hashed and shown; photos labelled with it relabel")
        try:
            return self._decode(path, max_side)
        except PhotoError as e:
            raise PhotoError("reference_unreadable", f"reference {item.where} ({path.name}) cannot be decoded "
                             f"({e.message})", "replace it with a JPEG or PNG photo of the entry") from None
