"""Merging bbsd's proposals with what people edited: the rule "a human edit always wins".

Pure functions on plain data, shared by the XMP and the JSON sidecars. bbsd remembers
three things per keyword list: the items it owns (`written`), the whole list as it left
it (`last`), and the items a person removed (`suppressed`). A person's change is whatever
differs from `last`: an item they added is theirs forever, an item they removed is never
proposed again, and bbsd only ever removes items it owns and nobody touched.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ListState:
    current: tuple[str, ...]  # what the file holds now (people may have edited it)
    written: tuple[str, ...] = ()  # items bbsd owns
    last: tuple[str, ...] = ()  # the whole list right after bbsd's last write
    suppressed: tuple[str, ...] = ()  # items a person removed; never re-added


@dataclass(frozen=True)
class ListMerge:
    result: tuple[str, ...]
    written: tuple[str, ...]
    suppressed: tuple[str, ...]


def merge_list(state: ListState, proposed: tuple[str, ...]) -> ListMerge:
    current = set(state.current)
    removed_by_person = [k for k in state.last if k not in current]
    suppressed = tuple(dict.fromkeys([*state.suppressed, *removed_by_person]))
    owned = set(state.written) & set(state.last)  # owned and still as bbsd left it
    human = [k for k in state.current if k not in owned]
    taken = set(human) | set(suppressed)
    own = tuple(dict.fromkeys(k for k in proposed if k not in taken))
    return ListMerge(result=(*human, *own), written=own, suppressed=suppressed)


@dataclass(frozen=True)
class TextMerge:
    result: str | None
    written: str | None


def merge_text(current: str | None, written: str | None, proposed: str) -> TextMerge:
    """bbsd replaces a text only if it wrote it and nobody changed or removed it since."""
    if written is None and current is None:
        return TextMerge(result=proposed, written=proposed)
    if written is not None and current == written:
        return TextMerge(result=proposed, written=proposed)
    return TextMerge(result=current, written=written)  # a person's text (or deletion) stands
