"""The per-photo pipeline with a fake labeller (our own seam): invariants users care about."""

import json
import os

import pytest
import structlog.testing

from bbsd import config
from bbsd.engine import prompt
from bbsd.engine.labeler import UNNAMED, Inference
from bbsd.errors import PhotoError
from bbsd.pipeline import Pipeline, Status
from bbsd.sidecars import record as sidecar
from tests.conftest import jpeg_bytes, make_photo, sha256_of, write_config
from tests.fakes.engine import FakeLabeler


@pytest.fixture
def setup(tmp_path):
    inbox = tmp_path / "in"
    inbox.mkdir()
    settings = config.load(write_config(tmp_path, [inbox], backend="fake"), environ={})

    def make(replies=(), delay_s=0.0):
        return Pipeline(FakeLabeler(replies, delay_s=delay_s), settings, prompt.build(settings.catalog))

    return inbox, make


def test_labeled_sidecar_is_schema_valid_and_complete(setup, validate_sidecar):
    inbox, make = setup
    photo = make_photo(inbox / "IMG_0001.JPG", size=(300, 200))
    out = make().process(photo, queue_wait_ms=12.5)
    assert out.status is Status.LABELED and out.sidecar == inbox / "IMG_0001.JPG.json"
    doc = validate_sidecar(photo)
    assert doc["status"] == "labeled" and doc["photo"]["sha256"] == sha256_of(photo)
    assert (doc["photo"]["width"], doc["photo"]["height"]) == (300, 200)
    assert doc["labels"]["characters"] == ["Baba Yaga"] and doc["timing_ms"]["queue_wait"] == 12.5
    assert doc["memory_mb"]["rss"] > 0 and doc["memory_mb"]["vram"] is None


def test_up_to_date_sidecar_is_not_redone_but_a_changed_photo_is(setup):
    inbox, make = setup
    photo = make_photo(inbox / "a.jpg")
    p = make()
    assert p.process(photo).status is Status.LABELED
    before = sidecar.path_for(photo).stat().st_mtime_ns
    assert p.process(photo).status is Status.SKIPPED
    assert sidecar.path_for(photo).stat().st_mtime_ns == before and p.labeler.calls == 1
    photo.write_bytes(jpeg_bytes(color=(1, 2, 3)))  # replaced: new sha256
    assert p.process(photo).status is Status.LABELED and p.labeler.calls == 2


def test_invalid_reply_is_retried_once_then_recorded(setup, validate_sidecar):
    inbox, make = setup
    photo = make_photo(inbox / "a.jpg")
    good = json.dumps({"characters": ["Koschei"], "props": [], "caption": "c", "scene": "s", "visible_text": []})
    p = make(replies=['{"characters": ["Grinch"]', good])
    assert p.process(photo).status is Status.LABELED and p.labeler.calls == 2
    assert validate_sidecar(photo)["labels"]["characters"] == ["Koschei"]

    other = make_photo(inbox / "b.jpg", color=(9, 9, 9))
    p = make(replies=["nope", '{"characters": ["Grinch"]}'], delay_s=0.05)  # each attempt takes the engine 50 ms
    assert p.process(other).status is Status.FAILED and p.labeler.calls == 2
    doc = validate_sidecar(other)
    assert doc["status"] == "error" and doc["error"]["code"] == "invalid_reply" and doc["labels"] is None
    assert doc["timing_ms"]["inference"] >= 100  # the engine's time on a photo that failed is still its cost


class _Scripted(FakeLabeler):
    """Each call takes the next step: "crash" (the worker died with this photo in it), "invalid" or
    "ok"; records how each call was asked for (attempt, alone)."""

    def __init__(self, steps):
        super().__init__()
        self.steps, self.asked = list(steps), []

    def infer(self, image, prompt, *, attempt, cancelled, alone=False, photo=UNNAMED):
        self.asked.append((attempt, alone))
        step = self.steps.pop(0)
        if step == "crash":
            raise PhotoError("engine_crash", "the engine worker died", "see worker.lost")
        return super().infer(image, prompt, attempt=attempt, cancelled=cancelled) if step == "ok" else \
            Inference(text="nope", prompt_tokens=0, output_tokens=4, encode_ms=0.0, generate_ms=0.0)


