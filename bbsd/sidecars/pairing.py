"""The RAW+JPEG pair copy, a step of its own: a RAW file takes its JPEG sibling's labels.

Invariant: a RAW takes the labels of its sibling (`arrive.pairs.partner`: same folder and stem,
written within the pair window) only from a sidecar that is current for this model and prompt —
checked against the sibling's content as hashed now — and says `labeled`; it waits while it may
(`may_wait`: the daemon, not `bbsd label`) for a sibling not labelled yet, or for a sibling that
may still arrive while the RAW is younger than the window; otherwise it is labelled from its own
pixels. Nothing is decoded or written here: the pipeline probes the RAW's size and writes
`record_for`'s record like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from bbsd.arrive import pairs
from bbsd.engine.labeler import ModelInfo
from bbsd.engine.labels import Labels
from bbsd.engine.prompt import Prompt
from bbsd.sidecars import record


class Decision(Enum):
    WAIT = "wait"  # the sibling's labels may still come: look at the RAW again later
    OWN = "own"  # no sibling to copy from (none, gone, failed): label the RAW from its own pixels


@dataclass(frozen=True)
class Borrowed:
    """The sibling's labels to copy, with its name and sha256 for the RAW's sidecar (`pair`)."""

    source: str
    sha256: str
    labels: Labels


def consult(raw: Path, raw_mtime: float, now: float, window_s: float, *, may_wait: bool, model: ModelInfo,
            prompt: Prompt, sha256_of: Callable[[Path], str]) -> Borrowed | Decision:
    """What `raw` does with its sibling. `raw_mtime` and `now` on one clock; `sha256_of` hashes the
    sibling the way the caller hashes photos (beneath the watch folders, never through a link) and
    raises `OSError` for one gone or no longer a regular file."""
    mate = pairs.partner(raw, window_s)
    if mate is None:
        young = now - raw_mtime < window_s
        return Decision.WAIT if may_wait and young else Decision.OWN
    doc = record.read(mate)
    try:
        mate_sha = sha256_of(mate)
    except OSError:  # gone, or no longer a regular file: the RAW stands alone
        return Decision.OWN
    current = record.is_current(doc, model, prompt, sha256=mate_sha, photo=mate)
    if current and doc["status"] == "labeled":
        return Borrowed(mate.name, doc["photo"]["sha256"], Labels.from_json(doc["labels"]))
    if current or not may_wait:
        return Decision.OWN  # the sibling failed (or we cannot wait): label the RAW itself
    return Decision.WAIT


def record_for(raw: Path, sha256: str, borrowed: Borrowed, size: tuple[int | None, int | None],
               timing: dict[str, float], memory: dict[str, float | None]) -> record.Record:
    """The RAW's own record with the borrowed labels: nothing decoded, nothing inferred."""
    width, height = size
    return record.Record(photo=raw, sha256=sha256, width=width, height=height, labels=borrowed.labels,
                         timing_ms={"decode": 0.0, "inference": 0.0, "total": 0.0, **timing},
                         tokens={"prompt": 0, "output": 0}, memory_mb=memory,
                         pair={"source": borrowed.source, "sha256": borrowed.sha256})
