"""Accuracy as the oracle: the trained toy VLM's macro F1 on a held-out toy show, held through every
path a photo can take.

The toy VLM (bbsd/models/weights/toyvlm-*.npz, trained on toy show seed 0) labels show SEED, which
training never saw, through bbsd's real path: the `bbsd` CLI (`bbsd eval`, or `bbsd run` for a burst),
the contained decoder, the engine worker, llama.cpp, the grammar, jump-forward, validation. The
baseline is the upright JPEGs at the default settings. Each other path writes the same photos another
way (EXIF orientation, container, camera size: tests/accuracy.py) or labels them another way
(batches, caches, quantisation, another tokenizer, a remote server, a recycled worker), and must keep
macro F1 for characters and for props at least at its FLOORS and within TOLERANCE of the baseline's.
A path that corrupts the image (a rotation ignored, colours swapped) or the context (a batch's KV
cells shared, the catalog dropped from a cached prefix, a broken quantisation, another chat) falls far
below that: with the decoder ignoring EXIF orientation, the photos stored under orientation 6 score
characters 0.30 and props 0.27 where the baseline scores 0.90 and 0.48
(docs/developer/testing.md#accuracy-as-the-oracle).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from bbsd.errors import ModelError
from bbsd.models import twin
from bbsd.sidecars import record as sidecar
from bbsd.study import toyshow
from tests import accuracy as acc
from tests.conftest import SLACK, BbsdRun, wait_until
from tests.fakes.servers import LlamaServer

pytestmark = pytest.mark.slow

SEED, PHOTOS, SIZE = 1000, 48, (192, 128)  # a held-out show (training renders seed 0), at training's size
# The figures each shipped model must reach on this show at the baseline and on every path: one place
# to raise them when new weights land. The 0.90 is measured on 300 photos (train/README.md:
# toyvlm-bpe 0.94 / 0.95); on these 48 a photo moves a prop's F1 by several hundredths, so the props'
# floor leaves 0.02 below it (measured here 2026-12-08: bpe 0.952 / 0.939).
FLOORS = {
    "bpe": {"characters": 0.90, "props": 0.88},
    # SentencePiece twin: 0.87 / 0.92 on 300 photos; it rarely writes Baba Yaga (recall 0.18, jump-forward on
    # or off alike), where the BPE twin reaches 0.80 (train/README.md)
    "spm": {"characters": 0.80, "props": 0.85},
}
# How far a path that hands the model the same photo may move macro F1 from the baseline: re-encoding,
# demosaicing, rescaling and a quantised computation shift a borderline reply or two (a photo is 1/48 of
# the figure). Measured over every path here (2026-12-07, toyvlm-bpe.npz): the largest fall 0.008
# (characters) and 0.006 (props), the largest rise 0.008 and 0.020; the remote chat without the newline
# after the image loses 0.075 (characters), orientation ignored 0.6 (characters) and 0.2-0.3 (props).
TOLERANCE = {"characters": 0.03, "props": 0.04}
CAMERA = (6000, 4000)  # a 24 MP export, stored sensor-wide under orientation 1 and 6


@dataclass(frozen=True)
class Show:
    root: Path
    models: tuple[Path, Path]
    manifest: Path
    baseline: acc.Figures


@pytest.fixture(scope="module")
def show(tmp_path_factory) -> Show:
    root = tmp_path_factory.mktemp("accuracy")
    models = twin.write_pair_from(twin.shipped("bpe"), root / "model")
    manifest = toyshow.render_show(root / "show", SEED, PHOTOS, SIZE, orientations=(1,))
    baseline = acc.run_eval(acc.write_config(root / "baseline", models), manifest, root / "baseline" / "eval")
    return Show(root, models, manifest, baseline["config"])


def holds(show: Show, got: acc.Figures, path: str, summary, weights: str = "bpe", relative: bool = True) -> None:
    """`got` (the figures of `path`) reaches the floors and, `relative`, stays within TOLERANCE of the baseline."""
    summary(f"accuracy {path}: {got}; baseline {show.baseline}")
    assert got.photos == PHOTOS and got.failed == 0, f"{path}: {got}"
    for kind, floor in FLOORS[weights].items():
        value, base = getattr(got, kind), getattr(show.baseline, kind)
        assert value >= floor, f"{path}: {kind} macro F1 {value:.3f} below the floor {floor} ({got})"
        if relative:
            assert value >= base - TOLERANCE[kind], (
                f"{path}: {kind} macro F1 {value:.3f} lost more than {TOLERANCE[kind]} against the baseline's "
                f"{base:.3f} ({got})")


def evaluate(show: Show, name: str, manifest: Path, models: tuple[Path, Path] | None, extra: str = "") -> acc.Figures:
    """`bbsd eval` of `manifest` with `models` (None: a backend that has no [model]) and `extra` config."""
    folder = show.root / name
    config = acc.write_config(folder, models, extra=extra)
    return acc.run_eval(config, manifest, folder / "eval")["config"]


def test_the_baseline_upright_jpegs_reach_the_floors(show, summary):
    holds(show, show.baseline, "baseline (upright JPEG, default settings)", summary)


# --- the image: orientation, container, size ------------------------------------------------------

@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation(show, summary, orientation):
    """Every photo stored turned, with the tag that turns it back."""
    manifest = toyshow.render_show(show.root / f"o{orientation}", SEED, PHOTOS, SIZE, orientations=(orientation,))
    assert {acc.orientation_of(manifest.parent / line["file"]) for line in acc.truth(manifest)} == {orientation}
    holds(show, evaluate(show, f"o{orientation}", manifest, show.models), f"EXIF orientation {orientation}", summary)


WRITERS = {
    "png": lambda: acc.saver("PNG", ".png"),
    "tiff": lambda: acc.saver("TIFF", ".tif", compression="tiff_lzw"),
    "heic": lambda: acc.saver("HEIF", ".heic", quality=90),
    "dng": lambda: acc.dng(orientations=(1, 6)),  # LibRaw's demosaic and its own rotation
    "camera-size": lambda: acc.camera_jpeg(CAMERA, orientations=(1, 6)),
}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_container_and_size(show, summary, fmt):
    manifest = acc.write_variant(show.manifest, show.root / fmt, SEED, SIZE, WRITERS[fmt]())
    holds(show, evaluate(show, fmt, manifest, show.models), fmt, summary)


# --- the context: caches, jump-forward, quantisation -----------------------------------------------

@pytest.fixture(scope="module")
def settings_variants(show) -> dict[str, acc.Figures]:
    """One `bbsd eval` of the baseline photos under each profile (a TOML overlay of the baseline config)."""
    text = show.models[0]
    profiles = {"prefix_cache_off": "[engine]\nprefix_cache = false\n",
                "jump_forward_off": "[engine]\njump_forward = false\n",
                "Q8_0": f'[model]\npath = "{acc.quantise(text, "Q8_0", show.root / "quant")}"\n',
                "Q4_K_M": f'[model]\npath = "{acc.quantise(text, "Q4_K_M", show.root / "quant")}"\n'}
    config = acc.write_config(show.root / "settings", show.models)
    return acc.run_eval(config, show.manifest, show.root / "settings" / "eval", profiles)


@pytest.mark.parametrize("profile", ["prefix_cache_off", "jump_forward_off", "Q8_0", "Q4_K_M"])
def test_engine_settings_and_quantisation(show, summary, settings_variants, profile):
    holds(show, settings_variants[profile], profile, summary)


def test_the_sentencepiece_twin(show, summary):
    """The same show through the SentencePiece-tokenized twin (its own weights: its own floors only)."""
    try:
        npz = twin.shipped("spm")
    except ModelError as e:
        pytest.skip(f"no SPM-tokenized toy model shipped yet ({e.message}); train/README.md says how to train one")
    models = twin.write_pair_from(npz, show.root / "spm-model")
    holds(show, evaluate(show, "spm", show.manifest, models), "SPM tokenizer", summary, weights="spm",
          relative=False)


# --- the service: bursts, a recycled worker, a remote server ---------------------------------------

def burst(show: Show, name: str, engine: str, extra: str = "") -> tuple[acc.Figures, BbsdRun]:
    """The baseline's photos waiting in a watch folder when `bbsd run` starts (one burst), labelled by it."""
    folder = show.root / name
    photos = acc.copy_photos(show.manifest, folder / "inbox")
    config = acc.write_config(folder, show.models, extra=f'[engine]\nbackend = "llama"\nthreads = 1\n{engine}\n{extra}')
    run = BbsdRun(config, folder / "daemon.log")
    try:
        wait_until(lambda: all(sidecar.path_for(p).exists() for p in photos) or run.proc.poll() is not None,
                   120, f"{name}: a sidecar for each of {len(photos)} photos")
        assert run.proc.poll() is None, run.log_path.read_text()[-3000:]
    finally:
        assert run.stop() == 0
    return acc.score_sidecars(show.manifest, folder / "inbox"), run


