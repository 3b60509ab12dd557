"""The XMP side of a labelled photo: where its sidecar goes and what happens when it cannot be written.

Invariant: the photo's JSON sidecar never depends on the XMP — a hostile, conflicting or
oversized XMP, or something that is not a file under its name (a link, a folder, a FIFO), is
reported (`xmp.unreadable`, `xmp.name_conflict`, `xmp.too_large`, `xmp.unwritable`) and skipped;
only a disk that refuses writes keeps the photo pending.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from bbsd import __version__
from bbsd.engine.labeler import ModelInfo
from bbsd.engine.labels import Labels
from bbsd.engine.prompt import Prompt
from bbsd.show.questions import Question
from bbsd.sidecars import xmp

if TYPE_CHECKING:
    from bbsd.config import XmpSettings  # the [xmp] table, validated by config

log = structlog.get_logger("bbsd.xmp")
OUR_SUFFIXES = (".json", ".xmp")


def same_stem_photos(photo: Path) -> list[Path]:
    """Other files in the folder that would claim `IMG_0001.xmp` too (e.g. IMG_0001.CR2 beside IMG_0001.JPG)."""
    stem = photo.stem.casefold()
    return sorted(p for p in photo.parent.iterdir()
                  if p != photo and p.stem.casefold() == stem and p.suffix.lower() not in OUR_SUFFIXES
                  and not p.name.startswith("."))


def write(photo: Path, sha256: str, labels: Labels, model: ModelInfo, prompt: Prompt,
          settings: XmpSettings, questions: tuple[Question, ...] = (), review: bool = False,
          roots: tuple[Path, ...] | None = None) -> None:
    """Write or merge the XMP sidecar; raises `SidecarWriteError` (from `atomic`) only when the disk refuses.
    `roots`: the watch folders the XMP is read and written beneath (never through a linked folder)."""
    if settings.naming == "off":
        return
    target = xmp.path_for(photo, settings.naming)
    if settings.naming == "base" and (others := same_stem_photos(photo)):
        log.warning("xmp.name_conflict", path=str(photo), sidecar=str(target), others=[p.name for p in others],
                    hint="two photos would share this XMP; set [xmp] naming = \"ext\"")
        return
    provenance = {
        "model": model.file, "mmproj": model.mmproj or "", "backend": model.backend,
        # which model, when two share a file name (the JSON sidecar's model block has every file)
        **({"modelSha256": digest} if (digest := model.digest()) else {}),
        "promptVersion": prompt.version, "photoSha256": sha256,
        "labeledAt": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "version": __version__,
    }
    try:
        xmp.write(target, xmp.proposal_for(labels, settings.root, provenance, questions, settings.answers_branch(),
                                           settings.review_keyword if review else None), roots=roots)
    except xmp.XmpTooLargeError as e:
        log.error("xmp.too_large", path=str(photo), sidecar=str(target), reason=str(e), limit=xmp.SIZE_LIMIT,
                  hint="bbsd leaves this file alone (no editor writes one this large); trim or remove it to "
                       "get labels in your photo tool")
    except xmp.XmpNotRegularError as e:
        log.error("xmp.unwritable", path=str(photo), sidecar=str(target), reason=str(e),
                  hint="something other than a file has the XMP's name (a link, a folder, a FIFO): bbsd never "
                       "reads or replaces it; remove it to get labels in your photo tool")
    except xmp.XmpUnreadableError as e:
        log.error("xmp.unreadable", path=str(photo), sidecar=str(target), reason=str(e),
                  hint="bbsd leaves this file alone; repair or remove it to get labels in your photo tool")
