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


def path_for(photo: Path) -> Path:
    return photo.with_name(photo.name + SUFFIX)


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
        "model": {"backend": model.backend, "file": model.file, "mmproj": model.mmproj},
        "prompt": {"version": prompt.version, "catalog_sha256": prompt.catalog_digest},
        "timing_ms": {k: round(v, 1) for k, v in record.timing_ms.items()},
        "tokens": record.tokens,
        "memory_mb": record.memory_mb,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "bbsd_version": __version__,
    }
    if record.pair:
        doc["pair"] = record.pair
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
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def is_up_to_date(doc: dict[str, Any] | None, sha256: str, model: ModelInfo, prompt: Prompt) -> bool:
    if not doc or doc.get("schema") != SCHEMA_ID:
        return False
    return (
        doc.get("photo", {}).get("sha256") == sha256
        and doc.get("model") == {"backend": model.backend, "file": model.file, "mmproj": model.mmproj}
        and doc.get("prompt") == {"version": prompt.version, "catalog_sha256": prompt.catalog_digest}
    )


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of a sidecar (package data)."""
    return json.loads(resources.files("bbsd").joinpath("schema/sidecar.schema.json").read_text())
