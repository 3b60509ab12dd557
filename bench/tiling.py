"""Benchmark: InternVL photos tiled as InternVL tiles them (bbsd's fit, bbsd/tiling.py) against llama.cpp's own
slicing (the photo handed as it is), in the same run, per photo shape and size.

The model is the InternVL2.5-1B-shaped tiny checkpoint of the tests (InternViT + mlp1 + Qwen2, random weights)
with InternVL's real 448-px tile (the tests use 56 px), converted by `bbsd models convert`, so the image
tokens are the real model's (256 a tile); the times are this tiny model's on this machine, and they matter
only as the ratio of the two rows of a photo. Each photo is labelled both ways, alternately, with distinct
pixels each time. Writes its table into docs/benchmarks.md between the `tiling` markers.

Run: .venv/bin/python -m bench.tiling [--repeat 5] [--sides 768,2048]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bbsd import config, logs
from bbsd.engine import prompt
from bbsd.engine.llama import families, tiling
from bench.results import machine, update_section

REPO = Path(__file__).resolve().parents[2]
TILE = 448
SHAPES = [(3, 2), (2, 3), (4, 3), (16, 9), (1, 1), (4, 1)]


def convert(tmp: Path) -> tuple[Path, Path]:
    """The tests' InternVL2.5-1B-shaped checkpoint at 448-px tiles, through `bbsd models convert` (F16)."""
    from tests import tiny_checkpoint

    tiny_checkpoint.VISION = {**tiny_checkpoint.VISION, "image_size": TILE}
    ck = tiny_checkpoint.internvl2_5_1b(tmp / "InternVL2_5-1B")
    out = tmp / "gguf_models"
    out.mkdir()
    (out / "models.toml").write_bytes((REPO / "gguf_models" / "models.toml").read_bytes())
    subprocess.run([sys.executable, "-m", "bbsd", "models", "convert", str(ck.path), "--out", str(out),
                    "--quant", "F16"], check=True, capture_output=True, timeout=900)
    return out / "InternVL2_5-1B-F16.gguf", out / "mmproj-InternVL2_5-1B-F16.gguf"


def photo(size: tuple[int, int], seed: int) -> Image.Image:
    """Distinct pixels per call (nothing may flatter a cache): a gradient with grain."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (w + h)], axis=-1)
    return Image.fromarray((base + rng.integers(-20, 20, (h, w, 3))).clip(0, 255).astype(np.uint8))


def shaped(side: int, shape: tuple[int, int]) -> tuple[int, int]:
    cols, rows = shape
    return (side, round(side * rows / cols)) if cols >= rows else (round(side * cols / rows), side)


def measure(labeler, asked, size: tuple[int, int], repeat: int) -> dict[str, dict]:
    """Image tokens and times of one photo size, with llama.cpp's own slicing ("before") and bbsd's fit."""
    fit = labeler.fit
    ways = {"before": families.AS_IS, "after": fit}
    out = {name: {"tokens": 0, "encode": [], "total": [], "reply": []} for name in ways}
    for name, way in ways.items():
        labeler.fit = way
        out[name]["tokens"] = labeler.layout(asked, photo(size, 0))["image"]
    for i in range(repeat):
        for name, way in ways.items():
            labeler.fit = way
            t0 = time.perf_counter()
            r = labeler.infer(photo(size, i + 1), asked, attempt=0, cancelled=lambda: False)
            out[name]["total"].append((time.perf_counter() - t0) * 1000)
            out[name]["encode"].append(r.encode_ms)
            out[name]["reply"].append(r.output_tokens)
    labeler.fit = fit
    return out


def row(side: int, shape: tuple[int, int], size: tuple[int, int], m: dict) -> tuple[str, dict]:
    med = {k: {part: statistics.median(v[part]) for part in ("encode", "total", "reply")} for k, v in m.items()}
    b, a = ({**m[k], **med[k]} for k in ("before", "after"))
    grid = tiling.Tiling(TILE).grid(*size)
    text = (f"| {shape[0]}:{shape[1]} at {side} px ({size[0]}×{size[1]}) | {b['tokens'] // 256} | {b['tokens']:,} "
            f"| {b['encode']:.0f} | {b['total']:.0f} ({b['reply']:.0f}) | {grid[0]}×{grid[1]} → {a['tokens'] // 256} "
            f"| {a['tokens']:,} | {a['encode']:.0f} | {a['total']:.0f} ({a['reply']:.0f}) "
            f"| **{a['tokens'] / b['tokens']:.2f}** | **{a['encode'] / b['encode']:.2f}** |")
    return text, {"tokens": (b["tokens"], a["tokens"]), "encode": (b["encode"], a["encode"])}


def total(side: int, figures: list[dict]) -> str:
    tokens = [sum(f["tokens"][i] for f in figures) for i in (0, 1)]
    encode = [sum(f["encode"][i] for f in figures) for i in (0, 1)]
    return (f"| all {len(figures)} shapes at {side} px | | {tokens[0]:,} | {encode[0]:.0f} | | | {tokens[1]:,} "
            f"| {encode[1]:.0f} | | **{tokens[1] / tokens[0]:.2f}** | **{encode[1] / encode[0]:.2f}** |")


def main() -> None:
    from bbsd.engine.registry import open_in_process
    from bench.speed import write_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sides", default="768,2048", help="the photos' longest sides ([engine] image_max_side)")
    args = ap.parse_args()
    logs.configure("warning", "console")
    sides = [int(s) for s in args.sides.split(",")]
    lines, totals = [], {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        models = convert(tmp)
        settings = config.load(write_config(tmp / "c", models, 5, argparse.Namespace(
            max_tokens=64, threads=0, n_ctx=8192, gpu_layers=0)), environ={})
        labeler = open_in_process(settings)
        try:
            asked = prompt.for_settings(settings)
            for side in sides:
                for shape in SHAPES:
                    size = shaped(side, shape)
                    text, figures = row(side, shape, size, measure(labeler, asked, size, args.repeat))
                    lines.append(text)
                    totals[side].append(figures)
                    print(text, flush=True)
        finally:
            labeler.close()
    summary = [total(side, figures) for side, figures in totals.items()]
    body = "\n".join([
        "| photo | llama.cpp alone: tiles | image tokens | encode ms | whole photo ms (reply tokens) "
        "| bbsd's fit: InternVL grid → tiles | image tokens | encode ms | whole photo ms (reply tokens) "
        "| image tokens after/before | encode after/before |",
        "|---|---|---|---|---|---|---|---|---|---|---|", *lines, *summary, "",
        f"Machine: {machine()}. The InternVL2.5-1B-shaped tiny checkpoint (random weights, 448-px tiles: 256 image "
        f"tokens a tile, thumbnail counted), `bbsd models convert --quant F16`; threads: all; max_output_tokens 64; "
        f"median of {args.repeat} distinct photos per row and way, the two ways alternating. Encode: resizing, "
        "slicing and encoding the image and evaluating the prompt (`encode_ms`); the whole photo adds the reply, "
        "whose length the random weights decide (in brackets), so only the encode ratio is the tiling's. "
        "Tokens are the real model's; the milliseconds are this tiny model's (its encoder is 32 wide, the real one "
        "1,024), so only the ratios carry over."])
    update_section("tiling", body, "bench/tiling.py")
    print(body)


if __name__ == "__main__":
    main()
