"""Decode a photo file into the RGB image the model sees.

Invariants: a file is decoded completely or not at all (a truncated file is an error,
never a half-grey image); EXIF orientation is applied; the result's longest side is at
most `max_side`; JPEGs are downscaled during decoding (DCT scaling via draft mode), which
is several times faster than a full decode. Pillow's decompression-bomb limit stays on and
its warning is an error.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from bbsd.errors import IncompletePhotoError, PhotoError

RAW_EXTENSIONS = frozenset({"cr2", "cr3", "crw", "nef", "nrw", "arw", "srf", "sr2", "raf", "orf", "rw2", "dng",
                            "pef", "srw", "x3f", "3fr", "iiq", "rwl", "erf", "mos", "mrw", "kdc"})
HEIF_EXTENSIONS = frozenset({"heic", "heif", "hif"})

try:  # HEIC/HEIF from phones; pillow-heif registers itself as a Pillow plugin
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_OK = True
except ImportError:  # pragma: no cover - it is a declared dependency
    HEIF_OK = False


def is_raw(path: Path) -> bool:
    return path.suffix.lower().lstrip(".") in RAW_EXTENSIONS


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # RGB, longest side <= max_side
    width: int  # the photo's own size, after orientation
    height: int


def decode(path: Path, max_side: int) -> Decoded:
    """Decode `path`; raise `PhotoError` (or `IncompletePhotoError` when it may still be arriving)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return _decode(path, max_side)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise PhotoError("decompression_bomb", f"image is too large to decode safely ({e})",
                             "export it at a smaller size") from None


def _decode(path: Path, max_side: int) -> Decoded:
    if path.stat().st_size == 0:
        raise IncompletePhotoError("empty_file", "the file is empty (0 bytes)",
                                   "the copy may have failed; copy the photo again")
    if is_raw(path):
        from bbsd import raw

        image, width, height = raw.decode(path, max_side)
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        return Decoded(image=_to_rgb(image), width=width, height=height)
    if path.suffix.lower().lstrip(".") in HEIF_EXTENSIONS and not HEIF_OK:
        raise PhotoError("unsupported_format", "HEIC/HEIF support is not installed", "pip install pillow-heif")
    try:
        with Image.open(path) as img:
            width, height = _oriented_size(img)
            if img.format == "JPEG":
                img.draft("RGB", _draft_size(img.size, max_side))
            img.load()
            image = ImageOps.exif_transpose(img)
            image = _to_rgb(image)
    except UnidentifiedImageError:
        raise PhotoError("not_an_image", "the file is not an image Pillow can read",
                         "check the file; only photos belong in the watch folder") from None
    except (OSError, SyntaxError, ValueError) as e:
        # Pillow reports truncated data as OSError ("image file is truncated", "broken data stream").
        raise IncompletePhotoError("truncated", f"the image data is incomplete or corrupt ({e})",
                                   "copy the photo again; it may have been cut off") from None
    image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return Decoded(image=image, width=width, height=height)


def _draft_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The smallest size draft may scale to: the final size, same aspect (draft keeps >= this)."""
    scale = min(1.0, max_side / max(size))
    return max(1, math.ceil(size[0] * scale)), max(1, math.ceil(size[1] * scale))


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    orientation = img.getexif().get(0x0112, 1)
    w, h = img.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten alpha onto white and convert palette, CMYK, 16-bit and grey to RGB."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I;16") or image.mode == "I":
        image = image.point(lambda v: v / 256).convert("L")
    return image.convert("RGB") if image.mode != "RGB" else image
