"""InternVL's own tiling, reached through llama.cpp: a photo is resized to the tile grid that InternVL's
`dynamic_preprocess` picks, so that libmtmd's slicer picks that same grid.

Invariants: `grid` is InternVL's `find_closest_aspect_ratio` step for step (its candidate order and its
tie rule included); `fit` returns an image of exactly (columns × tile, rows × tile) pixels, stretched as
InternVL stretches it (bicubic, no letterbox). Why that is enough, in the vendored llama.cpp
(tools/mtmd, llama-cpp-python 0.3.36):

  clip.cpp (INTERNVL): `hparams.preproc_min_tiles = 1; hparams.preproc_max_tiles = 12;`
      `get_u32(KEY_PREPROC_MIN_TILES, ...); get_u32(KEY_PREPROC_MAX_TILES, ...);`
      `set_internvl_dhr_res_candidates(model);`  -> every (a·tile, b·tile) with min <= a·b <= max
  mtmd-image.cpp, get_slice_instructions:
      `const bool has_slices = original_size.width > slice_size || original_size.height > slice_size;`
      no slices: the overview alone (one tile, no thumbnail, as InternVL does for a 1×1 grid)
  select_best_resolution: `if (effective_resolution > max_effective_resolution ||`
      `(effective_resolution == max_effective_resolution && wasted_area < min_wasted_area))`
      -> effective_resolution is capped at the image's own area, so an image of exactly a candidate's
      size reaches the cap there with wasted_area 0: that candidate, and no other, wins
  img_tool::resize: `if (dst.get_size() == src.get_size()) { // no resize needed, simple copy`
      -> the refined image is these pixels (its default PAD_CEIL would letterbox any other size)
  mtmd_image_preprocessor_internvl::preprocess: `// InternVL: slices first, then overview`
      -> tiles row by row, then the thumbnail (the overview: PAD_NONE, stretched to one tile)

One difference is left: llama.cpp makes the thumbnail from the fitted image, InternVL from the original
(two resamplings instead of one; the same pixels up to interpolation). And one assumption: min_num is 1
(every InternVL config's min_dynamic_patch); above 1 llama.cpp's candidates (b >= min) lack InternVL's 1×n grids.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd, inf
from pathlib import Path

from PIL import Image

MIN_NUM = 1  # clip.cpp's default, and InternVL's dynamic_preprocess default
MAX_NUM = 12  # InternVL's inference default (the model cards' load_image(max_num=12)), and clip.cpp's


@dataclass(frozen=True)
class Tiling:
    """A model's tiling: the tile's side in pixels and the fewest and most tiles of a grid (thumbnail aside)."""

    tile: int
    min_num: int = MIN_NUM
    max_num: int = MAX_NUM

    def grid(self, width: int, height: int) -> tuple[int, int]:
        """(columns, rows) that InternVL's dynamic_preprocess cuts a width × height image into."""
        return closest_grid(width, height, self.tile, self.min_num, self.max_num)

    def tiles(self, width: int, height: int) -> int:
        """Images the encoder sees: the grid's tiles, and the thumbnail when there is more than one."""
        cols, rows = self.grid(width, height)
        return cols * rows + (1 if cols * rows > 1 else 0)

    def costliest(self, side: int) -> tuple[int, int]:
        """A photo no longer than `side` that gets the most tiles (for sizing the context): a grid of the
        most tiles at its own aspect ratio, the squarest (landscape) of those no smaller grid shares a ratio
        with (a smaller one would win the tie on a small photo); 12 tiles: 4:3. The tile count follows the
        shape, not the pixels: at 448-px tiles a 768-px square gets 2×2 + thumbnail, 768×576 4×3 + thumbnail."""
        cols, rows = max(grids(self.min_num, self.max_num),
                         key=lambda g: (g[0] * g[1], gcd(*g) == 1, -abs(g[0] - g[1]), g[0]))
        return side, max(1, round(side * rows / cols))


def grids(min_num: int = MIN_NUM, max_num: int = MAX_NUM) -> list[tuple[int, int]]:
    """InternVL's candidate grids in its own order (a set sorted by tile count: ties keep the set's order,
    which the tie rule below can see)."""
    found = {(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
             if min_num <= i * j <= max_num}
    return sorted(found, key=lambda g: g[0] * g[1])


def closest_grid(width: int, height: int, tile: int, min_num: int = MIN_NUM,
                 max_num: int = MAX_NUM) -> tuple[int, int]:
    """InternVL's find_closest_aspect_ratio: the grid nearest the image's aspect ratio; of grids equally
    near, a later (larger) one when the image covers more than half of its pixels."""
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), inf
    for cols, rows in grids(min_num, max_num):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def fit(image: Image.Image, tiling: Tiling) -> Image.Image:
    """The image stretched to its InternVL grid (dynamic_preprocess's `image.resize((target_width,
    target_height))`, bicubic), so that llama.cpp cuts exactly those tiles."""
    cols, rows = tiling.grid(*image.size)
    size = (cols * tiling.tile, rows * tiling.tile)
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.BICUBIC)


def read(mmproj: Path) -> Tiling:
    """The tiling an mmproj GGUF asks for, with clip.cpp's defaults where it carries no tile limits
    (`bbsd models convert` writes them from the checkpoint's min/max_dynamic_patch)."""
    import gguf

    fields = gguf.GGUFReader(str(mmproj)).fields

    def get(key: str, default: int) -> int:
        return int(fields[key].contents()) if key in fields else default

    return Tiling(tile=get("clip.vision.image_size", 448), min_num=get("clip.vision.preproc_min_tiles", MIN_NUM),
                  max_num=get("clip.vision.preproc_max_tiles", MAX_NUM))
