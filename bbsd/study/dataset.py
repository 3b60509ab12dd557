"""The fine-tuning hand-off: reviewed photos and their true labels as an instruction-tuning set.

Invariant: every sample asks exactly bbsd's prompt (`prompt.build`: system and user text) and
answers with the reply bbsd's grammar would let the model write for the true labels, keys in
`prompt.reply_schema` order, so a model tuned on it is asked at run time what it learned. The
originals are only read: each is hard-linked (or copied) into OUT/images/ under a new name.
Formats and their sources: docs/producer/dataset.md.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from bbsd import atomic
from bbsd.config import Settings
from bbsd.engine import prompt
from bbsd.errors import BbsdError
from bbsd.study import truth as truth_mod
from bbsd.study.truth import Truth

log = structlog.get_logger("bbsd.dataset")

NAME = "bbsd"  # the dataset's name in InternVL's meta file and LLaMA-Factory's dataset_info.json
ANNOTATION = "bbsd.jsonl"
IMAGES = "images"


class DatasetError(BbsdError):
    """The dataset cannot be written where or as asked."""


@dataclass(frozen=True)
class Sample:
    """One photo's question and answer; `image` is relative to the output folder."""

    id: int
    image: str
    system: str
    user: str
    answer: str


@dataclass(frozen=True)
class Summary:
    written: int
    missing: int
    incomplete: int


def answer(t: Truth, settings: Settings) -> str:
    """The reply JSON for the true labels, in the order the grammar makes the model write it."""
    catalog = settings.catalog
    reply: dict[str, Any] = {
        "characters": [n for n in catalog.character_names() if n in t.characters],
        "props": [n for n in catalog.prop_names() if n in t.props],
        "caption": t.caption, "scene": t.scene,
        "visible_text": [],  # the truth manifest does not record it
    }
    if settings.questions:
        given = dict(t.answers)
        reply["answers"] = {q.key: given[q.key] for q in settings.questions}
    return json.dumps(reply, ensure_ascii=False)


def incomplete(t: Truth, settings: Settings) -> str:
    """Why the truth cannot be a reply the grammar admits ("" when it can).

    A sidecar's names were checked against the catalog of its day, which may have changed since."""
    catalog = settings.catalog
    unknown = [*(t.characters - set(catalog.character_names())), *(t.props - set(catalog.prop_names()))]
    if unknown:
        return f"{sorted(unknown)[0]!r} is not in the catalog"
    if missing := [q.key for q in settings.questions if q.key not in dict(t.answers)]:
        return f"no answer to question {missing[0]!r}"
    if len(t.caption) > prompt.CAPTION_MAX:
        return f"caption longer than {prompt.CAPTION_MAX} characters"
    if len(t.scene) > prompt.SCENE_MAX:
        return f"scene longer than {prompt.SCENE_MAX} characters"
    return ""


def from_sidecars(settings: Settings) -> list[Truth]:
    """The truth `bbsd truth export` would write: photos whose labels a person confirmed or corrected."""
    return [Truth(file=photo, characters=frozenset(labels.get("characters", [])),
                  props=frozenset(labels.get("props", [])), caption=labels.get("caption", ""),
                  scene=labels.get("scene", ""), answers=tuple((labels.get("answers") or {}).items()))
            for photo, labels in truth_mod.reviewed(settings)]


def export(settings: Settings, truths: list[Truth], out: Path, fmt: str) -> Summary:
    """Write the images, the samples and the trainer's registration file under `out` (an empty folder)."""
    if not truths:
        raise DatasetError("no reviewed photos to export", 'confirm labels in the sidecars ("reviewed": true) '
                           "or pass --truth MANIFEST")
    _claim(out)
    p = prompt.build(settings.catalog, settings.questions)
    samples, missing, skipped = [], 0, 0
    for t in truths:
        if reason := incomplete(t, settings):
            log.warning("dataset.skipped", path=str(t.file), reason=reason)
            skipped += 1
            continue
        image = f"{IMAGES}/{len(samples) + 1:05d}-{t.file.name}"
        if not _place(t.file, out / image):
            missing += 1
            continue
        samples.append(Sample(len(samples) + 1, image, p.system, p.user, answer(t, settings)))
    WRITERS[fmt](samples, out)
    return Summary(len(samples), missing, skipped)


def _claim(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} exists and is not an empty folder", "choose a new --out folder or remove it")
    try:
        (out / IMAGES).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"cannot create {out / IMAGES} ({e.strerror})", "choose a writable --out folder") from None


def _place(photo: Path, target: Path) -> bool:
    """Hard-link the photo (no copy on the same filesystem), else copy it; False when it is gone."""
    try:
        os.link(photo, target)
    except FileNotFoundError:
        log.warning("dataset.photo_missing", path=str(photo))
        return False
    except OSError:  # another filesystem, or links not allowed
        try:
            shutil.copyfile(photo, target)
        except FileNotFoundError:
            log.warning("dataset.photo_missing", path=str(photo))
            return False
    return True


def _jsonl(path: Path, docs: Iterable[dict[str, Any]]) -> None:
    atomic.write_bytes(path, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8"))


def _json(path: Path, doc: dict[str, Any]) -> None:
    atomic.write_bytes(path, (json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))


def write_internvl(samples: list[Sample], out: Path) -> None:
    """InternVL's conversation JSONL plus the meta file its fine-tuning scripts take (--meta_path).

    The system text goes in a leading "system" turn, which InternVL's `preprocess_internvl2_5`
    (the conv style of InternVL2.5 and InternVL3) puts in place of the template's own system message.
    """
    _jsonl(out / ANNOTATION, ({"id": s.id, "image": s.image, "conversations": [
        {"from": "system", "value": s.system},
        {"from": "human", "value": f"<image>\n{s.user}"},
        {"from": "gpt", "value": s.answer}]} for s in samples))
    root = out.resolve()
    _json(out / "meta.json", {NAME: {"root": f"{root}/", "annotation": str(root / ANNOTATION),
                                     "data_augment": False, "repeat_time": 1, "length": len(samples)}})


def write_llama_factory(samples: list[Sample], out: Path) -> None:
    """LLaMA-Factory's sharegpt format with OpenAI-style role tags, the system text in its `system` column."""
    _jsonl(out / ANNOTATION, ({"messages": [{"role": "user", "content": f"<image>{s.user}"},
                                            {"role": "assistant", "content": s.answer}],
                               "system": s.system, "images": [s.image]} for s in samples))
    _json(out / "dataset_info.json", {NAME: {
        "file_name": ANNOTATION, "formatting": "sharegpt",
        "columns": {"messages": "messages", "system": "system", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}})


WRITERS: dict[str, Callable[[list[Sample], Path], None]] = {
    "internvl": write_internvl, "llama-factory": write_llama_factory}
