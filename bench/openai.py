"""Throughput with N requests in flight on one llama-server (N parallel slots) against N = 1, same run.

Runs the tiny test model in a llama-server built by build/llama-server.sh and drives it through
the real `openai` backend (OpenAILabeler, N threads), so the figure includes bbsd's JPEG encoding
and HTTP client. Writes the table into docs/benchmarks.md.  `python -m bench.openai [--photos 40]`
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

from bbsd import config
from bbsd.engine import prompt
from bbsd.engine.openai.backend import OpenAILabeler
from bbsd.models import tiny as tiny_model
from bench.results import machine, update_section
from tests.fakes.servers import LlamaServer

REPO = Path(__file__).resolve().parents[2]


def run(binary: Path, models, folder: Path, n: int, photos: int) -> float:
    server = LlamaServer(binary, models, folder / f"server-{n}.log", slots=n)
    try:
        settings = config.load(_config(folder, server.url, n), environ={})
        labeler = OpenAILabeler(settings.backend)
        p = prompt.build(settings.catalog)
        images = [Image.new("RGB", (256, 192), (i * 5 % 255, 80, 120)) for i in range(photos)]
        labeler.infer(images[0], p, attempt=0, cancelled=lambda: False)  # warm-up
        todo, lock = list(images), threading.Lock()

        def work():
            while True:
                with lock:
                    if not todo:
                        return
                    image = todo.pop()
                labeler.infer(image, p, attempt=0, cancelled=lambda: False)
        t0 = time.perf_counter()
        threads = [threading.Thread(target=work) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return photos / (time.perf_counter() - t0)
    finally:
        server.stop()


def _config(folder: Path, url: str, n: int) -> Path:
    """One endpoint with `n` requests in flight, a catalog of two (the labels do not matter)."""
    cfg = folder / f"openai-{n}.toml"
    cfg.write_text(f'[watch]\nfolders = ["{folder}"]\n[engine]\nbackend = "openai"\nimage_max_side = 256\n'
                   f'[openai]\n[[openai.endpoints]]\nurl = "{url}"\nmodel = "tiny"\nin_flight = {n}\n'
                   f'[service]\nstate_dir = "{folder / "state"}"\n'
                   '[[characters]]\nname = "Baba Yaga"\ndescription = "old witch puppet"\n'
                   '[[props]]\nname = "lantern"\ndescription = "brass hand lantern"\n')
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=40)
    ap.add_argument("--n", type=int, default=4)
    args = ap.parse_args()
    binary = Path(subprocess.run([str(REPO / "build" / "llama-server.sh")], capture_output=True, text=True,
                                 check=True).stdout.strip())
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        models = tiny_model.write_pair(folder)
        one = run(binary, models, folder, 1, args.photos)
        many = run(binary, models, folder, args.n, args.photos)
    body = ("| in flight (= slots) | photos/s | ratio |\n|---|---|---|\n"
            f"| 1 | {one:.2f} | 1.00 |\n| {args.n} | {many:.2f} | {many / one:.2f} |\n\n"
            f"Tiny model, one llama-server on 127.0.0.1, {args.photos} photos each; {machine()}.")
    update_section("openai", body)
    print(body)


if __name__ == "__main__":
    main()
