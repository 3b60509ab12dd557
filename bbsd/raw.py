"""RAW files (CR2, CR3, NEF, ARW, RAF, ORF, RW2, DNG …) through LibRaw (rawpy).

Invariant: the camera's embedded preview is used when there is one (fast, already
developed by the camera) with the orientation applied; otherwise the raw data is
demosaiced at half size. Width and height are the sensor image's, after orientation.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from bbsd.errors import IncompletePhotoError, PhotoError

# LibRaw's `flip`: 3 = 180°, 5 = 90° counter-clockwise, 6 = 90° clockwise
_ROTATE = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


def orient(image: Image.Image, flip: int) -> Image.Image:
    return image.transpose(_ROTATE[flip]) if flip in _ROTATE else image


def decode(path: Path, max_side: int) -> tuple[Image.Image, int, int]:
    import rawpy

    try:
        with rawpy.imread(str(path)) as raw:
            sizes = raw.sizes
            width, height = (sizes.height, sizes.width) if sizes.flip in (5, 6) else (sizes.width, sizes.height)
            image = _preview(raw, max_side)
            if image is None:
                image = Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8))
            else:
                image = orient(image, sizes.flip)  # previews are stored unrotated
    except (rawpy.LibRawFileUnsupportedError, rawpy.NotSupportedError):
        raise PhotoError("not_an_image", "LibRaw cannot read this RAW file",
                         "is the camera supported by LibRaw? the JPEG of the shot is labelled normally") from None
    except (rawpy.LibRawIOError, rawpy.LibRawDataError, rawpy.LibRawTooBigError) as e:
        raise IncompletePhotoError("truncated", f"the RAW data is incomplete or corrupt ({e})",
                                   "copy the file again; it may have been cut off") from None
    return image, width, height


def _preview(raw, max_side: int) -> Image.Image | None:
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        image = Image.open(io.BytesIO(thumb.data))
        image.draft("RGB", (max_side, max_side))
        image.load()
        return image
    return Image.fromarray(thumb.data)
