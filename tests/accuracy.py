"""The accuracy oracle's tools (tests/e2e/test_accuracy.py): one held-out toy show written every way a
photo reaches bbsd, labelled by the real `bbsd` CLI, scored with bbsd's own scoring.

Invariant: every variant of a show holds the same photos — photo i is `render_photo(seed, i, size)`'s
upright pixels and truth — and differs only in the path under test (container, orientation tag, stored
size); so a variant's macro F1 differs from the baseline's only by what that path does to the pixels.
Figures are macro F1 from `bbsd eval`'s eval.json, or for a daemon's burst `bbsd.study.scores` (the
function eval scores with) on the sidecars the daemon wrote.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bbsd.sidecars import record as sidecar
from bbsd.study import scores, toyshow
from bbsd.study.toyshow.show import STORED, TAG_ORIENTATION
from tests.conftest import SLACK, run_bbsd, write_dng

KINDS = ("characters", "props")
EVAL_S = 600  # one `bbsd eval` of a few profiles on 2 busy cores (stretched by SLACK)
# linear sRGB from CIE XYZ (D65): a DNG's ColorMatrix1 for a "camera" whose raw values are linear sRGB,
# so LibRaw develops the toy show's colours back (up to its gamma and auto-brightness, as for any raw)
XYZ_TO_SRGB = ((3.2404542, -1.5371385, -0.4985314), (-0.9692660, 1.8760108, 0.0415560),
               (0.0556434, -0.2040259, 1.0572252))


@dataclass(frozen=True)
class Figures:
    """Macro F1 for characters and props over `photos` photos, `failed` of them without a reply."""

    characters: float
    props: float
    photos: int
    failed: int

    def __str__(self) -> str:
        return f"characters {self.characters:.3f}, props {self.props:.3f} ({self.failed}/{self.photos} failed)"


def config_text(folder: Path, models: tuple[Path, Path] | None, watch: Path | None = None, extra: str = "") -> str:
    """A config with the toy cast as its catalog; one llama thread (on 2 shared cores a second thread's
    spin-waits cost 10x: 48 photos took 58 s at threads = 2, 5.6 s at 1, measured)."""
    model = f"[model]\npath = {json.dumps(str(models[0]))}\nmmproj = {json.dumps(str(models[1]))}\n" if models else ""
    engine = "" if "[engine]" in extra else '[engine]\nbackend = "llama"\nthreads = 1\n'
    return (f"[watch]\nfolders = [{json.dumps(str(watch or folder / 'inbox'))}]\nsettle_seconds = 0.2\n\n"
            f"{model}\n{engine}\n{extra}\n[service]\nstate_dir = {json.dumps(str(folder / 'state'))}\n\n"
            f'[log]\nformat = "json"\nlevel = "debug"\n\n{toyshow.catalog_toml()}')


def write_config(folder: Path, models: tuple[Path, Path] | None, watch: Path | None = None, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (watch or folder / "inbox").mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text(config_text(folder, models, watch, extra), encoding="utf-8")
    return path


def run_eval(config: Path, manifest: Path, out: Path, profiles: Mapping[str, str] | None = None) -> dict[str, Figures]:
    """`bbsd eval` as people run it (a process of its own): each profile's figures by name ("config" alone).
    `profiles`: name -> a TOML overlay's text."""
    args = ["eval", "--config", str(config), "--truth", str(manifest), "--out", str(out)]
    for name, text in (profiles or {}).items():
        overlay = out.parent / f"{name}.toml"
        overlay.write_text(text, encoding="utf-8")
        args += ["--profile", str(overlay)]
    done = run_bbsd(*args, timeout=EVAL_S)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    return {p["profile"]: Figures(p["characters"]["macro"]["f1"] or 0.0, p["props"]["macro"]["f1"] or 0.0,
                                  p["photos"], p["failed"]) for p in report["profiles"]}


def truth(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]


def score_sidecars(manifest: Path, folder: Path) -> Figures:
    """Macro F1 of the labels in the sidecars of `folder`'s copies of the manifest's photos."""
    samples: dict[str, list[scores.Sample]] = {k: [] for k in KINDS}
    failed = 0
    for line in truth(manifest):
        doc = sidecar.read(folder / line["file"])
        labels = (doc or {}).get("labels") if (doc or {}).get("status") == "labeled" else None
        failed += labels is None
        for kind in KINDS:
            samples[kind].append(scores.Sample(frozenset(line[kind]), frozenset((labels or {}).get(kind, ())),
                                               labels is None))
    macro = {k: scores.kind_summary(samples[k])["macro"]["f1"] or 0.0 for k in KINDS}
    return Figures(macro["characters"], macro["props"], len(samples["characters"]), failed)


# --- the same photos written another way ---------------------------------------------------------

