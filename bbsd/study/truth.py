"""The ground-truth manifest: one JSON object per line naming a photo and what is really in it.

Invariant: a `Truth` read from a manifest names an existing file (resolved against the
manifest's folder), only catalog names, and only configured questions with answers of their
type; a bad line raises `TruthError` naming the manifest and the line number. Export writes
only photos whose labels a person confirmed or corrected (`sidecar.human_edited`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbsd import atomic
from bbsd.arrive import scan
from bbsd.config import Settings
from bbsd.errors import BbsdError
from bbsd.sidecars import record as sidecar
from bbsd.text import nfc

FIELDS = ("file", "characters", "props", "caption", "scene", "answers")
FORMAT_HINT = ('each line is one JSON object: {"file": "…", "characters": […], "props": […]} with optional '
               '"caption", "scene" and "answers" (docs/producer/eval.md)')


class TruthError(BbsdError):
    """The truth manifest cannot be used as it is."""


@dataclass(frozen=True)
class Truth:
    file: Path
    characters: frozenset[str]
    props: frozenset[str]
    caption: str = ""
    scene: str = ""
    answers: tuple[tuple[str, str | int], ...] = ()


def read(manifest: Path, settings: Settings, require_files: bool = True) -> list[Truth]:
    """Every line of `manifest` as a `Truth`; the first problem raises `TruthError` with file:line.

    `require_files=False` lets a photo be missing (the dataset export skips it and says so)."""
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TruthError(f"cannot read the truth manifest {manifest} ({e})", "check the --truth path") from None
    out, seen = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = _parse(line, manifest.parent, settings, require_files)
        except ValueError as e:
            raise TruthError(f"{manifest}:{number}: {e}", FORMAT_HINT) from None
        if item.file in seen:
            raise TruthError(f"{manifest}:{number}: {item.file} is listed twice", "keep one line per photo")
        seen.add(item.file)
        out.append(item)
    if not out:
        raise TruthError(f"{manifest} lists no photos", FORMAT_HINT)
    return out


def _parse(line: str, base: Path, settings: Settings, require_files: bool = True) -> Truth:
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if unknown := [k for k in doc if k not in FIELDS]:
        raise ValueError(f"unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})")
    if not isinstance(doc.get("file"), str) or not doc["file"]:
        raise ValueError("'file' is missing or not a string")
    path = (base / doc["file"]).resolve()
    if require_files and not path.is_file():
        raise ValueError(f"photo {doc['file']!r} does not exist (paths are relative to the manifest)")
    catalog = settings.catalog
    return Truth(
        file=path,
        characters=_names(doc, "characters", catalog.character_names()),
        props=_names(doc, "props", catalog.prop_names()),
        caption=_string(doc, "caption"), scene=_string(doc, "scene"),
        answers=_answers(doc.get("answers", {}), settings),
    )


def _names(doc: dict[str, Any], key: str, allowed: tuple[str, ...]) -> frozenset[str]:
    value = doc.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"'{key}' is missing or not a list of names")
    value = [nfc(v) for v in value]  # a manifest typed on macOS (NFD) names the catalog's NFC names
    if unknown := [v for v in value if v not in allowed]:
        raise ValueError(f"'{key}' names {unknown[0]!r}, which is not in the catalog")
    return frozenset(value)


def _string(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"'{key}' is not a string")
    return value


def _answers(value: Any, settings: Settings) -> tuple[tuple[str, str | int], ...]:
    if not isinstance(value, dict):
        raise ValueError("'answers' is not an object")
    questions = {q.key: q for q in settings.questions}
    for key, answer in value.items():
        if key not in questions:
            raise ValueError(f"'answers' has {key!r}, which is not a configured question")
        closed = questions[key].closed_answers()
        if closed is not None and answer not in closed:
            raise ValueError(f"answer {key!r} is {answer!r}, not one of {', '.join(closed)}")
    return tuple(value.items())


def reviewed(settings: Settings) -> Iterable[tuple[Path, dict[str, Any]]]:
    """(photo, labels) of every photo in the watch folders whose labels a person confirmed or corrected."""
    for photo in sorted(scan.photos(settings.watch.folders, settings.watch.extensions, settings.watch.recursive)):
        doc = sidecar.read(photo)
        if doc and doc.get("status") == "labeled" and sidecar.human_edited(doc):
            yield photo, doc["labels"]


def export(settings: Settings, out: Path) -> int:
    """Write the manifest of reviewed photos to `out` (atomically); return how many lines it has."""
    lines = []
    for photo, labels in reviewed(settings):
        entry = {"file": _relative(photo, out.parent), "characters": labels.get("characters", []),
                 "props": labels.get("props", []), "caption": labels.get("caption", ""),
                 "scene": labels.get("scene", "")}
        if labels.get("answers"):
            entry["answers"] = labels["answers"]
        lines.append(json.dumps(entry, ensure_ascii=False))
    atomic.write_bytes(out, "".join(line + "\n" for line in lines).encode("utf-8"))
    return len(lines)


def _relative(photo: Path, base: Path) -> str:
    """Relative to the manifest when they share a tree, so the set can move as one folder."""
    try:
        return os.path.relpath(photo, base.resolve())
    except ValueError:  # another drive (Windows)
        return str(photo)
