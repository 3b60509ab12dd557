"""Seeded, replayable mutations of real photo files: what a decoder meets on a bad day.

`corpus(folder, n, seed)` writes `n` files named `fz<seed>_<index>_<mutation>.<ext>`; the same
seed always gives the same bytes, so a failure is replayed with `BBSD_FUZZ_SEED`. Seeds are
real files: JPEGs with camera EXIF (orientation, capture time, maker notes), PNG, TIFF, WebP,
HEIC, a DNG that LibRaw opens, the images that ship inside installed PyPI packages (none of
today's dependencies ships one), and every file under `BBSD_FUZZ_CORPUS` (a folder of your
own camera files: `BBSD_FUZZ_CORPUS=~/card make fuzz`).
"""

from __future__ import annotations

import io
import os
import random
import struct
import sys
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"}


def _picture(size=(320, 240), seed=0) -> Image.Image:
    rng = random.Random(seed)
    img = Image.new("RGB", size, (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        draw.ellipse((x, y, x + 60, y + 40), fill=(rng.randrange(256), 200, rng.randrange(256)))
    return img


def _camera_exif(orientation: int = 6) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "BBS", "StageCam 5", orientation  # Make, Model, Orientation
    exif.get_ifd(0x8769)[0x9003] = "2026:11:25 19:30:00"  # DateTimeOriginal
    exif.get_ifd(0x8769)[0x927C] = b"MAKERNOTE" * 20  # a maker note blob, as cameras write
    return exif


def seeds() -> list[tuple[str, bytes]]:
    """(extension, bytes) of the clean files that are mutated."""
    out = []
    for fmt, ext, kwargs in [("JPEG", "jpg", {"exif": _camera_exif(), "quality": 85}),
                             ("JPEG", "jpg", {"progressive": True, "quality": 80}),
                             ("PNG", "png", {}), ("TIFF", "tif", {"exif": _camera_exif(3)}),
                             ("WEBP", "webp", {"quality": 70})]:
        buf = io.BytesIO()
        _picture(seed=len(out)).save(buf, fmt, **kwargs)
        out.append((ext, buf.getvalue()))
    try:
        import pillow_heif  # noqa: F401 - registers HEIF saving

        buf = io.BytesIO()
        _picture(seed=9).save(buf, "HEIF", quality=60)
        out.append(("heic", buf.getvalue()))
    except Exception:  # pragma: no cover - pillow-heif is a dependency
        pass
    out += _packaged_images()
    return out


def _packaged_images(limit: int = 6, max_bytes: int = 2_000_000) -> list[tuple[str, bytes]]:
    """Small images shipped inside installed packages, and the camera files in $BBSD_FUZZ_CORPUS."""
    found = []
    roots = [Path(p) for p in os.environ.get("BBSD_FUZZ_CORPUS", "").split(os.pathsep) if p]
    for path in sorted(p for root in roots for p in root.rglob("*") if p.is_file()):
        found.append((path.suffix.lower().lstrip(".") or "jpg", path.read_bytes()))
    for root in {Path(p) for p in sys.path if p.endswith("site-packages")}:
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() in PHOTO_SUFFIXES and path.is_file() and 200 < path.stat().st_size < max_bytes:
                found.append((path.suffix.lower().lstrip("."), path.read_bytes()))
                if len(found) >= limit:
                    return found
    return found


# --- mutations: each takes the bytes and a seeded RNG ---------------------------------------------

def flip_header(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(min(len(out), 2048))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def flip_anywhere(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 32)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randint(1, max(1, len(data) - 1))]


def absurd_dimensions(data: bytes, rng: random.Random) -> bytes:
    """Rewrite the declared width/height (JPEG SOF, PNG IHDR, TIFF tags) to huge or zero values."""
    out = bytearray(data)
    value = rng.choice([0, 1, 65535, 40000, 2**31 - 1])
    if out[:2] == b"\xff\xd8":
        for marker in (b"\xff\xc0", b"\xff\xc2"):
            i = out.find(marker)
            if i > 0:
                struct.pack_into(">HH", out, i + 5, value & 0xFFFF, rng.choice([value & 0xFFFF, 30000]))
    elif out[:8] == b"\x89PNG\r\n\x1a\n":
        struct.pack_into(">II", out, 16, value, rng.choice([value, 50000]))
    elif out[:2] in (b"II", b"MM"):
        _patch_tiff_entries(out, rng, tags={256, 257}, value=value)
    return bytes(out)


def bogus_ifd(data: bytes, rng: random.Random) -> bytes:
    """Point TIFF/EXIF IFD offsets and entry counts at nonsense."""
    out = bytearray(data)
    start = out.find(b"Exif\0\0") + 6 if out[:2] == b"\xff\xd8" else 0
    if start < 6 and out[:2] not in (b"II", b"MM"):
        return flip_header(data, rng)
    endian = "<" if out[start:start + 2] == b"II" else ">"
    choice = rng.randrange(3)
    if choice == 0:  # the first IFD offset past the end, or into itself
        struct.pack_into(endian + "I", out, start + 4, rng.choice([len(out) * 4, 0, 8, 2**32 - 1]))
    elif choice == 1:  # an absurd entry count
        ifd = struct.unpack_from(endian + "I", out, start + 4)[0]
        if start + ifd + 2 <= len(out):
            struct.pack_into(endian + "H", out, start + ifd, rng.choice([0xFFFF, 0, 4000]))
    else:
        _patch_tiff_entries(out, rng, tags=None, value=rng.choice([2**31, len(out) * 3, 0xFFFFFFFF]), base=start)
    return bytes(out)


def _patch_tiff_entries(out: bytearray, rng: random.Random, tags: set[int] | None, value: int, base: int = 0) -> None:
    endian = "<" if out[base:base + 2] == b"II" else ">"
    try:
        ifd = base + struct.unpack_from(endian + "I", out, base + 4)[0]
        count = struct.unpack_from(endian + "H", out, ifd)[0]
    except struct.error:
        return
    for i in range(min(count, 64)):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(out):
            return
        tag = struct.unpack_from(endian + "H", out, entry)[0]
        if (tags is None and rng.random() < 0.3) or (tags and tag in tags):
            struct.pack_into(endian + "HI", out, entry + 2, 4, rng.choice([1, value & 0xFFFFFFFF]))
            struct.pack_into(endian + "I", out, entry + 8, value & 0xFFFFFFFF)


def repeat_segment(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data))
    j = min(len(data), i + rng.randint(1, 512))
    return data[:j] + data[i:j] * rng.randint(2, 50) + data[j:]


MUTATIONS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "flip_header": flip_header, "flip_anywhere": flip_anywhere, "truncate": truncate,
    "dimensions": absurd_dimensions, "ifd": bogus_ifd, "repeat": repeat_segment,
}


def corpus(folder: Path, n: int, seed: int, extra_seeds: list[tuple[str, bytes]] = ()) -> list[Path]:
    """Write `n` mutated files into `folder` (not yet watched, or watched: both work)."""
    rng = random.Random(seed)
    pool = seeds() + list(extra_seeds)
    names = sorted(MUTATIONS)
    paths = []
    for i in range(n):
        ext, data = pool[i % len(pool)]
        kind = names[rng.randrange(len(names))]
        mutated = MUTATIONS[kind](data, random.Random(rng.random()))
        path = folder / f"fz{seed}_{i:04d}_{kind}.{ext}"
        path.write_bytes(mutated)
        paths.append(path)
    return paths
