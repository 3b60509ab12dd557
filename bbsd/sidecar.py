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
    if record.error:
        doc["error"] = record.error
    return doc


def to_bytes(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def read(photo: Path) -> dict[str, Any] | None:
    """The existing sidecar, or None when there is none or it is unreadable."""
    try:
        doc = json.loads(path_for(photo).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


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
