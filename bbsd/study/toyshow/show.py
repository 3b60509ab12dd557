"""A toy show on disk: camera-like JPEGs with EXIF, and their truth as a `bbsd eval` manifest.

Invariant: `render_show(folder, seed, n, size, orientations)` writes the same bytes for the same
arguments (photo i is `render.render_photo(seed, i, size)`; the capture times and orientation tags
come from a generator seeded by `seed` alone, in photo order, so a shorter show is the start of a
longer one); capture times strictly increase through the show; a photo whose EXIF orientation is
3, 6 or 8 stores its pixels turned so that a decoder applying the tag shows the upright photo; the
manifest (`truth.jsonl`, written last and atomically) lists every photo with exactly what is in it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import structlog
from PIL import Image

from bbsd import atomic
from bbsd.errors import BbsdError
from bbsd.study.toyshow import cast, render

log = structlog.get_logger("bbsd.toyshow")

MANIFEST = "truth.jsonl"
DEFAULT_SIZE = (384, 256)  # tests; camera exports are e.g. (2048, 1365), (4032, 3024), (6000, 4000)
MIN_SIDE = 64
CAMERAS = (("Canon", "Canon EOS R6"), ("NIKON CORPORATION", "NIKON Z 6_2"), ("SONY", "ILCE-7M3"),
           ("Apple", "iPhone 14 Pro"))
# The transpose that stores an upright photo under each EXIF orientation (the inverse of the one a decoder applies).
STORED = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
TAG_ORIENTATION, TAG_MAKE, TAG_MODEL, TAG_DATETIME, TAG_EXIF_IFD = 0x0112, 0x010F, 0x0110, 0x0132, 0x8769
TAG_ORIGINAL, TAG_OFFSET, TAG_SUBSEC = 0x9003, 0x9011, 0x9291


class ToyShowError(BbsdError):
    """The toy show cannot be rendered with these arguments."""


def render_show(folder: Path, seed: int, n: int, size: tuple[int, int] = DEFAULT_SIZE,
                orientations: Sequence[int] = (1,), quality: int = 90) -> Path:
    """Render `n` photos of show `seed` into `folder` (IMG_0001.jpg …) and return its truth manifest's path.

    `size` is (width, height) of the upright photo; each photo's EXIF orientation is drawn from
    `orientations` (1 leaves it upright and untagged by rotation)."""
    _check(n, size, orientations)
    folder.mkdir(parents=True, exist_ok=True)
    show_rng = np.random.default_rng([seed, 1 << 40])  # a stream apart from the photos' own
    make, model = CAMERAS[seed % len(CAMERAS)]
    when = datetime(2026, 5, 1, 19, 0) + timedelta(days=seed % 365)
    lines = []
    for index in range(n):
        photo = render.render_photo(seed, index, size)
        when += _gap(show_rng)
        orientation = int(show_rng.choice(list(orientations)))
        name = f"IMG_{index + 1:04d}.jpg"
        _save(folder / name, photo.image, _exif(make, model, when, orientation), quality, orientation)
        lines.append(json.dumps({"file": name, "characters": photo.characters, "props": photo.props,
                                 "caption": photo.caption, "scene": photo.scene}, ensure_ascii=False))
    manifest = folder / MANIFEST
    atomic.write_bytes(manifest, "".join(line + "\n" for line in lines).encode("utf-8"))
    log.info("toyshow.rendered", folder=str(folder), seed=seed, photos=n, size=f"{size[0]}x{size[1]}")
    return manifest


def _check(n: int, size: tuple[int, int], orientations: Sequence[int]) -> None:
    if n < 0:
        raise ToyShowError(f"a show of {n} photos", "ask for 0 photos or more")
    if min(size) < MIN_SIDE:
        raise ToyShowError(f"a photo of {size[0]}x{size[1]} pixels is too small to draw the cast in",
                           f"give both sides at least {MIN_SIDE} pixels")
    if not orientations or any(o not in STORED for o in orientations):
        raise ToyShowError(f"EXIF orientations {list(orientations)}", "choose among 1, 3, 6 and 8")


def _gap(rng: np.random.Generator) -> timedelta:
    """The time to the next shot: a burst's 0.1 s now and then, else a few seconds (whole milliseconds)."""
    seconds = 0.1 if rng.random() < 0.2 else float(rng.exponential(8.0)) + 0.5
    return timedelta(milliseconds=round(seconds * 1000))


def _exif(make: str, model: str, when: datetime, orientation: int) -> Image.Exif:
    exif = Image.Exif()
    stamp = when.strftime("%Y:%m:%d %H:%M:%S")
    exif[TAG_MAKE], exif[TAG_MODEL], exif[TAG_DATETIME] = make, model, stamp
    exif[TAG_ORIENTATION] = orientation
    sub = exif.get_ifd(TAG_EXIF_IFD)
    sub[TAG_ORIGINAL], sub[TAG_SUBSEC], sub[TAG_OFFSET] = stamp, f"{when.microsecond // 1000:03d}", "+00:00"
    return exif


def _save(path: Path, upright: Image.Image, exif: Image.Exif, quality: int, orientation: int) -> None:
    turn = STORED[orientation]
    stored = upright.transpose(turn) if turn is not None else upright
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=quality, exif=exif)
    path.write_bytes(buf.getvalue())


def catalog_toml() -> str:
    """The cast as a bbsd catalog: `[[characters]]` and `[[props]]` with descriptions a model can use."""
    out = ["# The toy show's cast (bbsd.study.toyshow; docs/producer/toyshow.md).",
           "# Look-alikes: " + "; ".join(f"{a} / {b}" for a, b in cast.LOOKALIKES) + "."]
    for entry in cast.CAST:
        section = "characters" if entry.kind == "character" else "props"
        out += ["", f"[[{section}]]", f"name = {json.dumps(entry.name)}",
                f"description = {json.dumps(entry.description)}"]
    return "\n".join(out) + "\n"
