"""`bbsd demo`: the daemon's real job on sample photos, with a tiny random-weight model.

Everything runs for real (watcher, settling, llama.cpp, grammar, atomic sidecars) except
the model's knowledge: its weights are random, so its labels are meaningless. It says so
loudly, and it is never used unless asked for by name. Everything it writes stays inside its
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

from PIL import Image, ImageDraw

from bbsd.models import tiny as tiny_model
from bbsd.sidecars import record as sidecar

BANNER = "DEMO: tiny random-weight model — labels are MEANINGLESS. See docs/stage/install.md, 'Use a real model'."
CONFIG = """# Written by `bbsd demo`. Uses a tiny random-weight model: labels are meaningless.
[watch]
folders = ["inbox"]
settle_seconds = 0.5

[model]
path = "models/{text}"
mmproj = "models/{mmproj}"

[engine]
image_max_side = 448

[service]
state_dir = "state"

[log]
format = "console"

[[characters]]
name = "Baba Yaga"
description = "old witch puppet, long nose, patched red shawl"

[[characters]]
name = "Koschei"
description = "skeletal puppet king, gold crown"

[[props]]
name = "lantern"
description = "brass hand lantern"

[[props]]
name = "mortar"
description = "wooden mortar and pestle Baba Yaga flies in"
"""


def sample_photos(folder: Path) -> list[Path]:
    """A few generated photos: a JPEG with EXIF orientation, a PNG with alpha, a WebP."""
    folder.mkdir(parents=True, exist_ok=True)
    shots = []
    for i, (color, fmt) in enumerate([((180, 40, 40), "JPEG"), ((40, 90, 160), "PNG"),
                                      ((60, 140, 60), "WEBP"), ((200, 170, 60), "JPEG")]):
        img = Image.new("RGBA" if fmt == "PNG" else "RGB", (640, 480), color)
        draw = ImageDraw.Draw(img)
        draw.ellipse((200, 120, 440, 360), fill=(240, 230, 210))
        draw.text((20, 20), f"BBS stage {i + 1}", fill=(255, 255, 255))
        path = folder / f"stage_{i + 1:02d}.{ {'JPEG': 'jpg', 'PNG': 'png', 'WEBP': 'webp'}[fmt] }"
        exif = Image.Exif()
        if i == 0:
            exif[0x0112] = 6  # rotate 90° on display
        img.save(path, fmt, exif=exif) if fmt != "PNG" else img.save(path, fmt)
        shots.append(path)
    return shots


def prepare(folder: Path) -> Path:
    """Write models, photos and config under `folder`; return the config path."""
    text, mmproj = tiny_model.write_pair(folder / "models")
    sample_photos(folder / "photos")
    (folder / "inbox").mkdir(parents=True, exist_ok=True)
    config = folder / "config.toml"
    config.write_text(CONFIG.format(text=text.name, mmproj=mmproj.name))
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
    for photo in targets:
        doc = sidecar.read(photo)
        print(f"\n{_short(photo)}\n  JSON {_short(sidecar.path_for(photo))}\n  XMP  "
              f"{_short(xmp.path_for(photo, settings.xmp.naming))}\n  "
              + json.dumps(doc.get("labels") if doc else None, ensure_ascii=False))
    me = own_command()
    print(f"\n{BANNER}\nRun it yourself: {me} run --config {_short(cfg)}\n"
          f"  then copy photos into {_short(folder / 'inbox')}; `{me} status --config {_short(cfg)}` in another "
          f"terminal shows it (its status file: {_short(daemon.monitor.status.path)})", flush=True)


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
    for src in sorted((folder / "photos").iterdir()):
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
