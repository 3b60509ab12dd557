"""The toy show's cast: eight puppets and six props, each drawn procedurally as an RGBA sprite.

Invariant: a sprite depends only on its entry's name (no randomness, no clock), so every photo of
every show draws the same puppet the same way; entries differ by shape, colour, pattern and face
or silhouette, except the two look-alike pairs (`LOOKALIKES`), which differ in one detail only —
Vasilisa's braid is golden where Marya Morevna's is black, and the golden apple is gold where the
silver apple is silver. No character shares a name with a prop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageDraw

Colour = tuple[int, int, int]
CHARACTER_BOX = (200, 300)  # a sprite's canvas in drawing units (width, height)
PROP_BOX = (200, 200)
SUPERSAMPLE = 3  # drawn this many times larger, then scaled down: smooth edges at any size


@dataclass(frozen=True)
class Entry:
    """One member of the cast: its catalog name, kind, description and how it is drawn."""

    name: str
    kind: str  # "character" or "prop"
    description: str
    draw: Callable[[Pen], None]


class Pen:
    """ImageDraw in drawing units: every coordinate is scaled by SUPERSAMPLE."""

    def __init__(self, box: tuple[int, int]) -> None:
        self.image = Image.new("RGBA", (box[0] * SUPERSAMPLE, box[1] * SUPERSAMPLE), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.image)

    def _xy(self, points: list[float]) -> list[float]:
        return [p * SUPERSAMPLE for p in points]

    def ellipse(self, box: list[float], fill: Colour, outline: Colour | None = None, width: int = 0) -> None:
        self.draw.ellipse(self._xy(box), fill=fill, outline=outline, width=width * SUPERSAMPLE)

    def polygon(self, points: list[float], fill: Colour, outline: Colour | None = None, width: int = 0) -> None:
        self.draw.polygon(self._xy(points), fill=fill, outline=outline, width=width * SUPERSAMPLE)

    def rect(self, box: list[float], fill: Colour | None, outline: Colour | None = None, width: int = 0) -> None:
        self.draw.rectangle(self._xy(box), fill=fill, outline=outline, width=width * SUPERSAMPLE)

    def line(self, points: list[float], fill: Colour, width: int) -> None:
        self.draw.line(self._xy(points), fill=fill, width=width * SUPERSAMPLE, joint="curve")

    def arc(self, box: list[float], start: float, end: float, fill: Colour, width: int) -> None:
        self.draw.arc(self._xy(box), start, end, fill=fill, width=width * SUPERSAMPLE)

    def patterned(self, points: list[float], base: Colour, pattern: str, ink: Colour, step: int = 16) -> None:
        """Fill the polygon `points` with `base` and a pattern in `ink`: stripes, bars, dots, checks or patches."""
        layer = Pen((self.image.width // SUPERSAMPLE, self.image.height // SUPERSAMPLE))
        layer.rect([0, 0, layer.image.width, layer.image.height], base)
        w, h = layer.image.width // SUPERSAMPLE, layer.image.height // SUPERSAMPLE
        for i, y in enumerate(range(0, h, step)):
            for j, x in enumerate(range(0, w, step)):
                _PATTERNS[pattern](layer, x, y, step, ink, (i + j) % 2)
        mask = Image.new("L", self.image.size, 0)
        ImageDraw.Draw(mask).polygon(self._xy(points), fill=255)
        self.image.paste(layer.image, (0, 0), mask)


_PATTERNS: dict[str, Callable[[Pen, int, int, int, Colour, int], None]] = {
    "stripes": lambda p, x, y, s, ink, odd: p.rect([x, y, x + s, y + s // 3], ink),
    "bars": lambda p, x, y, s, ink, odd: p.rect([x + s // 3, y, x + s // 2, y + s], ink),
    "dots": lambda p, x, y, s, ink, odd: p.ellipse([x + s / 4, y + s / 4, x + 3 * s / 4, y + 3 * s / 4], ink),
    "checks": lambda p, x, y, s, ink, odd: odd and p.rect([x, y, x + s, y + s], ink),
    "patches": lambda p, x, y, s, ink, odd: odd and p.rect([x + 2, y + 2, x + s - 3, y + s - 5], ink, (40, 30, 20), 1),
    "plain": lambda p, x, y, s, ink, odd: None,
}

INK = (30, 25, 20)
SKIN = (238, 196, 160)


def _face(p: Pen, cx: float, cy: float, eye: Colour = INK, r: float = 5, smile: bool = True) -> None:
    for dx in (-14, 14):
        p.ellipse([cx + dx - r, cy - r, cx + dx + r, cy + r], eye)
    if smile:
        p.arc([cx - 14, cy + 4, cx + 14, cy + 24], 20, 160, INK, 3)


def _costume(p: Pen, base: Colour, pattern: str, ink: Colour, hem: float = 300) -> None:
    """The glove-puppet body every human character shares: arms and a patterned trapezoid gown."""
    p.line([65, 150, 25, 200], base, 16)
    p.line([135, 150, 175, 200], base, 16)
    p.ellipse([14, 190, 36, 212], SKIN)
    p.ellipse([164, 190, 186, 212], SKIN)
    p.patterned([70, 125, 130, 125, 170, hem, 30, hem], base, pattern, ink)


def draw_baba_yaga(p: Pen) -> None:
    _costume(p, (95, 70, 50), "patches", (150, 60, 40))
    p.polygon([100, 18, 165, 115, 35, 115], (200, 40, 40))  # the red shawl around the head
    p.ellipse([62, 45, 138, 125], (160, 178, 120))  # green-grey old face
    p.polygon([96, 72, 108, 76, 152, 108, 138, 118, 110, 100], (120, 140, 85), INK, 2)  # the long hooked nose
    p.patterned([100, 18, 135, 60, 65, 60], (200, 40, 40), "patches", (230, 180, 60), 12)
    _face(p, 100, 74, r=4, smile=False)
    p.arc([78, 96, 108, 116], 20, 160, INK, 3)
    p.rect([90, 104, 95, 112], (250, 240, 200))  # one tooth


def draw_koschei(p: Pen) -> None:
    p.polygon([100, 110, 185, 300, 15, 300], (20, 20, 25))  # the black cloak
    p.patterned([80, 140, 120, 140, 120, 260, 80, 260], (20, 20, 25), "stripes", (225, 220, 200), 14)  # ribs
    p.ellipse([65, 45, 135, 125], (235, 230, 210))  # the skull
    for dx in (-15, 15):
        p.ellipse([100 + dx - 10, 68, 100 + dx + 10, 90], INK)
    p.polygon([100, 92, 95, 102, 105, 102], INK)
    for x in range(84, 117, 8):
        p.rect([x, 108, x + 5, 117], (250, 250, 240), INK, 1)
    p.polygon([62, 52, 62, 18, 78, 36, 90, 12, 100, 34, 110, 12, 122, 36, 138, 18, 138, 52], (230, 185, 40), INK, 1)


def draw_kikimora(p: Pen) -> None:
    p.patterned([70, 125, 130, 125, 160, 300, 40, 300], (70, 110, 60), "dots", (170, 210, 90), 18)
    for i in range(11):  # ragged swamp hair
        x = 52 + i * 9.6
        p.line([x, 60, x - 10 + (i % 3) * 10, 150], (30, 70, 40), 7)
    p.ellipse([60, 40, 140, 125], (120, 170, 90))
    for dx in (-18, 18):
        p.ellipse([100 + dx - 13, 62, 100 + dx + 13, 88], (250, 220, 40))
        p.ellipse([100 + dx - 5, 69, 100 + dx + 5, 81], INK)
    p.arc([82, 92, 118, 118], 200, 340, INK, 3)


def draw_kot_bayun(p: Pen) -> None:
    grey, dark = (140, 140, 150), (60, 60, 70)
    p.line([150, 280, 185, 230, 175, 170], grey, 14)  # the tail
    p.patterned([55, 140, 145, 140, 170, 298, 30, 298], grey, "stripes", dark, 20)
    p.polygon([52, 40, 62, 85, 85, 60], grey)  # ears
    p.polygon([148, 40, 138, 85, 115, 60], grey)
    p.ellipse([50, 50, 150, 150], grey)
    for dx in (-20, 20):
        p.ellipse([100 + dx - 10, 82, 100 + dx + 10, 100], (90, 200, 80))
        p.ellipse([100 + dx - 3, 82, 100 + dx + 3, 100], INK)
    p.polygon([92, 110, 108, 110, 100, 120], (230, 130, 150))
    for side in (-1, 1):
        for dy in (-5, 3, 11):
            p.line([100 + side * 15, 118, 100 + side * 55, 112 + dy * 1.5], (240, 240, 240), 2)


def draw_firebird(p: Pen) -> None:
    for i, angle in enumerate(range(-50, 51, 20)):  # the flaming tail fans up and out
        x = 100 + angle * 1.6
        p.polygon([100, 230, x - 16, 40 + abs(angle), x + 16, 40 + abs(angle)],
                  (250, 200, 40) if i % 2 else (245, 110, 20))
        p.ellipse([x - 9, 60 + abs(angle), x + 9, 78 + abs(angle)], (200, 30, 40))
    p.patterned([60, 200, 100, 160, 140, 200, 130, 280, 70, 280], (220, 60, 30), "dots", (250, 190, 60), 12)
    p.ellipse([78, 130, 122, 172], (230, 80, 30))
    p.polygon([120, 146, 142, 152, 120, 158], (250, 210, 60))  # the beak
    p.polygon([88, 132, 92, 108, 100, 130, 108, 106, 112, 132], (250, 210, 60))  # the crest
    p.ellipse([100, 140, 110, 150], INK)


def draw_ivan(p: Pen) -> None:
    _costume(p, (60, 100, 200), "checks", (200, 215, 240))
    p.rect([35, 205, 165, 218], (240, 200, 40))  # the belt
    p.ellipse([62, 50, 138, 128], SKIN)
    p.polygon([62, 72, 138, 72, 125, 40, 75, 40], (235, 200, 80))  # straw hair
    p.polygon([68, 55, 132, 55, 120, 10, 92, 20], (210, 40, 40))  # red peasant cap
    _face(p, 100, 90)
    p.ellipse([70, 98, 82, 108], (240, 150, 140))
    p.ellipse([118, 98, 130, 108], (240, 150, 140))


def _maiden(p: Pen, braid: Colour) -> None:
    """Vasilisa and Marya Morevna: one puppet, told apart only by the braid's colour."""
    _costume(p, (200, 30, 50), "dots", (250, 240, 220))
    for y in range(70, 240, 17):  # the long braid down her left side
        p.ellipse([128, y, 152, y + 22], braid, INK, 1)
    p.ellipse([62, 50, 138, 128], SKIN)
    p.ellipse([70, 48, 130, 72], braid)  # the parted hair under the headdress
    p.polygon([60, 58, 140, 58, 130, 22, 100, 8, 70, 22], (230, 180, 40), INK, 1)  # the kokoshnik
    for x in (80, 100, 120):
        p.ellipse([x - 5, 30, x + 5, 40], (200, 30, 50))
    _face(p, 100, 90, eye=(40, 60, 140))


