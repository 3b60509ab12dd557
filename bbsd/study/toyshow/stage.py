"""The toy show's stage: a scene's painted backdrop, the floor, the curtains and the ground row in front.

Invariant: everything here is drawn from the random generator it is given (and the photo's size),
never from a clock or global state, so one generator state draws one stage; what the stage hides of
the items (the curtains at the sides, the ground row at the bottom) is bounded by `Stage`'s margins,
which `render` respects when it places the items.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

Colour = tuple[int, int, int]
CURTAINS: tuple[Colour, ...] = ((150, 20, 30), (30, 40, 120), (25, 90, 45), (90, 30, 100), (170, 120, 30))
FLOORS: tuple[Colour, ...] = ((120, 80, 45), (90, 60, 35), (60, 55, 55), (40, 70, 40), (140, 110, 70))


@dataclass(frozen=True)
class Stage:
    """Where the items may stand: the floor's top edge, the curtains' widths and the ground row's height (px)."""

    floor_top: int
    left: int
    right: int
    ground_row: int


def _jitter(rng: np.random.Generator, colour: Colour, spread: int = 25) -> Colour:
    return tuple(int(np.clip(c + rng.integers(-spread, spread + 1), 0, 255)) for c in colour)  # type: ignore[return-value]


def _gradient(size: tuple[int, int], top: Colour, bottom: Colour) -> Image.Image:
    t = np.linspace(0.0, 1.0, size[1], dtype=np.float32)[:, None, None]
    rows = (np.array(top, np.float32) * (1 - t) + np.array(bottom, np.float32) * t).astype(np.uint8)
    return Image.fromarray(np.repeat(rows, size[0], axis=1), "RGB")


