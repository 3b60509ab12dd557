"""`bbsd eval`'s review figures: which photos bbsd would mark for review, how many of the model's mistakes
they hold, over thresholds, and how well the written names' confidence is calibrated.

The fake backend answers test_eval's scripted set and gives each photo the token probabilities below,
so every figure is counted by hand here from the script, not computed by bbsd.
"""

from __future__ import annotations

import json
import re

import pytest

from bbsd.study import review
from tests.study.test_eval import BY, K, L, _eval, _set_up

# Per photo of test_eval.SCRIPT: {field: {"names": {name: confidence}, "missed": [name, score]}}.
# Mistakes (a name given that is not there, a name there not given) in the script: p05, p06, p07 one each,
# p08, p09 two each (Koschei given, Baba Yaga missed), p15, p16 one each: 9; p14 fails (an invalid reply).
CONF = {
    **{f"p{i:02d}.jpg": {"characters": {"names": {BY: 0.95}}, "props": {"names": {L: 0.9}}} for i in range(4)},
    "p04.jpg": {"characters": {"names": {BY: 0.55}}, "props": {"names": {L: 0.9}}},  # right, yet unsure
    "p05.jpg": {"characters": {"names": {BY: 0.95}}, "props": {"names": {}, "missed": [L, 0.7]}},  # almost said
    "p06.jpg": {"characters": {"names": {BY: 0.95}}, "props": {"names": {}, "missed": [L, 0.2]}},  # a quiet miss
    "p07.jpg": {"characters": {"names": {BY: 0.95}}, "props": {"names": {L: 0.4}}},  # invented, unsure
    "p08.jpg": {"characters": {"names": {K: 0.5}}},  # the look-alike, unsure
    "p09.jpg": {"characters": {"names": {K: 0.8}}},  # the look-alike, sure of itself
    **{f"p{i:02d}.jpg": {"characters": {"names": {K: 0.9}}} for i in range(10, 14)},
    "p15.jpg": {"characters": {"names": {BY: 0.3}}},
    "p16.jpg": {"characters": {"names": {BY: 0.65}}},
    **{f"p{i:02d}.jpg": {"characters": {"names": {BY: 0.9, K: 0.85}}} for i in range(17, 20)},
}


def _with_confidences(tmp_path, threshold: float = 0.6):
    config, manifest = _set_up(tmp_path)
    (tmp_path / "confidences.json").write_text(json.dumps(CONF))
    text = config.read_text().replace("[fake]\n", f'[fake]\nconfidences = "{tmp_path / "confidences.json"}"\n')
    config.write_text(text + f"\n[xmp]\nreview_below = {threshold}\n")
    return config, manifest


