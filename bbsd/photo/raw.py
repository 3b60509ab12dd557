"""RAW files (CR2, CR3, NEF, ARW, RAF, ORF, RW2, DNG …) through LibRaw (rawpy).

Invariant: the camera's embedded preview is used when there is one (fast, already
developed by the camera) with the orientation applied; otherwise the raw data is
demosaiced at half size. Width and height are the sensor image's, after orientation.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from bbsd.errors import IncompletePhotoError, PhotoError

# LibRaw's `flip`: 3 = 180°, 5 = 90° counter-clockwise, 6 = 90° clockwise
_ROTATE = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


def orient(image: Image.Image, flip: int) -> Image.Image:
    return image.transpose(_ROTATE[flip]) if flip in _ROTATE else image


def source(path: Path, fileobj: BinaryIO | None) -> str | BinaryIO:
    """What LibRaw opens: the checked descriptor itself (through /proc, no copy of a 100 MB RAW in
    memory), else the file object (read whole), else the path (a file named by the configuration)."""
    if fileobj is None:
        return str(path)
    proc = f"/proc/self/fd/{fileobj.fileno()}"
    return proc if os.path.exists(proc) else fileobj


def decode(path: Path, max_side: int, max_pixels: int, fileobj: BinaryIO | None = None) -> tuple[Image.Image, int, int]:
    import rawpy

    from bbsd.photo.pixels import check_pixels

    try:
        with rawpy.imread(source(path, fileobj)) as raw:
            width, height = oriented_size(raw.sizes)
            image = _preview(raw, max_side, max_pixels)
            if image is None:
                check_pixels((raw.sizes.width // 2, raw.sizes.height // 2), max_pixels)
                image = Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8))
            else:
                image = orient(image, raw.sizes.flip)  # previews are stored unrotated
    except (rawpy.LibRawFileUnsupportedError, rawpy.NotSupportedError):
        raise PhotoError("not_an_image", "LibRaw cannot read this RAW file",
                         "is the camera supported by LibRaw? the JPEG of the shot is labelled normally") from None
    except (rawpy.LibRawIOError, rawpy.LibRawDataError, rawpy.LibRawTooBigError) as e:
        raise IncompletePhotoError("truncated", "the RAW data stops short or is damaged: the file is "
                                   "incomplete or corrupt", "copy the file again, it may have been cut off "
                                   "on the way; the JPEG of the shot is labelled normally",
                                   detail=str(e)[:200]) from None
    return image, width, height


def oriented_size(sizes) -> tuple[int, int]:
    """The sensor image's size after LibRaw's `flip`."""
    return (sizes.height, sizes.width) if sizes.flip in (5, 6) else (sizes.width, sizes.height)


def dimensions(path: Path, fileobj: BinaryIO | None = None) -> tuple[int | None, int | None]:
    """Sensor image size after orientation, read from the header without demosaicing."""
    import rawpy

    try:
        with rawpy.imread(source(path, fileobj)) as r:
            return oriented_size(r.sizes)
    except Exception:  # LibRaw raises many types; a missing size must not fail the pair
        return None, None


def _preview(raw, max_side: int, max_pixels: int) -> Image.Image | None:
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        from bbsd.photo.pixels import check_pixels

        image = Image.open(io.BytesIO(thumb.data))
        image.draft("RGB", (max_side, max_side))
        check_pixels(image.size, max_pixels, scaled=True)
        image.load()
        return image
    return Image.fromarray(thumb.data)
