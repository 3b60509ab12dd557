"""Benchmark (needs an NVIDIA GPU and a CUDA build of llama-cpp-python): gpu_layers 0 vs -1 vs "auto".

The same 30 photos through the real engine in-process per setting; CPU (gpu_layers = 0) is the
baseline of the ratio. Figures come from the sidecars. Writes docs/benchmarks.md between the `gpu`
markers. Run: python -m bench.gpu   (with the CUDA llama_cpp importable)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

from bbsd import config, metrics
from bbsd.engine import prompt
from bbsd.engine.llama import compute
from bbsd.engine.registry import open_in_process
from bbsd.models import tiny as tiny_model
from bbsd.pipeline import Pipeline
from bbsd.sidecars import record as sidecar
from bench.results import machine, update_section

SETTINGS = (0, -1, "auto")


def run(layers, text: Path, mmproj: Path, tmp: Path) -> dict:
    inbox = tmp / f"in_{layers}"
    inbox.mkdir()
    photos = []
    for i in range(30):
        p = inbox / f"p{i}.jpg"
        Image.new("RGB", (1600, 1200), (i * 8, 90, 200 - i * 5)).save(p, quality=90)
        photos.append(p)
    cfg = tmp / f"c_{layers}.toml"
    cfg.write_text(f'[watch]\nfolders = ["{inbox}"]\n[model]\npath = "{text}"\nmmproj = "{mmproj}"\n'
                   f'[engine]\ngpu_layers = {json.dumps(layers)}\n[worker]\nisolate = false\n'
                   '[[characters]]\nname = "Baba Yaga"\n[[props]]\nname = "lantern"\n')
    s = config.load(cfg, environ={})
    labeler = open_in_process(s)
    pipeline = Pipeline(labeler, s, prompt.build(s.catalog))
    for p in photos:
        pipeline.process(p)
    pipeline.close()
    docs = [json.loads(sidecar.path_for(p).read_text()) for p in photos][5:]  # after warm-up
    return {"p50": statistics.median(d["timing_ms"]["total"] for d in docs),
            "inf": statistics.median(d["timing_ms"]["inference"] for d in docs),
            "rss": docs[-1]["memory_mb"]["rss"], "vram": docs[-1]["memory_mb"]["vram"]}


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    text, mmproj = tiny_model.write_pair(tmp / "models")
    rows = {str(layers): run(layers, text, mmproj, tmp) for layers in SETTINGS}
    auto = compute.gpu_layers("auto", text, mmproj, 4096)
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    base = rows["0"]["p50"]
    lines = ["| `gpu_layers` | total p50 | inference p50 | ratio to CPU | RSS | VRAM (NVML, this process) |",
             "|---|---|---|---|---|---|"]
    for key, label in (("0", "0 (CPU, baseline)"), ("-1", "-1 (all layers)"), ("auto", f'"auto" → {auto}')):
        r = rows[key]
        vram = f"{r['vram']:.0f} MB" if r["vram"] is not None else "null (no GPU in use)"
        lines.append(f"| {label} | {r['p50']:.0f} ms | {r['inf']:.0f} ms | {r['p50'] / base:.2f} | "
                     f"{r['rss']:.0f} MB | {vram} |")
    lines += ["", f"GPU: {gpu}; free VRAM {metrics.free_vram_mb():.0f} MB; backends {', '.join(compute.names())}. "
              f"Host: {machine()}. Tiny random-weight model, 30 photos of 1600×1200 per setting, in-process, "
              "p50 after 5 warm-up photos. A 0.4 MB model measures launch overhead, not a real model's speed."]
    update_section("gpu", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
