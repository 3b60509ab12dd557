"""Where a batch's time goes: the bare engine labelling a burst at `parallel` N, its decode steps
split into the forward pass (`llama_decode`, waited for) and everything around it (sampling under
the grammar, jump-forward, image encoding and prefill of photos joining the batch, Python).

Used by bench.speed for each `--parallel` N; the figures say whether a batch is held back by the
kernels or by the work per sequence between them.
"""

from __future__ import annotations

import time
from pathlib import Path

from PIL import Image

from bbsd import config, prompt


def engine_burst(cfg: Path, images: list[Image.Image], parallel: int) -> dict:
    """Label `images` together (`infer_many`, up to `parallel` at a time) after one warm-up photo:
    photos/s, decode steps, and ms per step in `llama_decode` and around it."""
    from bbsd.engines import open_in_process

    settings = config.load(cfg, environ={"BBSD_ENGINE_PARALLEL": str(parallel)})
    labeler, p = open_in_process(settings), prompt.build(settings.catalog)
    try:
        labeler.infer_many([(images[0], p, 0)], cancelled=lambda: False)  # load, prefix, first kernels
        ctx = labeler._ctx  # our own engine's context (bbsd.llama_native), timed at its one decode seam
        decode, spent = ctx._decode, [0, 0.0]

        def timed(parts):
            t = time.perf_counter()
            rows = decode(parts)
            ctx._ll.llama_synchronize(ctx.ctx)  # llama_decode may return before the GPU is done
            spent[0], spent[1] = spent[0] + 1, spent[1] + time.perf_counter() - t
            return rows

        ctx._decode = timed
        t0 = time.perf_counter()
        results = labeler.infer_many([(im, p, 0) for im in images[1:]], cancelled=lambda: False)
        wall = time.perf_counter() - t0
    finally:
        labeler.close()
    n = len(results)
    return {"per_s": n / wall, "steps": spent[0], "decode_ms": spent[1] * 1000 / max(1, spent[0]),
            "rest_ms": (wall - spent[1]) * 1000 / max(1, spent[0]),
            "sampled": sum(getattr(r, "sampled_tokens", 0) or 0 for r in results) / n}


def row(shape: str, n: int, parallel: int, b: dict, one: dict | None) -> str:
    gain = f", {b['per_s'] / one['per_s']:.2f} × parallel 1" if one and parallel != 1 else ""
    return (f"| {shape} | bare engine, {n} photos at parallel {parallel}: {b['per_s']:.2f} photos/s{gain}; "
            f"{b['steps']} decode steps, each {b['decode_ms']:.1f} ms in llama_decode + {b['rest_ms']:.1f} ms "
            f"around it (sampling; images encoded) | | | | | | | |")
