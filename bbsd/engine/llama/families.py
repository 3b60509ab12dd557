"""Per-family prompt conventions, in one table rather than branches through the engine.

The generic path needs nothing: the chat template comes from the text GGUF, and libmtmd wraps
the image in each family's own markers (<img>…</img> for InternVL, <|vision_start|>… for Qwen-VL,
<start_of_image> for Gemma 3). A row here only records what a family needs beyond that: a chat template
quirk, or `fit`, the photo resized before libmtmd slices it so that the encoder sees the tiles the family
was trained on (InternVL: `tiling`; llama.cpp's own InternVL slicing picks the grid with the most
resolution, InternVL the grid closest to the photo's aspect ratio).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bbsd.engine.llama import tiling


@dataclass(frozen=True)
class Family:
    system_role: bool = True  # False: the template refuses a system turn; prepend it to the user turn
    image_first: bool = True  # the image before the instruction (what these models were tuned on)
    fallback_template: str | None = None  # used only when the GGUF carries no chat template
    # the image resized for the mmproj's tiling (`tiling.read`) before llama.cpp tiles it; None: as it is
    fit: Callable[[Image.Image, tiling.Tiling], Image.Image] | None = None


VICUNA = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
          "{% elif m['role'] == 'user' %}USER: {% for p in m['content'] %}{{ p['text'] }}{% endfor %}\n"
          "{% endif %}{% endfor %}ASSISTANT:")

# keyed by the mmproj's clip.projector_type
FAMILIES: dict[str, Family] = {
    "mlp": Family(fallback_template=VICUNA),  # LLaVA 1.5 GGUFs often ship without a template
    "mlp_norm": Family(fallback_template=VICUNA),
    "ldp": Family(fallback_template=VICUNA),
    "pixtral": Family(system_role=False),  # Mistral templates accept only user/assistant turns
    "internvl": Family(fit=tiling.fit),  # InternVL 1.5-3: dynamic_preprocess's grid, not llama.cpp's
}
DEFAULT = Family()


def for_projector(projector: str | None) -> Family:
    return FAMILIES.get(projector or "", DEFAULT)


@dataclass(frozen=True)
class Fit:
    """A family's fit bound to one mmproj's tiling: called on an image, the image as the encoder should get it."""

    fit: Callable[[Image.Image, tiling.Tiling], Image.Image] | None = None
    shape: tiling.Tiling | None = None

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if self.fit is None or self.shape is None else self.fit(image, self.shape)

    def costliest(self, side: int) -> tuple[int, int]:
        """The photo no longer than `side` that costs the most image tokens (what a context must hold): the
        most pixels, a square, unless the family tiles by shape (InternVL: a 4:3 photo gets 12 tiles)."""
        return (side, side) if self.shape is None else self.shape.costliest(side)


AS_IS = Fit()


def fitter(family: Family, mmproj: Path) -> Fit:
    """The family's fit, bound to this mmproj's tiling (read once, here); `AS_IS` for families without one."""
    if family.fit is None:
        return AS_IS
    return Fit(family.fit, tiling.read(mmproj))