@pytest.mark.parametrize("steps, asked, status", [
    # a crash: once more alone, sampled as before (a neighbour's labels are what they would have been)
    (["crash", "ok"], [(0, False), (0, True)], "labeled"),
    (["crash", "crash"], [(0, False), (0, True)], "engine_crash"),  # alone too: its own
    # a varied retry goes beside others; a crash there is not yet its own
    (["invalid", "crash", "ok"], [(0, False), (1, False), (1, True)], "labeled"),
    (["invalid", "invalid"], [(0, False), (1, False)], "invalid_reply"),
    (["crash", "invalid", "invalid"], [(0, False), (0, True), (1, True)], "invalid_reply"),
])
def test_a_crash_is_retried_alone_as_sampled_before_and_an_invalid_reply_varied(tmp_path, steps, asked, status):
    inbox = tmp_path / "in"
    inbox.mkdir()
    settings = config.load(write_config(tmp_path, [inbox], backend="fake"), environ={})
    labeler = _Scripted(steps)
    photo = make_photo(inbox / "a.jpg")
    Pipeline(labeler, settings, prompt.build(settings.catalog)).process(photo)
    doc = sidecar.read(photo)
    assert labeler.asked == asked and not labeler.steps
    assert (doc["status"] if doc["status"] == "labeled" else doc["error"]["code"]) == status


@pytest.mark.parametrize("content, code", [(b"", "empty_file"), (b"hello, not a photo" * 10, "not_an_image")])
def test_bad_files_get_error_sidecars(setup, validate_sidecar, content, code):
    inbox, make = setup
    bad = inbox / "bad.jpg"
    bad.write_bytes(content)
    with structlog.testing.capture_logs() as logs:
        assert make().process(bad).status is Status.FAILED
    doc = validate_sidecar(bad)
    assert doc["error"]["code"] == code
    failed = [e for e in logs if e["event"] == "photo.failed"]  # the journal says what to do, as the sidecar does
    assert len(failed) == 1 and failed[0]["code"] == code and failed[0]["hint"] == doc["error"]["hint"] != ""


def test_incomplete_file_may_wait_without_a_sidecar(setup):
    inbox, make = setup
    photo = inbox / "cut.jpg"
    photo.write_bytes(jpeg_bytes()[:300])
    out = make().process(photo, allow_incomplete=True)
    assert out.status is Status.INCOMPLETE and not sidecar.path_for(photo).exists()


def test_unwritable_sidecar_keeps_photo_pending_and_writes_nothing(setup, monkeypatch):
    """Disk full: neither the XMP (written first) nor the JSON appears, the photo stays pending."""
    inbox, make = setup
    photo = make_photo(inbox / "a.jpg")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert make().process(photo).status is Status.PENDING
    assert sorted(os.listdir(inbox)) == ["a.jpg"]


def test_vanished_photo_is_gone_quietly(setup):
    inbox, make = setup
    assert make().process(inbox / "never.jpg").status is Status.GONE


def test_the_sidecar_names_the_model_that_answered_not_one_loaded_since(setup):
    """A worker restarted with another model between a photo's reply and its write (a model file
    replaced, `[model] path` edited): the sidecar and the XMP name the model of the reply."""
    import dataclasses

    from bbsd.engine.labeler import ModelInfo

    inbox, make = setup
    pipeline = make()
    answered = ModelInfo("llama", "show.gguf", "mmproj.gguf", files=(("file", 10, "a" * 64),))
    loaded_since = ModelInfo("llama", "show.gguf", "mmproj.gguf", files=(("file", 11, "b" * 64),))
    real_infer = pipeline.labeler.infer

    def infer(*args, **kwargs):
        reply = real_infer(*args, **kwargs)
        pipeline.labeler.info = loaded_since  # the restart, after the reply
        return dataclasses.replace(reply, model=answered)

    pipeline.labeler.infer = infer
    photo = make_photo(inbox / "a.jpg")
    assert pipeline.process(photo).status is Status.LABELED
    doc = sidecar.read(photo)
    assert doc["model"]["files"]["file"]["sha256"] == "a" * 64
    assert "a" * 64 in photo.with_name("a.jpg.xmp").read_text()
    assert not sidecar.is_current(doc, loaded_since, pipeline.prompt, sha256=doc["photo"]["sha256"])
