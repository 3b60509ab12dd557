"""What the benchmarks share: the model shapes they run, distinct camera-like photos, and the
configuration of a run (bench.speed, bench.steps, bench.sampler, bench.tiling); and the GPU's name.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from PIL import Image, ImageDraw

from bbsd.models import tiny as tiny_model

# Replies of a real model's length: random weights otherwise write every string and list to its cap
# (600 tokens a photo), where a captioner writes a name or two and a short caption. Blocks spread
# little (the output layer's bias column then steers) and closing quotes and brackets favoured: about
# 100 tokens a photo ({"characters":["Puppet 0"],"props":["prop 2"],"caption":"([2",…}).
REPLY = {"block_scale": 0.005, "close_bias": 0.3}
SHAPES = {
    "tiny": tiny_model.TinySpec(),
    # SmolVLM-256M's text model (576 wide, 30 layers, 9 heads, 3 KV heads, 49,152 tokens), f16 as the
    # issue measured it, and a SigLIP-sized encoder (768 wide, 12 layers) at 224 px / 14 px patches:
    # 256 image tokens.
    "smol": tiny_model.TinySpec(n_embd=576, n_head=9, n_head_kv=3, n_layer=30, n_ff=1536, v_embd=768, v_head=12,
                                v_layer=12, v_ff=3072, image_size=224, patch_size=14, f16=True, n_vocab=49_152,
                                **REPLY),
    # A 2B-class LLaVA-style pair: CLIP-L/336 (1024 wide, 24 layers, 576 image tokens) and a
    # Qwen2-1.5B-sized text model (1536 wide, 28 layers, 12 heads, 2 KV heads, 151,936 tokens), f16.
    "2b": tiny_model.TinySpec(n_embd=1536, n_head=12, n_head_kv=2, n_layer=28, n_ff=8960, v_embd=1024, v_head=16,
                              v_layer=24, v_ff=4096, image_size=336, patch_size=14, f16=True, n_vocab=151_936,
                              **REPLY),
}


PHOTO_SIZE = (2600, 1976)  # the camera exports; a photo's size is part of what every setup pays for


def photos(folder: Path, n: int, start: int = 0, size: tuple[int, int] = PHOTO_SIZE) -> list[Path]:
    """Distinct photos, oldest first (an identical image would flatter any cache keyed on pixels).

    Camera-like: full size with sensor-like grain, so the JPEG is megabytes and decoding it costs
    what a real photo's does (a flat synthetic image compresses to kilobytes and decodes for free).
    """
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    grain = np.random.default_rng(7).normal(0, 14, (size[1] + 64, size[0] + 64, 3)).astype(np.int16)
    out = []
    w, h = size
    for i in range(start, start + n):
        img = Image.new("RGB", size, (20 * i % 256, (90 + 7 * i) % 256, 200 - 15 * i % 200))
        x0 = w // 25 + w // 34 * (i % 20)
        ImageDraw.Draw(img).ellipse((x0, h // 12, x0 + w // 3 + w // 50 * (i % 25), h * 2 // 3),
                                    fill=(250, 200 - 10 * i % 200, 30 + i % 200))
        dx, dy = (i * 7) % 64, (i * 13) % 64  # the grain shifted per photo: distinct pixels everywhere
        pixels = np.asarray(img, dtype=np.int16) + grain[dy:dy + h, dx:dx + w]
        path = folder / f"p{i:04d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i))  # mtime order = arrival order
        out.append(path)
    return out


def catalog_toml(n: int) -> str:
    names = [f"Puppet {i}" for i in range(n // 2)], [f"prop {i}" for i in range(n - n // 2)]
    return "".join(f'[[characters]]\nname = "{c}"\ndescription = "a felt puppet with a painted face, number {i}"\n'
                   for i, c in enumerate(names[0])) + "".join(
        f'[[props]]\nname = "{p}"\ndescription = "a wooden stage prop, number {i}"\n' for i, p in enumerate(names[1]))


def write_config(folder: Path, models: tuple[Path, Path], n_catalog: int, args, extra: str = "",
                 parallel: int = 0) -> Path:
    inbox = folder / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    cfg = folder / "bench.toml"
    cfg.write_text(f'[watch]\nfolders = ["{inbox}"]\nsettle_seconds = 0.05\n'
                   f'[model]\npath = "{models[0]}"\nmmproj = "{models[1]}"\n'
                   f'[engine]\nimage_max_side = 768\nmax_output_tokens = {args.max_tokens}\n'
                   f'threads = {args.threads}\ngpu_layers = {args.gpu_layers}\ncontext_size = {args.n_ctx}\n'
                   f'parallel = {parallel}\n'
                   f'[worker]\nrecycle_after_photos = 0\nrecycle_rss_growth_mb = 0\n{extra}\n'
                   f'[service]\nstate_dir = "{folder / "state"}"\n[log]\nformat = "json"\nlevel = "warning"\n'
                   + catalog_toml(n_catalog))
    return cfg


def gpu() -> str:
    """The first GPU's name, driver and memory (nvidia-smi), or "no GPU"."""
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 else "no GPU"
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "no GPU"
