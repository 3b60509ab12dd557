"""The toy show (bbsd.study.toyshow): seeded stage photos of a puppet cast whose truth `bbsd eval` reads.

What a model trained and measured on it relies on: the same seed gives the same bytes; every
cast member turns up; the look-alikes are close and everyone else is far apart; the photos carry
a capture time and an orientation that bbsd's own decoder reads; the manifest goes through the
real `bbsd eval` (the fake backend answering the truth scores F1 = 1).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bbsd.photo.decode import capture_time, decode
from bbsd.study import toyshow
from tests.conftest import CATALOG, REPO, run_bbsd, write_config

SMALL = (160, 107)  # a 3:2 camera export, shrunk


def _coarse(image: Image.Image) -> np.ndarray:
    """The photo at 32x21: the sensor noise and JPEG's loss averaged away, the picture kept."""
    return np.asarray(image.convert("RGB").resize((32, 21), Image.Resampling.BOX), np.float32)


def _lines(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def hundred(tmp_path_factory) -> Path:
    """A 100-photo show at a tiny size: the manifest."""
    return toyshow.render_show(tmp_path_factory.mktemp("show"), seed=7, n=100, size=(96, 64))


def test_the_same_seed_renders_the_same_bytes_and_another_seed_does_not(tmp_path):
    first = toyshow.render_show(tmp_path / "a", seed=3, n=6, size=SMALL, orientations=(1, 6))
    again = toyshow.render_show(tmp_path / "b", seed=3, n=6, size=SMALL, orientations=(1, 6))
    other = toyshow.render_show(tmp_path / "c", seed=4, n=6, size=SMALL, orientations=(1, 6))
    assert first.name == again.name == "truth.jsonl"
    assert _files(first.parent) == _files(again.parent)
    assert len(_files(first.parent)) == 7  # six photos and the manifest
    differ = _files(other.parent)
    assert all(differ[name] != data for name, data in _files(first.parent).items())
    # photo i does not depend on how many come after it: a shorter show is the start of a longer one
    short = toyshow.render_show(tmp_path / "d", seed=3, n=2, size=SMALL, orientations=(1, 6))
    assert _lines(short) == _lines(first)[:2]
    assert _files(short.parent)["IMG_0002.jpg"] == _files(first.parent)["IMG_0002.jpg"]


def test_a_hundred_photos_show_the_whole_cast_with_zero_to_four_items_each(hundred):
    lines = _lines(hundred)
    assert [d["file"] for d in lines] == [f"IMG_{i:04d}.jpg" for i in range(1, 101)]
    seen_characters = {n for d in lines for n in d["characters"]}
    seen_props = {n for d in lines for n in d["props"]}
    assert seen_characters == set(toyshow.CHARACTERS) and seen_props == set(toyshow.PROPS)
    counts = {len(d["characters"]) + len(d["props"]) for d in lines}
    assert counts == {0, 1, 2, 3, 4}
    for d in lines:
        assert d["scene"] and d["scene"] in d["caption"]
        assert all(name in d["caption"] for name in d["characters"] + d["props"]), d
    assert len({d["scene"] for d in lines}) >= 5


def test_the_truth_is_fair_each_named_item_is_mostly_in_view(hundred):
    """An item the curtains, the ground row or another item hide almost wholly would be a miss no model could avoid."""
    photos = [toyshow.render_photo(7, i, (96, 64)) for i in range(100)]
    assert [(p.characters, p.props) for p in photos] == [(d["characters"], d["props"]) for d in _lines(hundred)]
    visible = np.array([item.visible for p in photos for item in p.items])
    assert visible.min() >= 0.4 and (visible >= 0.8).mean() >= 0.95, np.percentile(visible, [0, 5, 50])


def test_the_cast_is_large_enough_and_no_character_shares_a_name_with_a_prop():
    assert len(toyshow.CHARACTERS) >= 8 and len(toyshow.PROPS) >= 6
    lowered = [n.casefold() for n in toyshow.CHARACTERS + toyshow.PROPS]
    assert len(set(lowered)) == len(lowered)


def _distance(a: str, b: str) -> float:
    return float(np.abs(np.asarray(toyshow.sprite(a), np.float32) - np.asarray(toyshow.sprite(b), np.float32)).mean())


def test_the_look_alikes_are_close_and_every_other_pair_is_far():
    pairs = {frozenset(p) for p in toyshow.LOOKALIKES}
    assert len(pairs) == 2
    for group in (toyshow.CHARACTERS, toyshow.PROPS):
        distances = {frozenset(p): _distance(*p) for p in itertools.combinations(group, 2)}
        alike = [d for p, d in distances.items() if p in pairs]
        apart = [d for p, d in distances.items() if p not in pairs]
        assert len(alike) == 1, "one look-alike pair among the characters, one among the props"
        assert 0 < alike[0] < 0.7 * min(apart), (alike, min(apart))  # measured: 5.9 / 16.8 against >= 28


def test_capture_times_read_by_bbsd_increase_through_the_show(hundred):
    times = [capture_time(hundred.parent / d["file"]) for d in _lines(hundred)]
    assert None not in times
    gaps = np.diff(times)
    assert (gaps > 0).all()
    assert (gaps < 1).any(), "a burst: shots within one second, told apart by SubSecTimeOriginal"
    with Image.open(hundred.parent / "IMG_0001.jpg") as img:
        exif = img.getexif()
        assert exif[0x010F] and exif[0x0110]  # camera make and model


def test_an_oriented_photo_decodes_upright_through_bbsds_decoder(tmp_path):
    manifest = toyshow.render_show(tmp_path, seed=5, n=12, size=SMALL, orientations=(1, 3, 6, 8))
    seen = set()
    for index, line in enumerate(_lines(manifest)):
        path = tmp_path / line["file"]
        with Image.open(path) as img:
            orientation = img.getexif().get(0x0112)
            stored = img.convert("RGB")
        seen.add(orientation)
        upright = _coarse(toyshow.render_photo(5, index, SMALL).image)
        decoded = decode(path, max_side=max(SMALL)).image
        assert decoded.size == SMALL
        assert np.abs(_coarse(decoded) - upright).mean() < 3  # JPEG's loss only
        if orientation in (6, 8):
            assert stored.size == SMALL[::-1]
        if orientation == 3:  # ignoring the tag shows the photo upside down: far from upright
            assert np.abs(_coarse(stored) - upright).mean() > 10
    assert seen == {1, 3, 6, 8}


def test_bbsd_eval_reads_the_manifest_and_scores_a_backend_that_answers_the_truth(tmp_path):
    manifest = toyshow.render_show(tmp_path / "show", seed=2, n=8, size=SMALL)
    replies = {d["file"]: {"characters": d["characters"], "props": d["props"], "caption": d["caption"],
                           "scene": d["scene"], "visible_text": []} for d in _lines(manifest)}
    (tmp_path / "replies.json").write_text(json.dumps(replies))
    (tmp_path / "inbox").mkdir()
    config = write_config(tmp_path, [tmp_path / "inbox"], backend="fake",
                          extra=f'[fake]\nreplies = "{tmp_path / "replies.json"}"\n')
    config.write_text(config.read_text().replace(CATALOG, toyshow.catalog_toml()))
    done = run_bbsd("eval", "--config", str(config), "--truth", str(manifest), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    scores = json.loads((tmp_path / "out" / "eval.json").read_text())["profiles"][0]
    assert scores["photos"] == 8 and scores["failed"] == 0
    assert scores["micro"]["f1"] == 1.0 and scores["exact"] == 1.0


def test_the_module_command_renders_a_show_and_refuses_a_tiny_photo(tmp_path):
    """As people run it, in a process of its own (its logging setup must not leak into other tests)."""
    def toyshow(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bbsd.study.toyshow", *args], capture_output=True, text=True,
                              timeout=120, cwd=REPO)

    done = toyshow(str(tmp_path), "--photos", "2", "--size", "96x64", "--catalog")
    assert done.returncode == 0 and done.stdout.strip() == str(tmp_path / "truth.jsonl"), done.stderr
    assert "[[characters]]" in (tmp_path / "catalog.toml").read_text()
    refused = toyshow(str(tmp_path / "x"), "--size", "32x32")
    assert refused.returncode == 2 and "at least 64 pixels" in refused.stderr