def draw_vasilisa(p: Pen) -> None:
    _maiden(p, (235, 190, 50))


def draw_marya_morevna(p: Pen) -> None:
    _maiden(p, (35, 30, 30))


def draw_lantern(p: Pen) -> None:
    brass = (190, 150, 60)
    p.arc([75, 5, 125, 55], 180, 360, brass, 6)  # the handle
    p.polygon([70, 45, 130, 45, 145, 65, 55, 65], brass, INK, 1)
    p.rect([62, 65, 138, 165], (255, 225, 120), brass, 5)  # glowing glass
    p.ellipse([88, 90, 112, 140], (255, 150, 30))
    p.ellipse([94, 108, 106, 138], (255, 245, 200))
    for x in (81, 100, 119):
        p.line([x, 68, x, 162], brass, 3)
    p.rect([55, 165, 145, 185], brass, INK, 1)


def draw_mortar(p: Pen) -> None:
    # Pale birch with dark iron hoops: in brown oak it was one more brown-orange blob beside the copper
    # samovar and the brass lantern at 96 px (F1 0.63 over 300 photos, taken for the samovar most).
    birch, iron = (226, 206, 168), (45, 45, 50)
    p.line([75, 130, 150, 5], (150, 105, 60), 14)  # the pestle
    p.ellipse([138, -2, 166, 22], (150, 105, 60))
    p.patterned([30, 70, 170, 70, 140, 180, 60, 180], birch, "bars", (196, 172, 130), 14)  # grain
    p.line([36, 100, 164, 100], iron, 9)  # the hoops
    p.line([48, 150, 152, 150], iron, 9)
    p.ellipse([30, 58, 170, 84], (70, 45, 25))
    p.rect([50, 180, 150, 195], iron)


