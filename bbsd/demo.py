"""`bbsd demo`: the daemon's real job on toy-show photos, with bbsd's toy model that sees.

Everything runs for real (watcher, settling, the contained decoder, llama.cpp, grammar, atomic
sidecars). The model is the toy VLM trained on the toy show (`bbsd.study.toyshow`, train/): it knows
only that synthetic cast, and the demo says so, then counts how many photos it labelled right against
the show's truth. It is never used unless asked for by name. Everything it writes stays inside its
folder (models, photos, inbox, status), and every run labels its photos afresh.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from bbsd.models import twin
from bbsd.sidecars import record as sidecar
from bbsd.study import toyshow

BANNER = ("DEMO: bbsd's toy model, trained on synthetic puppets (the toy show): it knows only this cast. "
          "A real show needs a real model: `bbsd models list`, then docs/stage/install.md, 'Use a real model'.")
SEED = 7  # the demo's own toy show: training uses show 0 and the held-out figure show 1000
PHOTOS = 8
SIZE = (1200, 800)  # camera-like 3:2, stored under EXIF orientations 1/3/6/8 as cameras do
CONFIG = """# Written by `bbsd demo`: bbsd's toy model, trained on the toy show's synthetic puppets only.
[watch]
folders = ["inbox"]
settle_seconds = 0.5

[model]
path = "models/{text}"
mmproj = "models/{mmproj}"

[service]
state_dir = "state"

[log]
format = "console"

"""


def sample_photos(folder: Path) -> Path:
    """The demo's toy-show photos in `folder`; returns the show's truth manifest."""
    return toyshow.render_show(folder, SEED, PHOTOS, SIZE, orientations=(1, 3, 6, 8))


def prepare(folder: Path) -> Path:
    """Write models, photos and config under `folder`; return the config path."""
    text, mmproj = twin.write_pair_from(twin.shipped("bpe"), folder / "models")
    sample_photos(folder / "photos")
    (folder / "inbox").mkdir(parents=True, exist_ok=True)
    config = folder / "config.toml"
    config.write_text(CONFIG.format(text=text.name, mmproj=mmproj.name) + toyshow.catalog_toml())
    return config


def main(folder: Path) -> None:
    from bbsd import config as config_mod
    from bbsd import logs
    from bbsd.engine import prompt
    from bbsd.engine.registry import open_labeler
    from bbsd.pipeline import Pipeline
    from bbsd.service.daemon import Daemon
    from bbsd.sidecars import xmp

    print(BANNER, flush=True)
    cfg = prepare(folder.resolve())
    settings = config_mod.load(cfg)
    logs.configure(settings.log.level, settings.log.format)
    pipeline = Pipeline(open_labeler(settings), settings, prompt.for_settings(settings))
    daemon = Daemon(settings, pipeline)
    thread = threading.Thread(target=daemon.run, name="bbsd-demo")
    thread.start()
    try:
        targets = _drop_photos(folder.resolve())
        _wait_for_sidecars(targets, deadline_s=120)
    finally:
        daemon.stop.set()
        thread.join()
        daemon.pipeline.close()
    truth = _truth(folder.resolve() / "photos")
    right = 0
    for photo in targets:
        doc = sidecar.read(photo)
        labels = (doc or {}).get("labels") or {}
        verdict, ok = _verdict(labels, truth[photo.name])
        right += ok
        print(f"\n{_short(photo)}\n  JSON {_short(sidecar.path_for(photo))}\n  XMP  "
              f"{_short(xmp.path_for(photo, settings.xmp.naming))}\n  "
              + json.dumps(labels or None, ensure_ascii=False) + f"\n  {verdict}")
    print(f"\nThe toy model named exactly the right characters and props on {right} of {len(targets)} photos.")
    me = own_command()
    print(f"\n{BANNER}\nRun it yourself: {me} run --config {_short(cfg)}\n"
          f"  then copy photos into {_short(folder / 'inbox')}; `{me} status --config {_short(cfg)}` in another "
          f"terminal shows it (its status file: {_short(daemon.monitor.status.path)})", flush=True)


def _truth(photos: Path) -> dict[str, dict]:
    lines = (photos / toyshow.MANIFEST).read_text(encoding="utf-8").splitlines()
    return {t["file"]: t for t in map(json.loads, lines)}


def _verdict(labels: dict, truth: dict) -> tuple[str, bool]:
    """`right`, or what the model missed and added, against the toy show's truth."""
    named = set(labels.get("characters", [])) | set(labels.get("props", []))
    there = set(truth["characters"]) | set(truth["props"])
    if named == there:
        return "right", True
    parts = [f"missed {', '.join(sorted(there - named))}" if there - named else "",
             f"not there: {', '.join(sorted(named - there))}" if named - there else ""]
    return "wrong: " + "; ".join(p for p in parts if p), False


def own_command() -> str:
    """How to start this same bbsd again from here: `bbsd` if that is on the PATH, else its path."""
    exe = Path(sys.argv[0])
    if exe.name == "__main__.py":  # python -m bbsd
        return f"{_short(Path(sys.executable))} -m bbsd"
    found = shutil.which("bbsd")
    if found and Path(found).resolve() == exe.resolve():
        return "bbsd"
    return str(_short(exe)) if exe.parent != Path() else f"./{exe}"


def _short(path: Path) -> str:
    """A path relative to the current folder when it is inside it, else absolute."""
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _drop_photos(folder: Path) -> list[Path]:
    """Copy the sample photos into the inbox, first removing a previous run's copies and sidecars,
    so every run labels them afresh (and nothing else in the inbox is touched)."""
    targets = []
    for src in sorted((folder / "photos").glob("*.jpg")):
        dst = folder / "inbox" / src.name
        for old in (dst, *dst.parent.glob(f"{dst.name}.*")):
            old.unlink(missing_ok=True)
        shutil.copyfile(src, dst)
        targets.append(dst)
    return targets


def _wait_for_sidecars(photos: list[Path], deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if all(sidecar.path_for(p).exists() for p in photos):
            return
        time.sleep(0.1)
    raise TimeoutError("demo photos were not labelled in time; see the log above")
