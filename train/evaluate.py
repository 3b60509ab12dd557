"""Measure trained toy weights with bbsd's real path: .npz → GGUF pair → `bbsd eval` on a held-out toy show.

    PYTHONPATH=. .venv/bin/python -m train.evaluate WEIGHTS.npz --seed 1000 --photos 100 --out /tmp/eval

Invariant: nothing of training is reused but the weights — the show is rendered to camera-like JPEGs
(EXIF orientations 1/3/6/8) from a seed training never saw, the config holds the toy cast as its catalog,
and the `bbsd` CLI labels the photos through its llama engine (grammar, jump-forward, its decoder);
the figures are eval.json's macro F1 for characters and props. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bbsd.models import twin as toy
from bbsd.study import toyshow

PHOTO_SIZE = (192, 128)  # as train/toyvlm.py renders its training photos


def config_text(text: Path, mmproj: Path, folder: Path) -> str:
    return f"""
[watch]
folders = [{json.dumps(str(folder / "inbox"))}]

[model]
path = {json.dumps(str(text))}
mmproj = {json.dumps(str(mmproj))}

[engine]
backend = "llama"
threads = 2

[service]
state_dir = {json.dumps(str(folder / "state"))}

{toyshow.catalog_toml()}
"""


def evaluate(npz: Path, seed: int, photos: int, out: Path) -> dict:
    """Macro F1 of characters and props (and the run's exit status) from `bbsd eval` on show `seed`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "inbox").mkdir(exist_ok=True)
    text, mmproj = toy.write_pair_from(npz, out / "model")
    manifest = toyshow.render_show(out / "show", seed, photos, PHOTO_SIZE, orientations=(1, 3, 6, 8))
    config = out / "config.toml"
    config.write_text(config_text(text, mmproj, out), encoding="utf-8")
    report = out / "report"
    done = subprocess.run([sys.executable, "-m", "bbsd", "eval", "--config", str(config), "--truth", str(manifest),
                           "--out", str(report)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bbsd eval failed ({done.returncode}): {done.stderr[-2000:]}")
    s = json.loads((report / "eval.json").read_text())["profiles"][0]
    return {"characters_f1": s["characters"]["macro"]["f1"], "props_f1": s["props"]["macro"]["f1"],
            "exact": s["exact"], "photos": s["photos"], "failed": s["failed"]}


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 2000) -> Path:
    """`html` as headless Chromium draws it, for the docs' worked example (look at it before committing)."""
    browser = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if browser is None:
        raise SystemExit("no headless Chromium: `make tools` installs chromium-headless-shell")
    png.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={width},{height}", f"--screenshot={png.resolve()}", html.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    return png


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("--seed", type=int, default=1000, help="the held-out toy show (training uses 0 by default)")
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--screenshot", type=Path, help="also draw eval.html with headless Chromium into this PNG")
    args = parser.parse_args(argv)
    print(json.dumps(evaluate(args.weights, args.seed, args.photos, args.out)))
    if args.screenshot:
        screenshot(args.out / "report" / "eval.html", args.screenshot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
