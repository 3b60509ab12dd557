"""Label confidence: each name's probability from the model's own tokens, and the review marker editors filter on."""

import json

import pytest
from PIL import Image

from bbsd import config
from bbsd.engine import confidence, prompt
from bbsd.engine.confidence import Step
from bbsd.pipeline import Pipeline, Status
from tests.conftest import make_photo, write_config
from tests.sidecars.test_xmp import exiftool, needs_exiftool

NAMES = {"characters": ["Baba Yaga", "Koschei", "Fox"], "props": ["lantern", "samovar"]}
#        0         1         2         3         4         5         6         7
#        0123456789012345678901234567890123456789012345678901234567890123456789012345678
REPLY = '{"characters":["Baba Yaga","Fox"],"props":[],"caption":"x","scene":"y","visible_text":[]}'


def test_confidence_is_the_product_of_the_sampled_tokens_of_each_name_and_the_runner_up_is_the_best_branch():
    steps = [
        Step(15, 16, 0.9, "]", 0.1),        # `"` after `[`: write a name (0.9) rather than end the list
        Step(16, 17, 0.5, "K", 0.4),        # `B` (Baba Yaga) against `K` (Koschei): 0.9 × 0.4 = 0.36
        Step(26, 28, 0.6, "]", 0.4),        # `,"` after Baba Yaga: one more name (0.6) rather than end
        Step(28, 29, 0.7, "K", 0.2),        # `F` against `K`
        Step(43, 44, 0.8, '"s', 0.15),      # props: `]` at once; writing "samovar" was the alternative
    ]
    scores = confidence.score(REPLY, steps, NAMES)
    baba, fox = scores["characters"]["names"]
    assert baba == {"name": "Baba Yaga", "confidence": 0.45, "runner_up": "Koschei", "runner_up_score": 0.36}
    # Fox's span starts after Baba Yaga's closing quote: `,"` (0.6) then `F` (0.7); the jump-forwarded `ox"` is free.
    assert fox["name"] == "Fox" and fox["confidence"] == pytest.approx(0.42)
    assert fox["runner_up"] is None and fox["runner_up_score"] == pytest.approx(0.4)  # ending the list: 0.4 > 0.6×0.2
    assert scores["characters"]["missed"] is None  # no sampled token covers this list's `]`: nothing to weigh
    assert scores["props"] == {"names": [], "missed": {"name": "samovar", "score": 0.15}}


def test_needs_review_when_a_chosen_name_is_below_the_threshold_or_a_missed_one_reaches_it():
    scores = {"characters": {"names": [{"name": "Fox", "confidence": 0.42}], "missed": None},
              "props": {"names": [], "missed": {"name": "samovar", "score": 0.15}}}
    assert confidence.needs_review(scores, 0.5)  # Fox at 0.42
    assert not confidence.needs_review(scores, 0.4)
    assert confidence.needs_review(scores, 0.1)  # not Fox, but samovar scored 0.15 ≥ 0.1 without being written
    assert not confidence.needs_review(scores, 0.0)  # 0 = never


def test_a_reply_the_scorer_does_not_understand_scores_nothing_rather_than_guessing():
    assert confidence.score("not json at all", [Step(0, 3, 0.5, None)], NAMES) == {}
    assert confidence.score('{"characters":["Fox"', [], NAMES) == {}




def test_the_real_engine_reports_a_confidence_in_0_1_for_every_name_it_wrote(engine):
    labeler, settings = engine
    p = prompt.build(settings.catalog)
    names = {"characters": settings.catalog.character_names(), "props": settings.catalog.prop_names()}
    for i in range(6):
        r = labeler.infer(Image.new("RGB", (256, 192), (40 * i, 90, 200 - 30 * i)), p, attempt=0,
                          cancelled=lambda: False)
        written = json.loads(r.text)
        assert r.steps and all(0.0 <= s.p <= 1.0 and 0.0 <= s.alt_p <= 1.0 for s in r.steps)
        scores = confidence.score(r.text, list(r.steps), names)
        for field in ("characters", "props"):
            assert [n["name"] for n in scores[field]["names"]] == written[field]
            for n in scores[field]["names"]:
                assert 0.0 < n["confidence"] <= 1.0 and 0.0 <= n["runner_up_score"] < 1.0
                assert n["runner_up"] is None or n["runner_up"] in names[field]


@needs_exiftool
@pytest.mark.parametrize("review_below, marked", [(1.0, True), (0.0, False)])
def test_a_photo_below_the_threshold_carries_the_review_keyword_exiftool_reads(engine, tmp_path, review_below,
                                                                              marked, validate_sidecar):
    labeler, _ = engine
    inbox = tmp_path / "in"
    inbox.mkdir()
    cfg = write_config(tmp_path, [inbox], extra=f"[xmp]\nreview_below = {review_below}\n", backend="fake")
    settings = config.load(cfg, environ={})
    photo = make_photo(inbox / "IMG_0001.JPG")
    out = Pipeline(labeler, settings, prompt.build(settings.catalog)).process(photo)
    assert out.status is Status.LABELED
    doc = validate_sidecar(photo)  # the published schema holds the confidence block
    assert doc["confidence"]["needs_review"] is marked and doc["confidence"]["review_below"] == review_below
    tags = exiftool(photo.with_name(photo.name + ".xmp"))
    hierarchical = tags.get("XMP-lr:HierarchicalSubject", [])
    assert ("bbsd|needs review" in hierarchical) is marked
    assert ("bbsd/needs review" in tags.get("XMP-digiKam:TagsList", [])) is marked
