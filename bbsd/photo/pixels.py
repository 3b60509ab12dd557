"""What a decoded photo is, and the pixel budget a decode must stay within.

Invariant: nothing here decodes or imports a decoding library, so the daemon's side of the
decoder (`decoder.Decoder`) can name a decoded photo without loading Pillow's plugins, LibRaw
or libheif; the decoding modules (`imaging`, `raw`) share the one pixel check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bbsd.errors import PhotoError

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # RGB, longest side <= max_side
    width: int  # the photo's own size, after orientation
    height: int


def check_pixels(size: tuple[int, int], max_pixels: int, scaled: bool = False) -> None:
    """Refuse a decode buffer over the limit before any pixel is allocated."""
    if size[0] * size[1] > max_pixels:
        what = "scaled for decoding it is still" if scaled else "it is"
        raise PhotoError("too_large", f"the photo is too large to decode: {what} {size[0]} × {size[1]} pixels "
                         f"({size[0] * size[1] / 1e6:.0f} MP, limit {max_pixels / 1e6:.0f} MP)",
                         "export a smaller version, or raise [decode] max_megapixels")
