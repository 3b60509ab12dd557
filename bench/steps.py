"""Where the engine's time goes: the bare engine labelling a burst at `parallel` N, split into the
parts of a photo (its prompt tokenized with the image preprocessed, the image encoded and evaluated,
the grammar sampler made) and the parts of a decode step (the forward pass in `llama_decode`, waited
for; each sequence's next tokens picked under the grammar and jump-forward; the rest).

Used by bench.speed for each `--parallel` N (and alone: `python -m bench.steps`); the figures say
whether a batch is held back by the kernels or by the work per photo and per sequence between them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from PIL import Image

from bbsd import config
from bbsd.engine import prompt
from bbsd.engine.llama import replies
from bench.fixtures import SHAPES, gpu, photos, write_config


class _Clock:
    """Time spent in wrapped calls, by part (each call waited for: the GPU may still be busy when a
    llama.cpp call returns)."""

    def __init__(self, sync) -> None:
        self.ms: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._sync = sync

    def wrap(self, part: str, fn, when=lambda *a, **kw: True):
        def timed(*args, **kwargs):
            if not when(*args, **kwargs):
                return fn(*args, **kwargs)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._sync()
                self.ms[part] = self.ms.get(part, 0.0) + (time.perf_counter() - t) * 1000
                self.calls[part] = self.calls.get(part, 0) + 1
        return timed


def engine_burst(cfg: Path, images: list[Image.Image], parallel: int, environ: dict | None = None) -> dict:
    """Label `images` together (`infer_many`, up to `parallel` at a time) after one warm-up photo:
    photos/s, decode steps, and where the time went (`per_photo` and `per_step` ms by part)."""
    from bbsd.engine.registry import open_in_process

    settings = config.load(cfg, environ={"BBSD_ENGINE_PARALLEL": str(parallel), **(environ or {})})
    labeler, p = open_in_process(settings), prompt.build(settings.catalog)
    advance = replies.Reply.advance
    try:
        labeler.infer_many([(images[0], p, 0)], cancelled=lambda: False)  # load, prefix, first kernels
        ctx = labeler._ctx  # our own engine's context (bbsd.llama_native), timed at its seams
        clock = _Clock(lambda: ctx._ll.llama_synchronize(ctx.ctx))
        ctx._decode = clock.wrap("decode", ctx._decode)
        ctx.tokenize = clock.wrap("tokenize", ctx.tokenize)
        ctx.eval_chunk = clock.wrap("image", ctx.eval_chunk, lambda chunk, *a, **kw: not chunk.is_text)
        made, make = [], clock.wrap("sampler", ctx.sampler)
        ctx.sampler = lambda *a: made.append(make(*a)) or made[-1]  # kept for their counts of full masks
        replies.Reply.advance = clock.wrap("pick", advance)
        t0 = time.perf_counter()
        results = labeler.infer_many([(im, p, 0) for im in images[1:]], cancelled=lambda: False)
        wall = (time.perf_counter() - t0) * 1000
    finally:
        replies.Reply.advance = advance
        labeler.close()
    n, steps = len(results), clock.calls.get("decode", 0)
    # `advance` ("pick") only chooses tokens (forced text included); the next step's `_decode` evaluates
    # them. The text after a photo's image is evaluated by `_decode` too.
    parts = {k: clock.ms.get(k, 0.0) for k in ("tokenize", "image", "sampler", "decode", "pick")}
    rest = wall - sum(parts.values())
    sampled = sum(r.sampled_tokens or 0 for r in results)
    return {"per_s": n * 1000 / wall, "steps": steps, "sampled": sampled / n,
            "masked": sum(s.masked for s in made) / max(1, sampled),
            "per_photo": {k: parts[k] / n for k in ("tokenize", "image", "sampler")},
            "per_step": {"decode": parts["decode"] / max(1, steps), "pick": parts["pick"] / max(1, steps),
                         "rest": rest / max(1, steps)}}


def row(shape: str, n: int, parallel: int, b: dict, one: dict | None) -> str:
    gain = f", {b['per_s'] / one['per_s']:.2f} × parallel 1" if one and parallel != 1 else ""
    ph, st = b["per_photo"], b["per_step"]
    return (f"| {shape} | bare engine, {n} photos at parallel {parallel}: {b['per_s']:.2f} photos/s{gain}. "
            f"A photo: tokenize and preprocess {ph['tokenize']:.1f} ms, image encoded and evaluated "
            f"{ph['image']:.1f} ms, sampler {ph['sampler']:.1f} ms. {b['steps']} decode steps, each: "
            f"llama_decode {st['decode']:.1f} ms, tokens picked {st['pick']:.1f} ms, the rest {st['rest']:.1f} ms; "
            f"{b['sampled']:.0f} tokens sampled a photo, {b['masked']:.0%} of them by masking the whole vocabulary "
            f"| | | | | | | |")


def main() -> None:
    """The 2b (or another) shape's engine alone, at each parallel level and setting given."""
    import tempfile

    from bbsd.models import tiny as tiny_model
    from bbsd.photo import decode as imaging

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="tiny")
    ap.add_argument("--photos", type=int, default=17)
    ap.add_argument("--parallel", default="1,8")
    ap.add_argument("--gpu-layers", type=int, default=0)
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE settings of a variant (repeatable: "
                    "KEY=V1 KEY=V2 … each run as its own variant)")
    ap.add_argument("--section", default="", help="also write the rows into this docs/benchmarks.md section")
    args = ap.parse_args()
    lines = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        models = tiny_model.write_pair(tmp / "m", SHAPES[args.shape])
        cfg = write_config(tmp / "c", models, 5, argparse.Namespace(max_tokens=1024, threads=0, n_ctx=4096,
                                                                     gpu_layers=args.gpu_layers))
        images = [imaging.decode(f, 768).image for f in photos(tmp / "ph", args.photos)]
        for variant in [None, *args.env]:
            env = dict([variant.split("=", 1)]) if variant else {}
            one = None
            for n in [int(v) for v in args.parallel.split(",")]:
                b = engine_burst(cfg, images, n, env)
                one = b if n == 1 else one
                lines.append(row(args.shape, len(images) - 1, n, b, one).replace(
                    " | bare engine,", f" | {variant or 'defaults'}: bare engine,", 1))
                print(lines[-1], flush=True)
    if args.section:
        from bench.results import machine, update_section

        update_section(args.section, f"Machine: {machine()}; GPU: {gpu()}; {args.photos} distinct 2600×1976 "
                       f"photos decoded to 768 px, catalog of 5, gpu_layers {args.gpu_layers}.\n\n"
                       "| shape | where the time goes | | | | | | | |\n|---|---|---|---|---|---|---|---|---|\n"
                       + "\n".join(lines),
                       "bench/steps.py")


if __name__ == "__main__":
    main()
