"""The one rule for "is this sidecar current?", and sidecar names for photos with very long names."""

from __future__ import annotations

import json
import os
import time

import pytest

from bbsd import atomic, config
from bbsd.engine import prompt
from bbsd.engine.labeler import ModelInfo
from bbsd.pipeline import Pipeline, Status
from bbsd.sidecars import naming, xmp
from bbsd.sidecars import record as sidecar
from tests.conftest import make_photo, sha256_of, write_config
from tests.fakes.engine import FakeLabeler

MODEL = ModelInfo("llama", "m.gguf", "p.gguf")


@pytest.fixture
def pipeline(tmp_path):
    inbox = tmp_path / "in"
    inbox.mkdir()
    settings = config.load(write_config(tmp_path, [inbox], backend="fake"), environ={})
    p = Pipeline(FakeLabeler(()), settings, prompt.build(settings.catalog))
    yield inbox, p
    p.close()


def test_current_means_same_schema_model_prompt_and_photo(tmp_path, pipeline):
    inbox, p = pipeline
    photo = make_photo(inbox / "a.jpg")
    doc = {"schema": sidecar.SCHEMA_ID, "photo": {"sha256": "abc"}, **sidecar.identity(p.labeler.info, p.prompt)}
    assert sidecar.is_current(doc, p.labeler.info, p.prompt, sha256="abc")
    assert not sidecar.is_current(doc, p.labeler.info, p.prompt, sha256="abd")
    assert not sidecar.is_current({**doc, "schema": "bbsd.sidecar/0"}, p.labeler.info, p.prompt, sha256="abc")
    other_model = ModelInfo(p.labeler.info.backend, p.labeler.info.file, "other-mmproj.gguf")
    assert not sidecar.is_current(doc, other_model, p.prompt, sha256="abc")
    other_prompt = prompt.build(p._catalog.__class__((), ()))
    assert not sidecar.is_current(doc, p.labeler.info, other_prompt, sha256="abc")
    # without a hash, the cheap guess: the sidecar must be at least as new as the photo
    sidecar.path_for(photo).write_text(json.dumps(doc))
    assert sidecar.is_current(doc, p.labeler.info, p.prompt, photo=photo)
    later = time.time() + 5
    os.utime(photo, (later, later))
    assert not sidecar.is_current(doc, p.labeler.info, p.prompt, photo=photo)


def test_every_caller_uses_the_one_rule(pipeline):
    """Labelling and the daemon's rescans (`Pipeline.is_current`) agree, because they call the same function."""
    inbox, p = pipeline
    photo = make_photo(inbox / "b.jpg")
    assert not p.is_current(photo)
    assert p.process(photo).status is Status.LABELED
    assert p.is_current(photo) and p.is_current(photo, sha256=sha256_of(photo))
    assert p.process(photo).status is Status.SKIPPED
    p.apply(config.load(p_settings_with_catalog(inbox, p), environ={}))  # a new catalog: no longer current
    assert not p.is_current(photo)
    assert p.process(photo).status is Status.LABELED


def p_settings_with_catalog(inbox, p):
    cfg = inbox.parent / "config.toml"
    cfg.write_text(cfg.read_text() + '\n[[characters]]\nname = "Kikimora"\n')
    return cfg


def test_fit_name_keeps_short_names_and_shortens_long_ones():
    assert naming.fit_name("IMG_0001.JPG", ".json") == "IMG_0001.JPG.json"
    long = "x" * 248 + ".JPG"  # 252 bytes: legal on ext4, but no room for ".json"
    fitted = naming.fit_name(long, ".json")
    assert len(fitted.encode()) <= 255 and fitted.endswith(".json") and naming.FALLBACK_MARK in fitted
    assert fitted != naming.fit_name("x" * 248 + ".jpg", ".json")  # same prefix, different photo
    accents = "é" * 125 + ".jpg"  # 254 bytes in UTF-8: cut on a character boundary
    assert len(naming.fit_name(accents, ".json").encode()) <= 255
    assert naming.fit_name(accents, ".json").encode().decode() == naming.fit_name(accents, ".json")


def test_a_photo_with_a_252_byte_name_is_labelled_with_fallback_sidecars(pipeline):
    inbox, p = pipeline
    photo = make_photo(inbox / ("stage_left_" * 22 + "x" * 6 + ".JPG"))
    assert len(photo.name.encode()) == 252
    out = p.process(photo)
    assert out.status is Status.LABELED
    assert out.sidecar == sidecar.path_for(photo) and out.sidecar.exists()
    assert json.loads(out.sidecar.read_text())["photo"]["file"] == photo.name  # the sidecar names its photo
    assert xmp.path_for(photo, "ext").exists()
    assert p.process(photo).status is Status.SKIPPED  # found again, so never relabelled
    assert not [f for f in inbox.iterdir() if atomic.is_temp(f)]


def test_temp_names_stay_legal_for_long_targets(tmp_path):
    target = tmp_path / ("y" * 250 + ".json")
    atomic.write_bytes(target, b"{}")
    assert target.read_bytes() == b"{}"
