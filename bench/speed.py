"""Benchmark: time per photo of the engine with and without the cached prompt prefix, against
llama-cpp-python's plain `MTMDChatHandler` loop and bbsd end to end, in one run.

Everything runs on the same machine, model files, distinct photos, threads and output limit;
the figures that matter are the ratios against the baselines measured in the same run. The
models have random weights (labels are meaningless; loading, image encoding, grammar and
timing are real): the tiny test pair and, with `--shapes tiny,smol`, a pair with the text
and vision dimensions of SmolVLM-256M (f32, a LLaVA `mlp` projector, 256 image tokens).
Writes its table into docs/benchmarks.md between the `speed` markers.

Run: .venv/bin/python -m bench.speed [--photos 12] [--shapes tiny] [--catalogs 2,30]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

from bbsd import config, logs, prompt, tiny_model
from bench.results import machine, update_section

SHAPES = {
    "tiny": tiny_model.TinySpec(),
    # SmolVLM-256M's text model (576 wide, 30 layers, 9 heads) and a SigLIP-sized encoder
    # (768 wide, 12 layers) at 224 px / 14 px patches: 256 image tokens, as in the figures.
    "smol": tiny_model.TinySpec(n_embd=576, n_head=9, n_layer=30, n_ff=1536, v_embd=768, v_head=12, v_layer=12,
                                v_ff=3072, image_size=224, patch_size=14),
}


def photos(folder: Path, n: int) -> list[Path]:
    """Distinct photos (an identical image would flatter any cache keyed on pixels)."""
    out = []
    for i in range(n):
        img = Image.new("RGB", (1024, 768), (20 * i % 256, 90, 200 - 15 * i % 200))
        ImageDraw.Draw(img).ellipse((40 + 30 * i, 60, 400 + 20 * i, 500), fill=(250, 200 - 10 * i % 200, 30))
        path = folder / f"p{i:03d}.jpg"
        img.save(path, quality=90)
        out.append(path)
    return out


def catalog_toml(n: int) -> str:
    names = [f"Puppet {i}" for i in range(n // 2)], [f"prop {i}" for i in range(n - n // 2)]
    return "".join(f'[[characters]]\nname = "{c}"\ndescription = "a felt puppet with a painted face, number {i}"\n'
                   for i, c in enumerate(names[0])) + "".join(
        f'[[props]]\nname = "{p}"\ndescription = "a wooden stage prop, number {i}"\n' for i, p in enumerate(names[1]))


def write_config(folder: Path, models: tuple[Path, Path], n_catalog: int, max_tokens: int, extra: str = "") -> Path:
    inbox = folder / "inbox"
    inbox.mkdir(exist_ok=True)
    cfg = folder / "bench.toml"
    cfg.write_text(f'[watch]\nfolders = ["{inbox}"]\nsettle_seconds = 0.05\n'
                   f'[model]\npath = "{models[0]}"\nmmproj = "{models[1]}"\n'
                   f'[engine]\nimage_max_side = 768\nmax_output_tokens = {max_tokens}\n{extra}\n'
                   f'[service]\nstate_dir = "{folder / "state"}"\n[log]\nformat = "json"\nlevel = "warning"\n'
                   + catalog_toml(n_catalog))
    return cfg


def engine_loop(cfg: Path, images: list[Image.Image], prefix_cache: bool) -> list[dict]:
    """The bare engine in this process: what bbsd's worker does per photo, without the daemon."""
    from bbsd.engines import open_in_process

    settings = config.load(cfg, environ={"BBSD_ENGINE_PREFIX_CACHE": str(prefix_cache).lower()})
    labeler = open_in_process(settings)
    p = prompt.build(settings.catalog)
    rows = []
    try:
        for img in images:
            t0 = time.perf_counter()
            r = labeler.infer(img, p, attempt=0, cancelled=lambda: False)
            rows.append({"ms": (time.perf_counter() - t0) * 1000, "prompt": r.evaluated_tokens,
                         "out": r.output_tokens, "prompt_ms": r.encode_ms, "gen_ms": r.generate_ms})
    finally:
        labeler.close()
    return rows


