"""Decode a photo file into the RGB image the model sees.

Invariants: a file is decoded completely or not at all (a truncated file is an error,
never a half-grey image); EXIF orientation is applied; the result's longest side is at
most `max_side`; JPEGs are downscaled during decoding (DCT scaling via draft mode), which
is several times faster than a full decode and lets a panorama far over the pixel limit be
decoded at 1/8 size. The pixel limit is checked on the buffer that is actually decoded,
before it is allocated. Runs only inside contained processes: the decoder (`decode_worker`) for
photos, and the engine worker for the catalog's reference photos (`references.Images`).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from bbsd import formats
from bbsd.errors import IncompletePhotoError, PhotoError
from bbsd.photo.pixels import Decoded, check_pixels

HEADER_EXIF_FORMATS = frozenset({"JPEG", "MPO", "TIFF", "WEBP", "HEIF"})  # EXIF read without decoding pixels

try:  # HEIC/HEIF from phones; pillow-heif registers itself as a Pillow plugin
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_OK = True
except ImportError:  # pragma: no cover - it is a declared dependency
    HEIF_OK = False



DEFAULT_MAX_PIXELS = 180_000_000


def decode(path: Path, max_side: int, max_pixels: int = DEFAULT_MAX_PIXELS, fileobj: BinaryIO | None = None) -> Decoded:
    """Decode `path`; raise `PhotoError` (or `IncompletePhotoError` when it may still be arriving).

    `fileobj`, when given, is `path` already opened and checked (`safefs`): the pixels come from
    it, so what was checked is what is decoded; `path` then only names the format by its suffix.
    Pillow's own bomb check is replaced by `max_pixels` on what is actually decoded: a JPEG
    is measured after DCT scaling, so a huge panorama costs only its scaled-down buffer.
    """
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # checked below, per format; the decoder process is single-threaded
    try:
        return _decode(path, max_side, max_pixels, fileobj)
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _decode(path: Path, max_side: int, max_pixels: int, fileobj: BinaryIO | None) -> Decoded:
    size = os.fstat(fileobj.fileno()).st_size if fileobj is not None else path.stat().st_size
    if size == 0:
        raise IncompletePhotoError("empty_file", "the file is empty (0 bytes)",
                                   "copy the photo again; it may have been cut off")
    if formats.is_raw(path):
        from bbsd.photo import raw

        image, width, height = raw.decode(path, max_side, max_pixels, fileobj)
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        return Decoded(image=_to_rgb(image), width=width, height=height)
    if formats.is_heif(path) and not HEIF_OK:
        raise PhotoError("unsupported_format", "HEIC/HEIF support is not installed", "pip install pillow-heif")
    try:
        with Image.open(fileobj if fileobj is not None else path) as img:
            full_size = img.size
            if img.format == "JPEG":
                img.draft("RGB", _draft_size(img.size, max_side))
            check_pixels(img.size, max_pixels, scaled=img.format == "JPEG")  # before anything loads pixels:
            width, height = _oriented_size(img, full_size)  # a PNG's getexif() decodes the whole image
            img.load()
            image = ImageOps.exif_transpose(img)
            image = _to_rgb(image)
    except UnidentifiedImageError:
        raise PhotoError("not_an_image", "the file is not an image Pillow can read",
                         "check the file; only photos belong in the watch folder") from None
    except (OSError, SyntaxError, ValueError) as e:
        # Pillow reports truncated data as OSError ("image file is truncated", "broken data stream"):
        # its words go in the detail, never the headline.
        raise IncompletePhotoError("truncated", TRUNCATED, TRUNCATED_HINT, detail=str(e)[:200]) from None
    image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return Decoded(image=image, width=width, height=height)


TRUNCATED = "the image data stops short or is damaged: the file is incomplete or corrupt"
TRUNCATED_HINT = ("copy the photo again, it may have been cut off on the way; if the copy on the card "
                  "fails too, the card or the camera damaged it")


def capture_time(path: Path, fileobj: BinaryIO | None = None) -> float | None:
    """When the shot was taken, as a timestamp (newest shots first), or None: EXIF DateTimeOriginal
    with its SubSecTimeOriginal (a camera shooting 10 frames a second writes ten shots into one
    second; without the fraction the newest of them would come back in any order) and its
    OffsetTimeOriginal where the camera wrote one (else the time is read as this machine's local time)."""
    try:
        with Image.open(fileobj if fileobj is not None else path) as img:
            if img.format not in HEADER_EXIF_FORMATS:  # elsewhere getexif() may decode the whole image
                return None
            exif = img.getexif().get_ifd(0x8769)
        return exif_time(exif.get(0x9003), exif.get(0x9291), exif.get(0x9011))
    except (OSError, ValueError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError):
        return None


def exif_time(stamp: object, subsec: object = None, offset: object = None) -> float | None:
    """EXIF "YYYY:MM:DD HH:MM:SS" (+ sub-second digits, + "±HH:MM") as a timestamp; None if unreadable."""
    from datetime import datetime

    text = _exif_text(stamp)
    if not text:
        return None
    when = datetime.strptime(text, "%Y:%m:%d %H:%M:%S")
    if zone := _exif_text(offset):
        with contextlib.suppress(ValueError):  # "±HH:MM"; anything else leaves the local reading
            when = when.replace(tzinfo=datetime.strptime(zone, "%z").tzinfo)
    digits = _exif_text(subsec)
    fraction = float("0." + digits) if digits.isascii() and digits.isdigit() else 0.0  # not "²"
    return when.timestamp() + fraction


def _exif_text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip("\x00 ") if value is not None else ""


def _draft_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The smallest size draft may scale to: the final size, same aspect (draft keeps >= this)."""
    scale = min(1.0, max_side / max(size))
    return max(1, math.ceil(size[0] * scale)), max(1, math.ceil(size[1] * scale))


def _oriented_size(img: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    orientation = img.getexif().get(0x0112, 1)
    w, h = size
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
