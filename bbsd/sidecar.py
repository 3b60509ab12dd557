"""The JSON sidecar beside each photo: its name, its content, and when it is up to date.

Invariants: the sidecar of `IMG_0001.JPG` is `IMG_0001.JPG.json` (a RAW and a JPEG of one
shot never collide); every sidecar carries `schema` = SCHEMA_ID and validates against
`schema/sidecar.schema.json`; a sidecar is up to date when it was made from the same file
content (sha256), the same model and the same prompt, whatever its status, so a restart
redoes nothing and a bad file is not retried until it changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from bbsd import __version__
from bbsd.labeler import ModelInfo
from bbsd.labels import Labels
from bbsd.prompt import Prompt

SCHEMA_ID = "bbsd.sidecar/1"
SUFFIX = ".json"


@dataclass(frozen=True)
class Record:
    """Everything measured about one photo, for the sidecar and the log alike."""

    photo: Path
    sha256: str
    width: int | None
    height: int | None
    labels: Labels | None
    timing_ms: dict[str, float]
    tokens: dict[str, int]
    memory_mb: dict[str, float | None]
    error: dict[str, str] | None = None
    pair: dict[str, str] | None = None  # a RAW's labels came from its JPEG sibling
    served: dict[str, Any] | None = None  # which endpoint/model answered, when the backend says (remote servers)
    # Per list, each name's confidence and runner-up and the strongest name not chosen (confidence.py),
    # with `needs_review`; None when the backend cannot see token probabilities.
    confidence: dict[str, Any] | None = None


NAME_MAX = 255  # bytes in a file name on ext4, XFS, Btrfs, NTFS and exFAT
FALLBACK_MARK = "~bbsd-"


def path_for(photo: Path) -> Path:
    return photo.with_name(fit_name(photo.name, SUFFIX))


def fit_name(name: str, suffix: str, name_max: int = NAME_MAX) -> str:
    """`name + suffix`, or when that is too long for a file name, a documented fallback.

    The fallback keeps as much of the photo's name as fits, then `~bbsd-` and 12 hex digits
    of the name's sha256 (two long names that share a prefix never share a sidecar), then
    the suffix: `<start of name>~bbsd-1a2b3c4d5e6f.json`. The sidecar names the photo inside.
    """
    full = name + suffix
    if len(full.encode("utf-8", "surrogateescape")) <= name_max:
        return full
    tail = f"{FALLBACK_MARK}{hashlib.sha256(name.encode('utf-8', 'surrogateescape')).hexdigest()[:12]}{suffix}"
    room = name_max - len(tail.encode())
    head = name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return head + tail


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def render(record: Record, model: ModelInfo, prompt: Prompt) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "status": "error" if record.error else "labeled",
        "photo": {"file": record.photo.name, "sha256": record.sha256,
                  "width": record.width, "height": record.height},
        "labels": record.labels.to_json() if record.labels else None,
        **identity(model, prompt),
        "timing_ms": {k: round(v, 1) for k, v in record.timing_ms.items()},
        "tokens": record.tokens,
        "memory_mb": record.memory_mb,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "bbsd_version": __version__,
    }
    if record.pair:
        doc["pair"] = record.pair
    if record.served:
        doc["served"] = record.served
    if record.confidence:
        doc["confidence"] = record.confidence
    if record.error:
        doc["error"] = record.error
    else:
        doc["labels_sha256"] = labels_digest(doc["labels"])
    return doc


def labels_digest(labels: dict[str, Any] | None) -> str:
    return hashlib.sha256(json.dumps(labels, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def human_edited(old: dict[str, Any] | None) -> bool:
    """True when a person marked the labels reviewed or changed them since bbsd wrote them."""
    if not old or not isinstance(old.get("labels"), dict):
        return False
    return old.get("reviewed") is True or labels_digest(old["labels"]) != old.get("labels_sha256")


def keep_human_labels(new: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    """A person's labels stay; bbsd's new labels go beside them as `proposal`."""
    if new["status"] != "labeled" or not human_edited(old):
        return new
    return {**new, "labels": old["labels"], "labels_sha256": old.get("labels_sha256"),
            "reviewed": old.get("reviewed", False), "proposal": new["labels"]}


def to_bytes(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def read(photo: Path) -> dict[str, Any] | None:
    """The existing sidecar, or None when there is none or it is unreadable."""
    try:
        return read_strict(photo)
    except (OSError, ValueError):
        return None


def read_strict(photo: Path) -> dict[str, Any] | None:
    """None when there is no sidecar; raises ValueError when one exists but is not a JSON object."""
    try:
        doc = json.loads(path_for(photo).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except RecursionError:  # hostile nesting: refused like any other unreadable sidecar
        raise ValueError("nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def identity(model: ModelInfo, prompt: Prompt) -> dict[str, Any]:
    """What makes labels current besides the photo itself: the model and the prompt (its version,
    the catalog, the questions it asked and the reference photos it showed)."""
    made_with = {"version": prompt.version, "catalog_sha256": prompt.catalog_digest}
    if prompt.questions_digest:  # only with [[questions]]: sidecars made without any stay current
        made_with["questions_sha256"] = prompt.questions_digest
    if prompt.references_digest:  # only when reference photos were shown: the same rule
        made_with["references_sha256"] = prompt.references_digest
    made_by: dict[str, Any] = {"backend": model.backend, "file": model.file, "mmproj": model.mmproj}
    if model.lora:  # only with an adapter: sidecars made without one stay current
        made_by["lora"] = model.lora
    if model.files:  # what tells two models with one file name apart (a local model's files)
        made_by["files"] = {role: {"size": size, "sha256": digest} for role, size, digest in model.files}
    if model.limits:  # the engine settings an error may come from (`is_current`)
        made_by["limits"] = dict(model.limits)
    return {"model": made_by, "prompt": made_with}


def is_current(doc: dict[str, Any] | None, model: ModelInfo, prompt: Prompt, *,
               sha256: str | None = None, photo: Path | None = None) -> bool:
    """The one rule for "is this sidecar current?": same schema, model and prompt, and same photo.

    "Same model" is the model block of `identity`: the file names and, for a local model, each
    file's size and sha256, so a different model under the same name relabels. An error sidecar
    also needs the same `limits` (context size, reply bound, image size): raising [engine]
    context_size as an error's hint said labels that photo again; a labelled sidecar ignores them.

    "Same photo" is the content's sha256 when the caller has it (before labelling), else the
    cheap guess that the sidecar is newer than the photo (rescans; the sha256 is still checked
    before anything is labelled, so a wrong guess costs a hash, never a wrong label). A sidecar
    is current whatever its status, so a bad file is not retried until it changes.
    """
    if not doc or doc.get("schema") != SCHEMA_ID or not isinstance(doc.get("model"), dict):
        return False
    want = identity(model, prompt)
    have, made_by = doc["model"], want["model"]
    if doc.get("status") != "error":  # labels do not depend on the limits; an error may come from them
        have, made_by = _without(have, "limits"), _without(made_by, "limits")
    if have != made_by or doc.get("prompt") != want["prompt"]:
        return False
    if sha256 is not None:
        return isinstance(doc.get("photo"), dict) and doc["photo"].get("sha256") == sha256
    if photo is None:
        raise ValueError("is_current needs the photo's sha256 or its path")
    try:
        return path_for(photo).stat().st_mtime_ns >= photo.stat().st_mtime_ns
    except OSError:
        return False


def _without(block: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in block.items() if k != key}


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of a sidecar (package data)."""
    return json.loads(resources.files("bbsd").joinpath("schema/sidecar.schema.json").read_text())
