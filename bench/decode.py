"""Benchmark: decoding a 24-megapixel JPEG to the model's input size, draft mode vs a full decode.

Both run in the same process on the same file; the figure that matters is the ratio.
Writes its table into docs/benchmarks.md between the `decode` markers.
Run: .venv/bin/python bench/decode.py [--repeat 7] [--side 768]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bbsd.photo import decode as imaging
from bench.results import machine, update_section


def make_photo(path: Path, size=(6000, 4000)) -> Path:
    """Photo-like content (gradients + texture + noise) so the JPEG compresses like a real one."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(0)
    r = 128 + 90 * np.sin(x / 400) * np.cos(y / 300)
    g = 128 + 80 * np.cos((x + y) / 500)
    b = 100 + 60 * np.sin(y / 200)
    img = np.stack([r, g, b], axis=-1) + rng.normal(0, 12, (h, w, 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=92)
    return path


def full_decode(path: Path, side: int) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        out = img.convert("RGB")
    out.thumbnail((side, side), Image.Resampling.BICUBIC)
    return out


def timed(fn, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--side", type=int, default=768)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photo = make_photo(Path(tmp) / "24mp.jpg")
        size_mb = photo.stat().st_size / 2**20
        assert imaging.decode(photo, args.side).image.size == full_decode(photo, args.side).size
        full = timed(lambda: full_decode(photo, args.side), args.repeat)
        draft = timed(lambda: imaging.decode(photo, args.side), args.repeat)
    rows = [
        f"| decode of a 24 MP JPEG (6000×4000, {size_mb:.1f} MB) to {args.side} px | median ms | ratio |",
        "|---|---|---|",
        f"| full decode, then resize (baseline) | {full:.0f} | 1.00 |",
        f"| bbsd: DCT-scaled decode (draft mode), then resize | {draft:.0f} | "
        f"{draft / full:.2f} (×{full / draft:.1f} faster) |",
        "",
        f"Machine: {machine()}. Python {platform.python_version()}, Pillow {Image.__version__}, "
        f"{args.repeat} runs each, median.",
    ]
    update_section("decode", "\n".join(rows))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