def draw_spinning_wheel(p: Pen) -> None:
    red = (205, 35, 35)  # a broad bright rim and bold spokes: a thin ring vanished into the backdrop at 96 px
    p.line([100, 100, 40, 195], (120, 80, 40), 8)  # legs and the stand
    p.line([100, 100, 160, 195], (120, 80, 40), 8)
    p.line([30, 195, 170, 195], (120, 80, 40), 8)
    p.ellipse([22, 22, 178, 178], None, red, 22)  # the wheel and its spokes
    for dx, dy in ((75, 0), (53, 53), (0, 75), (-53, 53)):
        p.line([100 - dx, 100 - dy, 100 + dx, 100 + dy], (235, 190, 70), 8)
    p.ellipse([88, 88, 112, 112], (230, 190, 60))
    p.line([160, 40, 190, 5], (200, 160, 80), 5)
    p.ellipse([178, -5, 198, 25], (245, 245, 235))  # the flax on the distaff


def draw_samovar(p: Pen) -> None:
    copper = (200, 105, 50)
    p.rect([90, 5, 110, 30], (70, 70, 70))  # the chimney, a teapot on top
    p.ellipse([78, 0, 122, 22], (60, 120, 180))
    p.polygon([70, 30, 130, 30, 140, 50, 60, 50], copper, INK, 1)
    p.ellipse([40, 45, 160, 165], copper, INK, 1)
    p.patterned([42, 95, 158, 95, 158, 112, 42, 112], (230, 190, 60), "dots", (200, 40, 40), 10)  # the band
    p.arc([20, 70, 60, 120], 90, 270, (60, 40, 30), 6)  # handles
    p.arc([140, 70, 180, 120], 270, 90, (60, 40, 30), 6)
    p.line([100, 140, 100, 160, 125, 165], (90, 60, 30), 6)  # the tap
    p.polygon([70, 160, 130, 160, 145, 195, 55, 195], copper, INK, 1)


