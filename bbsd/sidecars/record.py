"""The JSON sidecar beside each photo: its name, its content, and when it is up to date.

Invariants: the sidecar of `IMG_0001.JPG` is `IMG_0001.JPG.json` (a RAW and a JPEG of one
shot never collide), or `IMG_0001.JPG.bbsd.json` when another tool's JSON (Google Takeout's)
holds that name: bbsd never replaces a file it did not write; a sidecar is read only as a
regular file (never through a link, never a FIFO) of at most READ_LIMIT bytes; every sidecar
carries `schema` = SCHEMA_ID, is strict JSON (no NaN, no lone surrogates) and validates against
`schema/sidecar.schema.json`; a sidecar is up to date when it was made from the same file
content (sha256), the same model and the same prompt, whatever its status, so a restart
redoes nothing and a bad file is not retried until it changes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from bbsd import __version__, safefs
from bbsd.engine.labeler import ModelInfo
from bbsd.engine.labels import Labels
from bbsd.engine.prompt import Prompt
from bbsd.sidecars.naming import fit_name

SCHEMA_ID = "bbsd.sidecar/1"
SUFFIX = ".json"
OWN_SUFFIX = ".bbsd.json"  # bbsd's name when another tool's JSON holds `<photo>.json`
# A sidecar is a few kB (100 kB texts at most); a file far larger is not one bbsd wrote, and
# reading it whole would let one file cost the daemon its memory.
READ_LIMIT = 4 << 20


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
    model: ModelInfo | None = None  # what labelled it, when the engine said (an engine worker's model)




def path_for(photo: Path) -> Path:
    """The photo's JSON sidecar: `<name>.json`, or `<name>.bbsd.json` where another tool's JSON has that name.

    bbsd's own file first: `<name>.bbsd.json` once it exists; else `<name>.json` when it is free or
    bbsd's (a JSON object whose `schema` is bbsd's); else — another tool's JSON document there, such
    as Google Takeout's — `<name>.bbsd.json`. Something at `<name>.json` that is not a regular file
    or not JSON at all stays the answer, so that reading it reports it instead of going around it.
    """
    plain = photo.with_name(fit_name(photo.name, SUFFIX))
    own = photo.with_name(fit_name(photo.name, OWN_SUFFIX))
    return own if os.path.lexists(own) or _foreign(plain) else plain


_verdicts: dict[tuple[int, ...], bool] = {}  # by file identity: a rescan does not parse each sidecar twice


def _foreign(plain: Path) -> bool:
    """Whether `plain` is a regular file holding another tool's JSON (remembered per file version)."""
    try:
        st = os.lstat(plain)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    verdict = _verdicts.get(key)
    if verdict is None:
        verdict = _not_ours(plain)
        if len(_verdicts) >= 4096:
            _verdicts.clear()
        _verdicts[key] = verdict
    return verdict


def _not_ours(plain: Path) -> bool:
    try:
        doc = json.loads(safefs.read_regular(plain, READ_LIMIT))
    except safefs.TooLargeError:
        return True  # bbsd never writes one that large
    except (OSError, ValueError, RecursionError):
        return False  # unreadable or not JSON: whose it is cannot be told, so reading it reports it
    return not (isinstance(doc, dict) and str(doc.get("schema", "")).startswith("bbsd.sidecar/"))


def render(record: Record, model: ModelInfo, prompt: Prompt) -> dict[str, Any]:
    """The sidecar of `record`, as strict JSON can hold it (`json_safe`)."""
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
    doc = json_safe(doc)
    if not record.error:
        doc["labels_sha256"] = labels_digest(doc["labels"])
    return doc


def json_safe(value: Any) -> Any:
    """`value` as strict JSON holds it: a non-finite number (a server's NaN or Infinity) becomes null,
    text with lone surrogates becomes UTF-8 (`file_text`)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return file_text(value)
    if isinstance(value, dict):
        return {file_text(k) if isinstance(k, str) else k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def file_text(text: str) -> str:
    """`text` as valid UTF-8. A file name whose bytes are not UTF-8 (Python holds each such byte as a
    surrogate escape) shows each as `\\xNN`, as `os.fsencode(name).decode("utf-8", "backslashreplace")`
    would; any other lone surrogate becomes U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join(_escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return "\ufffd" if 0xD800 <= code <= 0xDFFF else char


def labels_digest(labels: dict[str, Any] | None) -> str:
    text = json.dumps(labels, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()  # a hostile old sidecar too


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
    """Strict JSON: whatever `doc` holds (an old sidecar's NaN too) goes through `json_safe` first."""
    return (json.dumps(json_safe(doc), ensure_ascii=False, indent=2, allow_nan=False) + "\n").encode("utf-8")


def read(photo: Path) -> dict[str, Any] | None:
    """The existing sidecar, or None when there is none or it is unreadable."""
    try:
        return read_strict(photo)
    except (OSError, ValueError):
        return None


def read_strict(photo: Path) -> dict[str, Any] | None:
    """None when there is no sidecar; raises ValueError when one exists but is not a JSON object,
    `safefs.NotRegularError` (an OSError) for a symlink, FIFO, device or folder — never followed,
    never opened (a device's open may act, a FIFO's may block) — and `safefs.TooLargeError` (an
    OSError) past READ_LIMIT."""
    target = path_for(photo)
    if (kind := safefs.lstat_kind(target)) is not None:
        raise safefs.NotRegularError(f"a {kind} where the sidecar should be")
    try:
        doc = json.loads(safefs.read_regular(target, READ_LIMIT).decode("utf-8"))
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