Writer = Callable[[Image.Image, int, Path], Path]  # (upright photo, its index, path without suffix) -> the file


def write_variant(base: Path, folder: Path, seed: int, size: tuple[int, int], writer: Writer) -> Path:
    """The show of manifest `base` (rendered from `seed` at `size`) again, each photo through `writer`;
    returns the new manifest, the same truth naming the new files."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, line in enumerate(truth(base)):
        photo = toyshow.render_photo(seed, index, size)
        assert (photo.characters, photo.props) == (line["characters"], line["props"])  # the same show
        written = writer(photo.image, index, folder / Path(line["file"]).stem)
        lines.append(json.dumps({**line, "file": written.name}, ensure_ascii=False))
    manifest = folder / toyshow.MANIFEST
    manifest.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return manifest


def saver(fmt: str, suffix: str, **options) -> Writer:
    """Pillow's writer for `fmt` (HEIF through pillow_heif), the photo upright."""
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()

    def write(image: Image.Image, index: int, stem: Path) -> Path:
        path = stem.with_suffix(suffix)
        image.save(path, fmt, **options)
        return path

    return write


def camera_jpeg(size: tuple[int, int], orientations: tuple[int, ...]) -> Writer:
    """A camera-size JPEG (`size` upright; the photo scaled up, bicubic) stored under the EXIF orientations
    in turn, as a camera stores a portrait shot: sensor-wide pixels and a tag."""

    def write(image: Image.Image, index: int, stem: Path) -> Path:
        orientation = orientations[index % len(orientations)]
        big = image.resize(size, Image.Resampling.BICUBIC)
        turn = STORED[orientation]
        exif = Image.Exif()
        exif[TAG_ORIENTATION] = orientation
        path = stem.with_suffix(".jpg")
        (big.transpose(turn) if turn is not None else big).save(path, "JPEG", quality=90, exif=exif)
        return path

    return write


def dng(orientations: tuple[int, ...]) -> Writer:
    """A real DNG (LibRaw develops it: demosaic at half size, camera white balance, gamma): the photo as
    linear RGGB Bayer data at twice its size, so that a half-size demosaic gives one pixel per photo pixel,
    stored under the orientations in turn (LibRaw's rotation, not Pillow's)."""

    def write(image: Image.Image, index: int, stem: Path) -> Path:
        orientation = orientations[index % len(orientations)]
        turn = STORED[orientation]
        stored = image.transpose(turn) if turn is not None else image
        return _write_dng(stem.with_suffix(".dng"), _bayer(stored), orientation)

    return write


def _bayer(image: Image.Image) -> np.ndarray:
    """12-bit RGGB mosaic of the image's linear light, each pixel a 2x2 cell."""
    a = np.asarray(image.convert("RGB"), np.float64) / 255
    linear = np.where(a <= 0.04045, a / 12.92, ((a + 0.055) / 1.055) ** 2.4).repeat(2, 0).repeat(2, 1)
    level = np.round(linear * 4095).astype(np.uint16)
    raw = np.empty(level.shape[:2], np.uint16)
    raw[0::2, 0::2], raw[0::2, 1::2] = level[0::2, 0::2, 0], level[0::2, 1::2, 1]
    raw[1::2, 0::2], raw[1::2, 1::2] = level[1::2, 0::2, 1], level[1::2, 1::2, 2]
    return raw


def _write_dng(path: Path, raw: np.ndarray, orientation: int) -> Path:
    matrix = [[round(v * 10000), 10000] for row in XYZ_TO_SRGB for v in row]
    return write_dng(path, raw, orientation, matrix)


def orientation_of(path: Path) -> int:
    with Image.open(path) as img:
        return int(img.getexif().get(TAG_ORIENTATION, 1))


def copy_photos(manifest: Path, inbox: Path) -> list[Path]:
    """The manifest's photos copied into `inbox` (before the daemon starts: one burst at its startup scan)."""
    inbox.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(manifest.parent / line["file"], inbox / line["file"])) for line in truth(manifest)]


def quantise(text: Path, quant: str, out: Path) -> Path:
    """The text model quantised by bbsd's converter's quantiser (llama.cpp's llama_model_quantize)."""
    from bbsd.models import convert

    out.mkdir(parents=True, exist_ok=True)
    return convert._quantise(text, out / f"{text.stem}-{quant}.gguf", quant, progress=False)


def server_binary(timeout_s: float = 3600) -> Path:
    """llama-server built from the vendored llama.cpp (build/llama-server.sh: cached after the first build)."""
    from tests.conftest import REPO

    done = subprocess.run([str(REPO / "build" / "llama-server.sh")], capture_output=True, text=True,
                          timeout=timeout_s * SLACK)
    assert done.returncode == 0, done.stderr[-2000:]
    return Path(done.stdout.strip().splitlines()[-1])