def _apple(p: Pen, body: Colour, shine: Colour) -> None:
    """The golden and the silver apple: one apple, told apart only by its metal."""
    p.line([100, 55, 108, 20], (100, 60, 30), 6)
    p.polygon([108, 35, 150, 15, 160, 35, 120, 45], (60, 150, 50))  # the leaf
    p.ellipse([35, 50, 165, 185], body, INK, 1)
    p.ellipse([55, 70, 85, 110], shine)


def draw_golden_apple(p: Pen) -> None:
    _apple(p, (225, 180, 40), (255, 240, 170))


def draw_silver_apple(p: Pen) -> None:
    _apple(p, (185, 188, 198), (245, 245, 250))


def _entry(name: str, kind: str, description: str) -> Entry:
    return Entry(name, kind, description, globals()["draw_" + name.lower().replace(" ", "_")])


CAST: tuple[Entry, ...] = (
    _entry("Baba Yaga", "character", "old witch puppet, green face, long hooked nose, red shawl, patched brown gown"),
    _entry("Koschei", "character", "skeleton king puppet, white skull, gold crown, black cloak with white ribs"),
    _entry("Kikimora", "character", "swamp spirit puppet, green face, big yellow eyes, ragged dark hair, spotted gown"),
    _entry("Kot Bayun", "character", "grey striped cat puppet, pointed ears, green eyes, white whiskers, curled tail"),
    _entry("Firebird", "character", "red and orange bird, golden crest and beak, a fan of flame-coloured tail"),
    _entry("Ivan", "character", "young peasant puppet, red pointed cap, straw hair, blue checked shirt, yellow belt"),
    _entry("Vasilisa", "character", "maiden puppet, gold headdress, red dotted gown, a long GOLDEN braid"),
    _entry("Marya Morevna", "character", "maiden puppet, gold headdress, red dotted gown, a long BLACK braid"),
    _entry("lantern", "prop", "brass hand lantern with a glowing yellow glass and a flame"),
    _entry("mortar", "prop", "pale birch-wood mortar with dark iron hoops and a pestle sticking out"),
    _entry("spinning wheel", "prop", "red spinning wheel with spokes on a wooden stand, flax on the distaff"),
    _entry("samovar", "prop", "copper samovar with handles, a tap, a patterned band and a blue teapot on top"),
    _entry("golden apple", "prop", "gold apple with a green leaf"),
    _entry("silver apple", "prop", "silver apple with a green leaf"),
)
BY_NAME = {e.name: e for e in CAST}
CHARACTERS = tuple(e.name for e in CAST if e.kind == "character")
PROPS = tuple(e.name for e in CAST if e.kind == "prop")
LOOKALIKES = (("Vasilisa", "Marya Morevna"), ("golden apple", "silver apple"))


@functools.lru_cache(maxsize=len(CAST))
def master(name: str) -> Image.Image:
    """The entry drawn SUPERSAMPLE times its canvas size (for photos up to camera size); do not modify it."""
    entry = BY_NAME[name]
    pen = Pen(CHARACTER_BOX if entry.kind == "character" else PROP_BOX)
    entry.draw(pen)
    return pen.image


def sprite(name: str) -> Image.Image:
    """The entry's RGBA sprite at its canvas size (CHARACTER_BOX or PROP_BOX)."""
    box = CHARACTER_BOX if BY_NAME[name].kind == "character" else PROP_BOX
    return master(name).resize(box, Image.Resampling.LANCZOS)