def handler_loop(cfg: Path, images: list[Image.Image], max_tokens: int) -> list[dict]:
    """llama-cpp-python's own multimodal path: `MTMDChatHandler` + `create_chat_completion` per photo."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import MTMDChatHandler

    settings = config.load(cfg, environ={})
    p = prompt.build(settings.catalog)
    llama = settings.backend  # llama_backend.LlamaSettings
    llm = Llama(model_path=str(llama.path), n_ctx=llama.context_size, n_batch=2048,
                n_ubatch=2048, chat_handler=MTMDChatHandler(clip_model_path=str(llama.mmproj), verbose=False),
                n_threads=_threads(), verbose=False)
    rows = []
    try:
        for img in images:
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=92)
            url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
            t0 = time.perf_counter()
            out = llm.create_chat_completion(
                messages=[{"role": "system", "content": p.system},
                          {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                       {"type": "text", "text": p.user}]}],
                response_format={"type": "json_object", "schema": p.schema}, max_tokens=max_tokens, temperature=0.0)
            rows.append({"ms": (time.perf_counter() - t0) * 1000, "prompt": out["usage"]["prompt_tokens"],
                         "out": out["usage"]["completion_tokens"]})
    finally:
        llm.close()
    return rows


def daemon_run(cfg: Path, files: list[Path]) -> list[dict]:
    """bbsd end to end: `bbsd run` as in production; each photo renamed in, timed settled → sidecar."""
    import os
    import subprocess
    import sys

    from bbsd import sidecar

    inbox = config.load(cfg, environ={}).watch.folders[0]
    log = Path(cfg).with_suffix(".log")
    env = {**os.environ, "BBSD_LOG_LEVEL": "info"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bbsd", "run", "--config", str(cfg)], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
    try:
        _wait(lambda: "daemon.ready" in log.read_text(), 300)
        rows = []
        for f in files:
            target = inbox / f.name
            os.link(f, target)
            _wait(lambda t=target: sidecar.path_for(t).exists(), 300)
            doc = json.loads(sidecar.path_for(target).read_text())
            t = doc["timing_ms"]
            rows.append({"ms": t["total"] + t.get("queue_wait", 0.0), "prompt": doc["tokens"].get("evaluated"),
                         "out": doc["tokens"]["output"]})
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _wait(predicate, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError("benchmark step timed out")


def _threads() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or 1


def summary(rows: list[dict], warm: int = 2) -> dict:
    """Median over the photos after the first `warm` (load and the first prefix are not per-photo costs)."""
    rows = rows[warm:] or rows
    med = {k: statistics.median(r[k] for r in rows if r.get(k) is not None)
           for k in ("ms", "prompt", "out") if any(r.get(k) is not None for r in rows)}
    med["ms_per_out"] = statistics.median(r["ms"] / max(1, r["out"]) for r in rows)
    return med


def run_shape(shape: str, n_photos: int, catalogs: list[int], max_tokens: int, tmp: Path) -> list[str]:
    models = tiny_model.write_pair(tmp / f"models-{shape}", SHAPES[shape])
    (tmp / f"photos-{shape}").mkdir()
    files = photos(tmp / f"photos-{shape}", n_photos)
    from bbsd import imaging

    images = [imaging.decode(f, 768).image for f in files]
    lines = []
    for n in catalogs:
        folder = tmp / f"{shape}-{n}"
        folder.mkdir()
        cfg = write_config(folder, models, n, max_tokens)
        on, off = summary(engine_loop(cfg, images, True)), summary(engine_loop(cfg, images, False))
        handler = summary(handler_loop(cfg, images, max_tokens))
        bbsd = summary(daemon_run(cfg, files))
        for name, s in [("bbsd run (settled → sidecar)", bbsd), ("engine, prefix cached", on),
                        ("engine, prefix re-evaluated", off), ("MTMDChatHandler loop", handler)]:
            lines.append(f"| {shape} | {n} | {name} | {s['ms']:.0f} | {s.get('prompt', 0):.0f} | {s.get('out', 0):.0f} "
                         f"| {s['ms_per_out']:.1f} | {s['ms'] / on['ms']:.2f} | {s['ms'] / handler['ms']:.2f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=12)
    ap.add_argument("--shapes", default="tiny")
    ap.add_argument("--catalogs", default="2,30")
    ap.add_argument("--max-tokens", type=int, default=256)
    args = ap.parse_args()
    logs.configure("warning", "console")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            rows += run_shape(shape, args.photos, [int(c) for c in args.catalogs.split(",")], args.max_tokens,
                              Path(tmp))
    body = "\n".join([
        f"Machine: {machine()}. Threads: one per physical core. Photos: {args.photos} distinct 1024×768 JPEGs "
        f"per row, medians after the first two; output limit {args.max_tokens} tokens, temperature 0, reply "
        "grammar on in every row. Random-weight models: `tiny` is the test pair; `smol` has SmolVLM-256M's "
        "dimensions (f32). *prompt* = prompt tokens evaluated per photo (all of them for the handler).",
        "",
        "| shape | catalog entries | setup | ms / photo | prompt tokens | output tokens | ms / output token "
        "| × engine (cached) | × MTMDChatHandler |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    update_section("speed", body, "bench/speed.py")
    print(body)


if __name__ == "__main__":
    main()