def test_the_review_set_holds_the_mistakes_counted_by_hand(tmp_path):
    config, manifest = _with_confidences(tmp_path)
    done = _eval(config, manifest, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    r = json.loads((tmp_path / "out" / "eval.json").read_text())["profiles"][0]["review"]
    # At 0.6: p04 (Baba Yaga 0.55), p05 (lantern not written at 0.7), p07 (0.4), p08 (0.5), p15 (0.3).
    # They hold p05's, p07's, p08's two and p15's mistakes; p06 (0.2), p09 (0.8) and p16 (0.65) escape.
    assert (r["threshold"], r["photos"], r["flagged"], r["mistakes"], r["caught"]) == (0.6, 19, 5, 9, 5)
    assert (r["failed"], r["unknown"]) == (1, 0)
    assert (r["best"], r["best_share"]) == (7, pytest.approx(7 / 9))  # any 5 photos: p08, p09 and three of one
    assert (r["flagged_share"], r["caught_share"]) == (pytest.approx(5 / 19), pytest.approx(5 / 9))
    curve = {c["threshold"]: (c["flagged"], c["caught"]) for c in r["curve"]}
    assert curve[0.0] == (0, 0)  # 0: never mark a photo
    assert curve[0.2] == (2, 2)  # p05 and p06: a name not written scored at least 0.2
    assert curve[0.3] == (1, 1)  # p06's 0.2 no longer counts and p15's 0.3 is not below 0.3: the set shrinks
    assert curve[0.7] == (6, 6)  # p16 (0.65) joins; p05's 0.7 is still "at or above"
    assert curve[0.95] == (17, 7)  # a name below 0.95 everywhere but p05 and p06, whose misses escape
    assert curve[1.0] == (19, 9)
    assert [c["threshold"] for c in r["curve"]] == sorted(curve)
    assert (curve[0.6], r["curve"][0]["flagged_share"]) == ((5, 5), 0.0)
    assert [c["best"] for c in r["curve"] if c["threshold"] in (0.0, 0.2, 0.7, 1.0)] == [0, 4, 8, 9]
    assert ("config review at 0.6: 5 of 19 photos hold 5 of 9 mistakes (56%; 5 photos could hold 7); "
            "not counted: 1 failed") in done.stdout
    page = (tmp_path / "out" / "eval.html").read_text()
    assert "<td>0.6</td><td>19</td><td>5 (26%)</td><td>9</td><td>5 (56%)</td><td>7 (78%)</td>" in page
    assert "<tr><td>config</td><td>0.7</td><td>6 (32%)</td><td>6 (67%)</td><td>8 (89%)</td></tr>" in page
    plot = next(c for c in re.findall(r"<svg.*?</svg>", page, flags=re.S) if "Mistakes caught vs photos" in c)
    # One dot per distinct (marked, caught), named by its thresholds: p05 and p06 are marked from 0.05 to 0.2,
    # p05 alone at 0.25 and 0.3, p05 and p15 at 0.35 and 0.4 — two photos holding two mistakes again.
    assert plot.count('data-kind="point"') == len({(c["flagged"], c["caught"]) for c in r["curve"]})
    assert ">0.05–0.2, 0.35–0.4<" in plot and ">0.25–0.3<" in plot and 'data-kind="diagonal"' in plot


def test_the_reliability_diagram_bins_the_written_names_by_hand(tmp_path):
    config, manifest = _with_confidences(tmp_path)
    assert _eval(config, manifest, tmp_path / "out").returncode == 0
    rel = json.loads((tmp_path / "out" / "eval.json").read_text())["profiles"][0]["reliability"]
    bins = {round(b["low"], 1): (b["names"], b["right"]) for b in rel["bins"] if b["names"]}
    # 0.3: p15's invented Baba Yaga; 0.4: p07's invented lantern; 0.5: p04's right 0.55 and p08's wrong 0.5;
    # 0.6: p16's invented 0.65; 0.8: p09's wrong Koschei and p17-p19's right ones; 0.9: the 19 sure and right.
    assert bins == {0.3: (1, 0), 0.4: (1, 0), 0.5: (2, 1), 0.6: (1, 0), 0.8: (4, 3), 0.9: (19, 19)}
    assert (rel["names"], rel["right"]) == (28, 23)  # the micro tp + fp and tp of test_eval
    mean_top = (7 * 0.95 + 12 * 0.9) / 19
    gaps = 0.3 + 0.4 + 2 * abs(0.5 - 0.525) + 0.65 + 4 * abs(0.75 - 0.8375) + 19 * (1 - mean_top)
    assert rel["ece"] == pytest.approx(gaps / 28)
    bins_conf = {round(b["low"], 1): b["confidence"] for b in rel["bins"] if b["names"]}
    assert bins_conf[0.8] == pytest.approx(0.8375) and bins_conf[0.9] == pytest.approx(mean_top)
    page = (tmp_path / "out" / "eval.html").read_text()
    plot = next(c for c in re.findall(r"<svg.*?</svg>", page, flags=re.S) if "Reliability of the written" in c)
    assert re.findall(r'data-kind="bar" data-value="([\d.]+)"', plot) == ["0", "0", "0.5", "0", "0.75", "1"]
    assert f"ECE {gaps / 28:.3f} over 28 names" in plot


def test_results_stored_without_scores_count_as_unknown_when_resumed(tmp_path):
    """A results file from before the scores were recorded resumes; those photos are unknown, not unmarked."""
    config, manifest = _with_confidences(tmp_path)
    assert _eval(config, manifest, tmp_path / "out").returncode == 0
    results = tmp_path / "out" / "config" / "photos.jsonl"
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    old = [{k: v for k, v in r.items() if k != "scores"} if r["file"].endswith(("p08.jpg", "p15.jpg")) else r
           for r in lines]
    results.write_text("".join(json.dumps(r) + "\n" for r in old))
    done = _eval(config, manifest, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    s = json.loads((tmp_path / "out" / "eval.json").read_text())["profiles"][0]
    r = s["review"]
    # p08 (2 mistakes) and p15 (1) are left out of both sides rather than counted as missed by the review.
    assert (r["photos"], r["flagged"], r["mistakes"], r["caught"], r["unknown"]) == (17, 3, 6, 2, 2)
    assert s["reliability"]["names"] == 28  # their written names' confidences were stored before
    assert "not counted: 1 failed, 2 without confidence scores" in done.stdout
    assert results.read_text().count("\n") == 20  # nothing labelled again


def test_a_backend_without_token_probabilities_has_no_review_figures(tmp_path):
    config, manifest = _set_up(tmp_path)
    done = _eval(config, manifest, tmp_path / "out")
    s = json.loads((tmp_path / "out" / "eval.json").read_text())["profiles"][0]
    assert s["review"] is None and s["reliability"] is None
    assert "config review: - (no photo has confidence scores" in done.stdout
    assert "<h2>Review set</h2>" not in (tmp_path / "out" / "eval.html").read_text()


def test_capture_and_reliability_edges():
    photos = [review.Photo(1, {"characters": {"names": [{"name": "A", "confidence": 0.5}], "missed": None}}),
              review.Photo(0, None), review.Photo(3, None, failed=True)]
    r = review.capture(photos, 0.6, thresholds=(0.5,))
    assert (r["photos"], r["flagged"], r["caught"], r["unknown"], r["failed"]) == (1, 1, 1, 1, 1)
    assert [(c["threshold"], c["flagged"]) for c in r["curve"]] == [(0.5, 0), (0.6, 1)]  # 0.5 is not below 0.5
    assert review.capture([review.Photo(1, None)], 0.6) is None
    no_mistakes = review.capture([review.Photo(0, {})], 0.6)
    assert no_mistakes["caught_share"] is None and no_mistakes["flagged_share"] == 0.0
    rel = review.reliability([(1.0, True), (0.0, False), (0.1, True)])
    assert [(b["names"], b["right"]) for b in rel["bins"]][:2] == [(1, 0), (1, 1)] and rel["bins"][-1]["names"] == 1
    assert rel["ece"] == pytest.approx((0 + 0 + 0.9) / 3)
    assert review.reliability([]) is None
