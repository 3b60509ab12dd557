"""Merging bbsd's proposals with what people edited: the rule "a human edit always wins".

Pure functions on plain data, shared by the XMP and the JSON sidecars. bbsd remembers
three things per keyword list: the items it owns (`written`), the whole list as it left
it (`last`), and the items a person removed (`suppressed`). A person's change is whatever
differs from `last`: an item they added is theirs forever, an item they removed is never
proposed again, and bbsd only ever removes items it owns and nobody touched. One keyword
written to several lists (flat, hierarchical, digiKam's) is one keyword to the person: removed
from any of them, it is suppressed in all (`link`); added back to any, it is allowed in all again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace


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


def link(states: Sequence[ListState], units: Iterable[Sequence[str]]) -> list[ListState]:
    """`states` with each list's suppressed items made one decision per keyword: `units` names each
    keyword as every list writes it (`units[k][i]` in `states[i]`). A keyword a person removed from
    any list since bbsd's last write, or that any list still suppresses, is suppressed in all of
    them; one a person added back to any list is allowed everywhere again (a removal made at the
    same time wins). Feed the result to `merge_list`."""
    removed = [set(s.last) - set(s.current) for s in states]
    added = [set(s.current) - set(s.last) for s in states]
    suppressed = [set(s.suppressed) for s in states]
    add: list[list[str]] = [[] for _ in states]
    lift: list[set[str]] = [set() for _ in states]
    for unit in units:
        if _in_any(unit, removed) or (_in_any(unit, suppressed) and not _in_any(unit, added)):
            for i, k in enumerate(unit):
                add[i].append(k)
        elif _in_any(unit, added):
            for i, k in enumerate(unit):
                lift[i].add(k)
    return [replace(s, suppressed=tuple(dict.fromkeys([*(k for k in s.suppressed if k not in lift[i]), *add[i]])))
            for i, s in enumerate(states)]


def _in_any(unit: Sequence[str], found: list[set[str]]) -> bool:
    """Whether some list's `found` holds the keyword, as that list writes it."""
    return any(k in f for k, f in zip(unit, found, strict=True))


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
