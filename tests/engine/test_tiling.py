"""InternVL's tiling (bbsd/tiling.py) against InternVL's own dynamic_preprocess, copied below as published
(OpenGVLab's model cards, `load_image(max_num=12)`); the real llama.cpp's tile counts on fitted photos are
checked in test_convert.py (`test_the_engine_tiles_photos_as_internvl_does`)."""

from __future__ import annotations

import itertools
from pathlib import Path

import gguf
import pytest
from PIL import Image

from bbsd.engine.llama import families, tiling

# --- InternVL's code, verbatim (only the names' prefix added) ---------------------------------------------------

def internvl_find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    best_ratio_diff = float('inf')
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:  # noqa: SIM102 (InternVL's own lines)
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def internvl_dynamic_preprocess(image, min_num=1, max_num=12, image_size=448, use_thumbnail=False):
    orig_width, orig_height = image.size
    aspect_ratio = orig_width / orig_height

    # calculate the existing image aspect ratio
    target_ratios = set(
        (i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1) if
        i * j <= max_num and i * j >= min_num)
    target_ratios = sorted(target_ratios, key=lambda x: x[0] * x[1])

    # find the closest aspect ratio to the target
    target_aspect_ratio = internvl_find_closest_aspect_ratio(
        aspect_ratio, target_ratios, orig_width, orig_height, image_size)

    # calculate the target width and height
    target_width = image_size * target_aspect_ratio[0]
    target_height = image_size * target_aspect_ratio[1]
    blocks = target_aspect_ratio[0] * target_aspect_ratio[1]

    # resize the image
    resized_img = image.resize((target_width, target_height))
    processed_images = []
    for i in range(blocks):
        box = (
            (i % (target_width // image_size)) * image_size,
            (i // (target_width // image_size)) * image_size,
            ((i % (target_width // image_size)) + 1) * image_size,
            ((i // (target_width // image_size)) + 1) * image_size
        )
        # split the image
        split_img = resized_img.crop(box)
        processed_images.append(split_img)
    assert len(processed_images) == blocks
    if use_thumbnail and len(processed_images) != 1:
        thumbnail_img = image.resize((image_size, image_size))
        processed_images.append(thumbnail_img)
    return processed_images


# --- the grid ----------------------------------------------------------------------------------------------------

SIDES = [1, 7, 20, 24, 28, 40, 55, 56, 57, 79, 80, 96, 100, 150, 200, 299, 448, 600]


@pytest.mark.parametrize("max_num", [1, 2, 4, 6, 9, 12])
def test_the_grid_is_internvl_s_for_every_shape(max_num):
    """Every pair of these sides (aspect ratios from 1:600 to 600:1, exact ties among them) at a 56-px tile."""
    shape = tiling.Tiling(tile=56, max_num=max_num)
    for w, h in itertools.product(SIDES, SIDES):
        ratios = sorted({(i, j) for n in range(1, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                         if i * j <= max_num}, key=lambda x: x[0] * x[1])
        assert shape.grid(w, h) == internvl_find_closest_aspect_ratio(w / h, ratios, w, h, 56), (w, h)


def test_tiles_are_internvl_s_images_with_the_thumbnail():
    """The count is dynamic_preprocess's own list (thumbnail on, as InternVL's load_image calls it), and `fit`
    gives the very size it cuts its tiles from."""
    shape = tiling.Tiling(tile=28)
    for w, h in itertools.product([10, 28, 40, 60, 90, 200], repeat=2):
        image = Image.new("RGB", (w, h))
        theirs = internvl_dynamic_preprocess(image, max_num=12, image_size=28, use_thumbnail=True)
        assert shape.tiles(w, h) == len(theirs), (w, h)
        cols, rows = internvl_find_closest_aspect_ratio(w / h, tiling.grids(), w, h, 28)
        assert tiling.fit(image, shape).size == (cols * 28, rows * 28)


@pytest.mark.parametrize(("size", "grid", "tiles"), [
    ((6000, 4000), (3, 2), 7), ((768, 512), (3, 2), 7), ((4000, 3000), (4, 3), 13), ((768, 576), (4, 3), 13),
    ((768, 432), (2, 1), 3), ((1920, 1080), (4, 2), 9), ((768, 768), (2, 2), 5), ((448, 448), (1, 1), 1),
    ((300, 300), (1, 1), 1), ((4000, 4000), (3, 3), 10), ((8000, 2000), (4, 1), 5), ((2000, 8000), (1, 4), 5),
    ((4000, 6000), (2, 3), 7)])
def test_common_photos_at_448_px(size, grid, tiles):
    """The figures the README and the issue quote (a 3:2 photo: 3x2 + thumbnail, 7 tiles)."""
    shape = tiling.Tiling(tile=448)
    assert (shape.grid(*size), shape.tiles(*size)) == (grid, tiles)


@pytest.mark.parametrize("max_num", range(1, 13))
def test_the_costliest_photo_gets_the_most_tiles(max_num):
    shape = tiling.Tiling(tile=448, max_num=max_num)
    w, h = shape.costliest(768)
    most = max(c * r + (c * r > 1) for c, r in tiling.grids(1, max_num))
    assert max(w, h) <= 768 and shape.tiles(w, h) == most
    assert shape.tiles(w, h) >= max(shape.tiles(a, b) for a, b in itertools.product(range(32, 769, 16), repeat=2))


def test_the_default_costliest_is_a_4_3_photo():
    assert tiling.Tiling(tile=448).costliest(768) == (768, 576)


# --- the fit -----------------------------------------------------------------------------------------------------

def test_fit_stretches_without_a_letterbox():
    """InternVL stretches the photo to its grid: both halves of a 3:1 photo fill the 3x1 grid to its edges."""
    image = Image.new("RGB", (90, 30), (200, 0, 0))
    image.paste((0, 0, 200), (45, 0, 90, 30))
    image.info["bbsd_name"] = "probe"
    out = tiling.fit(image, tiling.Tiling(tile=56))
    assert out.size == (168, 56)
    assert out.getpixel((0, 0))[0] > 150 and out.getpixel((167, 55))[2] > 150
    assert out.getpixel((0, 55))[0] > 150 and out.getpixel((167, 0))[2] > 150
    assert out.info["bbsd_name"] == "probe"


def test_a_photo_already_on_its_grid_is_handed_as_it_is():
    image = Image.new("RGB", (168, 112))
    assert tiling.fit(image, tiling.Tiling(tile=56)) is image


# --- the mmproj's keys and the family table ----------------------------------------------------------------------

def _mmproj(path: Path, **keys: int) -> Path:
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_string("clip.projector_type", "internvl")
    for key, value in keys.items():
        writer.add_uint32(f"clip.vision.{key}", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_tiling_is_read_from_the_mmproj(tmp_path):
    got = tiling.read(_mmproj(tmp_path / "m.gguf", image_size=56, preproc_min_tiles=1, preproc_max_tiles=6))
    assert got == tiling.Tiling(tile=56, min_num=1, max_num=6)


def test_without_tile_limits_clip_cpp_s_defaults_apply(tmp_path):
    """Older conversions carry no min/max tiles; llama.cpp then uses 1 and 12, InternVL's inference default."""
    assert tiling.read(_mmproj(tmp_path / "m.gguf", image_size=448)) == tiling.Tiling(tile=448, min_num=1, max_num=12)


def test_only_internvl_is_fitted(tmp_path):
    assert families.for_projector("internvl").fit is tiling.fit
    for projector in ("mlp", "pixtral", "qwen2vl_merger", "gemma3", None):
        # no fit: the mmproj is not even read
        fit = families.fitter(families.for_projector(projector), tmp_path / "absent.gguf")
        image = Image.new("RGB", (300, 200))
        assert fit is families.AS_IS and fit(image) is image and fit.costliest(768) == (768, 768)


def test_the_internvl_fitter_uses_the_mmproj_s_tiles(tmp_path):
    fit = families.fitter(families.for_projector("internvl"), _mmproj(tmp_path / "m.gguf", image_size=56,
                                                                      preproc_max_tiles=4))
    # 3x2 would need 6 tiles: of grids of 4 or fewer, 1x1, 2x1 and 2x2 are equally near 3:2 and the tie goes
    # to the largest the photo covers more than half of
    assert fit(Image.new("RGB", (300, 200))).size == (112, 112)
    assert fit(Image.new("RGB", (40, 40))).size == (56, 56)
    assert fit.costliest(96) == (96, 24)  # 4 tiles at most: 4x1 (2x2 shares 1:1 with 1x1, which a small photo gets)
