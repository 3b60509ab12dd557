"""The RAW+JPEG pair copy as a step of its own: what a RAW does with its JPEG sibling. The clock
(`now` beside the RAW's mtime) and the sibling's hashing are injected; the sibling's sidecar is the
one the pipeline writes."""

import os
from pathlib import Path

import pytest

from bbsd import config
from bbsd.engine import prompt
from bbsd.pipeline import Pipeline, Status
from bbsd.sidecars import pairing
from bbsd.sidecars import record as sidecar
from tests.conftest import jpeg_bytes, make_photo, sha256_of, write_config
from tests.fakes.engine import FakeLabeler

WINDOW_S = 30.0
BAD = '{"characters": ["Grinch"]'  # not a reply the grammar allows: after the retry, an error sidecar


@pytest.fixture
def shot(tmp_path):
    """A RAW file (its bytes are never read here) and a pipeline that labels its JPEG sibling."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    settings = config.load(write_config(tmp_path, [inbox], backend="fake"), environ={})
    raw = inbox / "IMG_0001.DNG"
    raw.write_bytes(b"raw")

    def pipeline(replies=()):
        return Pipeline(FakeLabeler(replies), settings, prompt.build(settings.catalog))

    return raw, pipeline


def _consult(raw: Path, pipe: Pipeline, *, age_s: float = 0.0, may_wait: bool = True, sha256_of=sha256_of):
    mtime = os.lstat(raw).st_mtime
    return pairing.consult(raw, mtime, mtime + age_s, WINDOW_S, may_wait=may_wait, model=pipe.labeler.info,
                           prompt=pipe.prompt, sha256_of=sha256_of)


def test_a_raw_without_a_sibling_waits_while_young_then_stands_alone(shot):
    raw, pipeline = shot
    pipe = pipeline()
    assert _consult(raw, pipe, age_s=5.0) is pairing.Decision.WAIT  # its JPEG may still be on its way
    assert _consult(raw, pipe, age_s=WINDOW_S + 1) is pairing.Decision.OWN
    assert _consult(raw, pipe, age_s=5.0, may_wait=False) is pairing.Decision.OWN  # `bbsd label` never waits


def test_a_raw_takes_its_labelled_siblings_labels_with_its_name_and_digest(shot):
    raw, pipeline = shot
    pipe = pipeline()
    jpg = make_photo(raw.with_suffix(".JPG"))
    assert pipe.process(jpg).status is Status.LABELED
    found = _consult(raw, pipe, age_s=5.0)
    assert isinstance(found, pairing.Borrowed)
    doc = sidecar.read(jpg)
    assert (found.source, found.sha256) == ("IMG_0001.JPG", sha256_of(jpg))
    assert list(found.labels.characters) == doc["labels"]["characters"] and found.labels.caption
    record = pairing.record_for(raw, "ab" * 32, found, (256, 192), {"queue_wait": 1.0}, {"rss": 1.0, "vram": None})
    assert record.pair == {"source": "IMG_0001.JPG", "sha256": sha256_of(jpg)} and record.sha256 == "ab" * 32
    assert record.tokens == {"prompt": 0, "output": 0} and record.timing_ms["inference"] == 0.0


def test_a_raw_waits_for_a_sibling_not_labelled_yet_or_changed_since(shot):
    raw, pipeline = shot
    pipe = pipeline()
    jpg = make_photo(raw.with_suffix(".JPG"))
    assert _consult(raw, pipe, age_s=WINDOW_S + 1) is pairing.Decision.WAIT  # its own turn comes
    assert _consult(raw, pipe, may_wait=False) is pairing.Decision.OWN
    assert pipe.process(jpg).status is Status.LABELED
    jpg.write_bytes(jpeg_bytes(color=(1, 2, 3)))  # rewritten: its sidecar no longer says what it shows
    assert _consult(raw, pipe) is pairing.Decision.WAIT


def test_a_raw_is_labelled_from_its_own_pixels_when_its_sibling_failed_or_went(shot):
    raw, pipeline = shot
    pipe = pipeline(replies=[BAD, BAD])
    jpg = make_photo(raw.with_suffix(".JPG"))
    assert pipe.process(jpg).status is Status.FAILED
    assert _consult(raw, pipe) is pairing.Decision.OWN  # waiting would not change its error

    def gone(path: Path) -> str:
        raise FileNotFoundError(path)

    assert _consult(raw, pipeline(), sha256_of=gone) is pairing.Decision.OWN