def most_beside(run: BbsdRun) -> int:
    """The most photos the worker held at once (its debug event as it admits one)."""
    return max((e.get("beside", 0) + 1 for e in run.events("worker.admitted")), default=0)


@pytest.mark.parametrize("parallel", [1, 8])
def test_a_burst_in_the_daemon(show, summary, parallel):
    got, run = burst(show, f"burst{parallel}", f"parallel = {parallel}")
    together = most_beside(run)
    summary(f"accuracy burst at parallel {parallel}: at most {together} photos in the worker at once")
    assert together == 1 if parallel == 1 else together >= 4  # one at a time, or batched
    holds(show, got, f"burst at parallel {parallel} (bbsd run)", summary)


def test_a_worker_recycled_mid_burst(show, summary):
    got, run = burst(show, "recycled", "parallel = 8", "[worker]\nrecycle_after_photos = 10\n")
    recycled = len(run.events("worker.recycled"))
    summary(f"accuracy recycled burst: {recycled} recycles, at most {most_beside(run)} photos in the worker at once")
    assert recycled >= 3 and most_beside(run) >= 4
    holds(show, got, "worker recycled every 10 photos in a burst at parallel 8", summary)


# Not strict: the gap is a photo or two wide (2026-12-08: 0.911 / 0.879 against 0.952 / 0.939), so another
# CPU's rounding may close it on a run; the figures print either way.
@pytest.mark.xfail(strict=False, raises=AssertionError, reason=(
    "llama-server renders the photo's turn as <image>Label this photo… where bbsd's local engine (and so the "
    "toy model's training) renders <image>\\nLabel this photo…: characters 0.911 / props 0.879 against the "
    "baseline's 0.952 / 0.939 (2026-12-07's weights: 0.83 against 0.90, and 0.90 with the newline sent); how "
    "other servers join an image part and a text part is not measured here, so the request is left as it is"))
def test_the_remote_backend_through_llama_server(show, summary, tmp_path):
    server = LlamaServer(acc.server_binary(), show.models, tmp_path / "server.log", slots=2,
                         start_timeout_s=120 * SLACK)
    try:
        extra = ('[engine]\nbackend = "openai"\n\n[openai]\ntimeout_seconds = 60\n\n'
                 f'[[openai.endpoints]]\nurl = "{server.url}"\nmodel = "toy"\nin_flight = 2\n')
        got = evaluate(show, "remote", show.manifest, None, extra)
    finally:
        server.stop()
    holds(show, got, "remote backend (llama-server)", summary)
