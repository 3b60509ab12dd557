"""Benchmark: greedy sampling under the reply grammar with a real model's vocabulary (152k tokens).

Two figures, each against its baseline in the same run:
  1. per photo, the tiny model's body with Qwen2's 151,936-token vocabulary: the grammar masking
     the whole vocabulary at every sampled token (llama.cpp's sampler chain, the baseline) against
     bbsd's `Sampler.greedy_pick` (the unconstrained best token, else the best allowed one among the
     strongest logits); both give the same replies (tests/engine/test_engine.py);
  2. per call, picking those strongest logits: a partial sort of the whole vocabulary (baseline)
     against bbsd's `_band`, at three spreads of the logits (a random model's logits can lie close
     together; a band "within 30 of the best" then held the whole vocabulary and cost 1.5 ms a call,
     which made the H200 run of 2026-12-01 02:09 slower per photo: bench/speed.py's 2b table).

Run: .venv/bin/python -m bench.sampler
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import timeit
from dataclasses import replace
from pathlib import Path

from bbsd import logs
from bbsd.models import tiny as tiny_model
from bench.results import machine, update_section
from bench.speed import engine_loop, photos, write_config


def per_photo(tmp: Path, n_photos: int) -> dict[str, tuple[float, int]]:
    from bbsd.engine.llama.sampler import Sampler
    from bbsd.photo import decode as imaging

    models = tiny_model.write_pair(tmp / "m", replace(tiny_model.TinySpec(), n_vocab=151_936))
    cfg = write_config(tmp / "c", models, 5, argparse.Namespace(max_tokens=1024, threads=0, gpu_layers=0,
                                                                 n_ctx=4096))
    images = [imaging.decode(f, 768).image for f in photos(tmp / "ph", n_photos, size=(1024, 768))]
    pick, out = Sampler.greedy_pick, {}
    try:
        for name, fast in (("whole vocabulary masked (llama.cpp's chain)", False), ("bbsd: greedy_pick", True)):
            Sampler.greedy_pick = pick if fast else (lambda self, logits: None)
            rows = engine_loop(cfg, images, prefix_cache=True)[2:]  # after two warm-up photos
            out[name] = (statistics.median(r["ms"] for r in rows), rows[-1]["sampled"])
    finally:
        Sampler.greedy_pick = pick
    return out


def per_call() -> list[tuple[float, float, float]]:
    import numpy as np

    from bbsd.engine.llama.sampler import Sampler

    s = Sampler.__new__(Sampler)
    rows = []
    for spread in (3.0, 10.0, 40.0):
        logits = np.random.default_rng(0).normal(0, spread, 151_936).astype(np.float32)
        best = int(logits.argmax())
        full = timeit.timeit(lambda x=logits: np.argpartition(x, -256)[-256:], number=300) / 300 * 1000
        band = timeit.timeit(lambda x=logits, b=best: s._candidates(x, b), number=300) / 300 * 1000
        rows.append((spread, full, band))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=8)
    args = ap.parse_args()
    logs.configure("warning", "console")
    with tempfile.TemporaryDirectory() as d:
        photo = per_photo(Path(d), args.photos)
    base = next(iter(photo.values()))[0]
    lines = ["| tiny model, 151,936-token vocabulary, per photo | median ms | sampled tokens | ratio |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {ms:.0f} | {n} | {ms / base:.2f} |" for name, (ms, n) in photo.items()]
    lines += ["", "| picking the strongest of 151,936 logits, per call | partial sort (baseline) ms | bbsd `_band` ms "
              "| ratio |", "|---|---|---|---|"]
    lines += [f"| logits spread (std) {spread:g} | {full:.3f} | {band:.3f} | {band / full:.2f} |"
              for spread, full, band in per_call()]
    body = "\n".join(lines + ["", f"Machine: {machine()}. Medians after two warm-up photos of {args.photos}; "
                                  "per call: mean of 300."])
    update_section("sampler", body)
    print(body)


if __name__ == "__main__":
    main()