def _forest(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    for _ in range(int(rng.integers(4, 8))):
        x, tw = rng.uniform(0, w), rng.uniform(0.02, 0.05) * w
        d.rectangle([x, h * 0.25, x + tw, h], fill=_jitter(rng, (90, 60, 35)))
        r = rng.uniform(0.08, 0.16) * w
        d.ellipse([x + tw / 2 - r, h * 0.05, x + tw / 2 + r, h * 0.05 + 1.4 * r], fill=_jitter(rng, (40, 110, 50)))


def _village(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    x = rng.uniform(-0.1, 0.05) * w
    while x < w:
        hw, hh, base = rng.uniform(0.12, 0.22) * w, rng.uniform(0.2, 0.35) * h, h * 0.75
        d.rectangle([x, base - hh, x + hw, base], fill=_jitter(rng, (200, 170, 120), 40))
        d.polygon([x - 6, base - hh, x + hw / 2, base - hh - 0.15 * h, x + hw + 6, base - hh],
                  fill=_jitter(rng, (140, 50, 40), 30))
        d.rectangle([x + hw * 0.35, base - hh * 0.7, x + hw * 0.65, base - hh * 0.4], fill=(250, 220, 120))
        x += hw + rng.uniform(0.02, 0.08) * w


def _hall(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    gold, step = _jitter(rng, (210, 170, 60)), rng.uniform(0.15, 0.25) * w
    for x in np.arange(rng.uniform(0, step), w, step):
        d.rectangle([x, h * 0.15, x + 0.05 * w, h], fill=_jitter(rng, (225, 215, 190), 10))
        d.arc([x + 0.05 * w, h * 0.1, x + step, h * 0.45], 180, 360, fill=gold, width=max(2, h // 80))
    d.rectangle([0, 0, w, h * 0.06], fill=gold)


def _hut(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    log = max(4, int(h * rng.uniform(0.05, 0.08)))
    for y in range(0, h, log):
        d.rounded_rectangle([-10, y, w + 10, y + log - 2], radius=log // 2, fill=_jitter(rng, (100, 65, 35), 15))
    x, y, s = rng.uniform(0.2, 0.7) * w, h * 0.2, 0.12 * h
    d.rectangle([x, y, x + s * 1.3, y + s], fill=(20, 25, 50), outline=(60, 40, 20), width=max(2, h // 100))
    d.ellipse([x + s * 0.7, y + s * 0.15, x + s * 1.05, y + s * 0.5], fill=(240, 240, 200))


def _swamp(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    for _ in range(int(rng.integers(3, 6))):
        x, y = rng.uniform(0, w), rng.uniform(0.5, 0.75) * h
        d.ellipse([x - 0.15 * w, y - 0.03 * h, x + 0.15 * w, y + 0.03 * h], fill=_jitter(rng, (50, 90, 90)))
    for _ in range(int(rng.integers(15, 30))):
        x, top = rng.uniform(0, w), rng.uniform(0.3, 0.6) * h
        d.line([x, h * 0.8, x + rng.uniform(-10, 10), top], fill=_jitter(rng, (80, 110, 40)), width=max(2, w // 300))
        d.ellipse([x - 3, top - 0.04 * h, x + 4, top], fill=(90, 60, 30))


def _winter(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    for _ in range(int(rng.integers(30, 60))):
        x, y, r = rng.uniform(0, w), rng.uniform(0, 0.55) * h, rng.uniform(0.5, 2.0) * max(1, h / 400)
        d.ellipse([x - r, y - r, x + r, y + r], fill=(250, 250, 255))
    for _ in range(3):
        x, r = rng.uniform(0, w), rng.uniform(0.2, 0.4) * w
        d.ellipse([x - r, h * 0.55, x + r, h * 0.55 + r], fill=_jitter(rng, (230, 235, 245), 10))


Painter = Callable[[ImageDraw.ImageDraw, np.random.Generator, int, int], None]
# A scene: the backdrop's sky and ground colours and what is painted on it.
SCENES: dict[str, tuple[Colour, Colour, Painter]] = {
    "forest clearing": ((120, 170, 140), (60, 110, 60), _forest),
    "village square": ((140, 180, 230), (230, 210, 170), _village),
    "royal hall": ((110, 30, 50), (60, 20, 40), _hall),
    "witch's hut": ((70, 45, 25), (40, 25, 15), _hut),
    "swamp": ((90, 120, 110), (40, 70, 60), _swamp),
    "winter night": ((15, 20, 60), (60, 70, 120), _winter),
}


def backdrop(scene: str, size: tuple[int, int], rng: np.random.Generator) -> tuple[Image.Image, Stage]:
    """The empty stage for `scene`: backdrop, floor and curtains; the ground row is drawn by `front`."""
    w, h = size
    top, bottom, paint = SCENES[scene]
    image = _gradient(size, _jitter(rng, top), _jitter(rng, bottom))
    paint(ImageDraw.Draw(image), rng, w, h)
    floor_top = int(h * rng.uniform(0.66, 0.8))
    _floor(ImageDraw.Draw(image), rng, w, h, floor_top)
    stage = Stage(floor_top=floor_top, left=int(w * rng.uniform(0.03, 0.12)), right=int(w * rng.uniform(0.03, 0.12)),
                  ground_row=int(h * rng.uniform(0.05, 0.11)) if rng.random() < 0.4 else 0)
    return image, stage


def _floor(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, top: int) -> None:
    colour = _jitter(rng, FLOORS[int(rng.integers(len(FLOORS)))], 15)
    d.rectangle([0, top, w, h], fill=colour)
    seam = tuple(max(0, c - 35) for c in colour)
    for i in range(-8, 9):  # boards running to a vanishing point above the stage
        d.line([w / 2 + i * w * 0.04, top, w / 2 + i * w * 0.16, h], fill=seam, width=max(1, h // 300))
    d.line([0, top, w, top], fill=seam, width=max(2, h // 150))


def front(image: Image.Image, stage: Stage, rng: np.random.Generator) -> None:
    """What stands before the items: the ground row (a low cut-out of bushes), the curtains, the valance."""
    w, h = image.size
    d = ImageDraw.Draw(image)
    if stage.ground_row:
        green, y = _jitter(rng, (45, 85, 40)), h - stage.ground_row
        d.rectangle([0, y + stage.ground_row * 0.4, w, h], fill=green)
        for x in np.arange(0, w, stage.ground_row * 1.2):
            r = stage.ground_row * rng.uniform(0.5, 0.7)
            d.ellipse([x - r, y, x + r, y + 2 * r], fill=green)
    curtain = _jitter(rng, CURTAINS[int(rng.integers(len(CURTAINS)))], 15)
    for x0, x1 in ((0, stage.left), (w - stage.right, w)):
        _drape(d, curtain, x0, x1, h)
    valance = int(h * rng.uniform(0.04, 0.1))
    d.rectangle([0, 0, w, valance], fill=curtain)
    for x in np.arange(0, w, max(8, w / 16)):
        d.pieslice([x, valance - w / 64, x + w / 16, valance + w / 64], 0, 180, fill=curtain)


def _drape(d: ImageDraw.ImageDraw, colour: Colour, x0: int, x1: int, h: int) -> None:
    """A curtain at one side: folds as alternating light and dark stripes."""
    fold = max(3, (x1 - x0) // 4)
    for i, x in enumerate(range(x0, x1, fold)):
        shade = 0.75 if i % 2 else 1.0
        d.rectangle([x, 0, min(x1, x + fold), h], fill=tuple(int(c * shade) for c in colour))
