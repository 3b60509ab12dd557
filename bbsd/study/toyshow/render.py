"""One toy-show photo: a stage, 0 to 4 members of the cast on it, the lighting, then the camera's blur and noise.

Invariant: `render_photo(seed, index, size)` depends on nothing else (a generator seeded with
(seed, index), no clock, no global state), so a show's photo is the same whoever renders it and
in whatever order; the truth it returns names exactly the items drawn, each at least about two
thirds visible (overlaps between items, the curtains and the ground row are bounded), and its
caption names them all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from bbsd.study.toyshow import cast, stage

MAX_ITEMS = 4
MAX_OVERLAP = 0.3  # of the smaller item's box, between two items
CAPTIONS = ("{who} on stage in the {scene}.", "The {scene} scene with {who}.",
            "{who} in front of the {scene} backdrop.")
EMPTY_CAPTIONS = ("An empty stage set as the {scene}.", "The {scene} backdrop, with nobody on stage.")


@dataclass(frozen=True)
class Item:
    """An entry as placed: its name, box (x0, y0, x1, y1) in pixels, and rotation in degrees."""

    name: str
    box: tuple[int, int, int, int]
    angle: float


@dataclass(frozen=True)
class Photo:
    """A rendered photo, upright, and its truth."""

    image: Image.Image
    items: tuple[Item, ...]
    scene: str
    caption: str

    @property
    def characters(self) -> list[str]:
        return sorted(i.name for i in self.items if cast.BY_NAME[i.name].kind == "character")

    @property
    def props(self) -> list[str]:
        return sorted(i.name for i in self.items if cast.BY_NAME[i.name].kind == "prop")


def render_photo(seed: int, index: int, size: tuple[int, int]) -> Photo:
    """Photo `index` of the show `seed` at `size` (width, height): the upright pixels and what is in them."""
    rng = np.random.default_rng([seed, index])
    scene = str(rng.choice(sorted(stage.SCENES)))
    image, st = stage.backdrop(scene, size, rng)
    chosen = rng.choice(len(cast.CAST), size=int(rng.integers(0, MAX_ITEMS + 1)), replace=False)
    items = _place([cast.CAST[int(i)].name for i in chosen], st, size, rng)
    for item in sorted(items, key=lambda i: i.box[3]):  # the nearer (lower) item is drawn over the farther
        _paste(image, item)
    stage.front(image, st, rng)
    image = _camera(_light(image, rng), rng)
    return Photo(image=image, items=tuple(items), scene=scene, caption=caption(items, scene, rng))


def _place(names: list[str], st: stage.Stage, size: tuple[int, int], rng: np.random.Generator) -> list[Item]:
    placed: list[Item] = []
    for name in names:
        for _ in range(30):  # a free spot for most shows; the last try is kept however it overlaps
            item = _spot(name, st, size, rng)
            if all(_overlap(item.box, other.box) <= MAX_OVERLAP for other in placed):
                break
        placed.append(item)
    return placed


def _spot(name: str, st: stage.Stage, size: tuple[int, int], rng: np.random.Generator) -> Item:
    w, h = size
    character = cast.BY_NAME[name].kind == "character"
    height = h * rng.uniform(0.38, 0.68) if character else h * rng.uniform(0.16, 0.32)
    box_w, box_h = cast.CHARACTER_BOX if character else cast.PROP_BOX
    width = height * box_w / box_h
    x = rng.uniform(st.left + 0.2 * width, w - st.right - 0.2 * width) - width / 2
    bottom = rng.uniform(st.floor_top + 0.05 * h, h - st.ground_row + 0.25 * height)
    angle = float(rng.uniform(-18, 18))
    return Item(name, (int(x), int(bottom - height), int(x + width), int(bottom)), angle)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter / max(1, smaller)


def _paste(image: Image.Image, item: Item) -> None:
    x0, y0, x1, y1 = item.box
    art = cast.master(item.name).resize((max(1, x1 - x0), max(1, y1 - y0)), Image.Resampling.LANCZOS)
    shadow = Image.new("RGBA", art.size, (0, 0, 0, 90))
    shadow.putalpha(art.getchannel("A").point(lambda a: a * 90 // 255))
    art = art.rotate(item.angle, Image.Resampling.BICUBIC, expand=True)
    shadow = shadow.rotate(item.angle, Image.Resampling.BICUBIC, expand=True)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    at = (cx - art.width // 2, cy - art.height // 2)
    offset = max(2, (y1 - y0) // 40)
    image.paste(shadow, (at[0] + offset, at[1] + offset), shadow)
    image.paste(art, at, art)


def _light(image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """Stage lighting: overall brightness, a colour cast, a spotlight's pool and the lens's vignette."""
    w, h = image.size
    pixels = np.asarray(image, dtype=np.float32)
    cast_gain = rng.uniform(0.85, 1.15, size=3).astype(np.float32) * np.float32(rng.uniform(0.65, 1.15))
    ys, xs = np.ogrid[0:h, 0:w]
    x, y = (xs / w).astype(np.float32), (ys / h).astype(np.float32)
    sx, sy, spread = rng.uniform(0.25, 0.75), rng.uniform(0.3, 0.8), rng.uniform(0.25, 0.6)
    spot = 0.7 + 0.45 * np.exp(-((x - sx) ** 2 + (y - sy) ** 2) / (2 * spread**2))
    vignette = 1 - rng.uniform(0.1, 0.45) * ((x - 0.5) ** 2 + (y - 0.5) ** 2) * 2
    pixels *= (spot * vignette)[:, :, None] * cast_gain
    return pixels


def _camera(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Focus blur and sensor noise, scaled to the photo's size so a small render looks like a large one shrunk."""
    h = pixels.shape[0]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    radius = rng.uniform(0.0, 1.6) * h / 683
    if radius > 0.3:
        image = image.filter(ImageFilter.GaussianBlur(radius))
    sigma = np.float32(rng.uniform(1.5, 7.0))
    noisy = np.asarray(image, dtype=np.float32) + rng.standard_normal(pixels.shape, dtype=np.float32) * sigma
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def caption(items: list[Item], scene: str, rng: np.random.Generator) -> str:
    """One sentence from a template that names every item (characters first) and the scene."""
    if not items:
        return EMPTY_CAPTIONS[int(rng.integers(len(EMPTY_CAPTIONS)))].format(scene=scene)
    names = sorted((cast.BY_NAME[i.name].kind != "character", i.name) for i in items)
    words = [name if prop is False else f"the {name}" for prop, name in names]
    who = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    text = CAPTIONS[int(rng.integers(len(CAPTIONS)))].format(who=who, scene=scene)
    return text[0].upper() + text[1:]
