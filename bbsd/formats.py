"""The photo formats bbsd knows, by file extension: one table, read by every stage.

Invariant: this module knows names only, never bytes; the daemon asks it whether a path is a
RAW file without loading Pillow, LibRaw or libheif (those live in the decoder process).
"""

from __future__ import annotations

from pathlib import Path

RAW = frozenset({"cr2", "cr3", "crw", "nef", "nrw", "arw", "srf", "sr2", "raf", "orf", "rw2", "dng",
                 "pef", "srw", "x3f", "3fr", "iiq", "rwl", "erf", "mos", "mrw", "kdc"})
HEIF = frozenset({"heic", "heif", "hif"})
# What `[watch] extensions` takes by default: the common exports and the RAW kinds of the usual cameras.
DEFAULT_PHOTOS = ("jpg", "jpeg", "png", "tif", "tiff", "webp", "heic", "heif",
                  "cr2", "cr3", "nef", "arw", "raf", "orf", "rw2", "dng", "pef", "srw")
# A reference photo is shown to the model as it is: no RAW (export a JPEG of it).
REFERENCES = ("jpg", "jpeg", "png", "webp", "tif", "tiff", "heic", "heif")
# The sibling a RAW file takes its labels from (`arrive.pairs`), in order of preference.
PAIR_SOURCES = ("jpg", "jpeg", "heic", "heif", "hif")


def extension(path: Path) -> str:
    """The lower-case extension without its dot ('' for none)."""
    return path.suffix.lower().lstrip(".")


def is_raw(path: Path) -> bool:
    return extension(path) in RAW


def is_heif(path: Path) -> bool:
    return extension(path) in HEIF
