"""`bbsd truth export` and `bbsd eval`, end to end through the CLI and the fake backend's worker.

The fake backend answers each photo from a script keyed by file name, so every precision,
recall and F1 below is known in advance and written out by hand, not computed by bbsd.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bbsd.sidecars import record as sidecar
from tests.conftest import make_photo, run_bbsd, write_config

BY, K, L = "Baba Yaga", "Koschei", "lantern"
QUESTION = '[[questions]]\nkey = "outdoor"\nquestion = "Is it outdoors?"\ntype = "yes_no"\n'

# (truth characters, predicted characters, truth props, predicted props, truth answer, predicted answer)
# None as the prediction: the model's reply is invalid (no "answers"), so the photo fails.
SCRIPT = (
    [({BY}, {BY}, {L}, {L}, "yes", "yes")] * 5            # p00-p04
    + [({BY}, {BY}, {L}, set(), "yes", "yes")] * 2        # p05-p06: lantern missed
    + [({BY}, {BY}, set(), {L}, "yes", "yes")]            # p07: lantern invented
    + [({BY}, {K}, set(), set(), "yes", "yes")] * 2       # p08-p09: Baba Yaga taken for Koschei
    + [({K}, {K}, set(), set(), "no", "yes")] * 2         # p10-p11: question wrong
    + [({K}, {K}, set(), set(), "no", "no")] * 2          # p12-p13
    + [({K}, None, set(), None, "no", None)]              # p14: invalid reply, predicts nothing
    + [(set(), {BY}, set(), set(), "no", "no")] * 2       # p15-p16: Baba Yaga invented
    + [({BY, K}, {BY, K}, set(), set(), "no", "no")] * 3  # p17-p19
)


def _set_up(tmp_path: Path, script=SCRIPT) -> tuple[Path, Path]:
    """Photos, the fake's per-photo replies, a config selecting them, and the truth manifest."""
    photos, replies, lines = tmp_path / "set", {}, []
    for i, (tc, pc, tp, pp, ta, pa) in enumerate(script):
        name = f"p{i:02d}.jpg"
        make_photo(photos / name, color=(10 * i, 40, 40))
        lines.append(json.dumps({"file": f"set/{name}", "characters": sorted(tc), "props": sorted(tp),
                                 "answers": {"outdoor": ta}}))
        replies[name] = ({"characters": sorted(pc), "props": sorted(pp), "caption": "c", "scene": "s",
                          "visible_text": [], "answers": {"outdoor": pa}} if pc is not None else '{"oops": 1}')
    (tmp_path / "replies.json").write_text(json.dumps(replies))
    (tmp_path / "inbox").mkdir()
    config = write_config(tmp_path, [tmp_path / "inbox"], backend="fake",
                          extra=f'[fake]\nreplies = "{tmp_path / "replies.json"}"\n{QUESTION}')
    manifest = tmp_path / "truth.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return config, manifest


def _eval(config: Path, manifest: Path, out: Path, *extra: str):
    return run_bbsd("eval", "--config", str(config), "--truth", str(manifest), "--out", str(out), *extra)


def _close(got: dict, precision: float, recall: float, f1: float) -> None:
    assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((precision, recall, f1), rel=1e-12)


def test_eval_reports_the_known_figures_of_a_scripted_set(tmp_path):
    config, manifest = _set_up(tmp_path)
    done = _eval(config, manifest, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    s = json.loads((tmp_path / "out" / "eval.json").read_text())["profiles"][0]
    ch, pr = s["characters"], s["props"]
    # Baba Yaga: right on p00-p07 and p17-p19 (11), invented on p15-p16 (2), missed on p08-p09 (2).
    assert (ch["labels"][BY]["tp"], ch["labels"][BY]["fp"], ch["labels"][BY]["fn"]) == (11, 2, 2)
    _close(ch["labels"][BY], 11 / 13, 11 / 13, 11 / 13)
    # Koschei: right on p10-p13 and p17-p19 (7), given for Baba Yaga on p08-p09 (2), missed on p14 (1).
    _close(ch["labels"][K], 7 / 9, 7 / 8, 2 * 7 / (2 * 7 + 2 + 1))
    # lantern: right on p00-p04 (5), invented on p07 (1), missed on p05-p06 (2).
    _close(pr["labels"][L], 5 / 6, 5 / 7, 10 / 13)
    _close(s["micro"], 23 / 28, 23 / 28, 23 / 28)
    assert ch["macro"]["f1"] == pytest.approx((11 / 13 + 14 / 17) / 2, rel=1e-12)
    assert s["exact"] == pytest.approx(12 / 20)  # all but p05-p09, p14, p15-p16
    assert s["hallucination_rate"] == pytest.approx(5 / 20)  # p07, p08, p09, p15, p16
    assert ch["confusions"][0] == {"truth": BY, "predicted": K, "count": 2}
    assert s["failed"] == 1 and s["photos"] == 20
    assert s["questions"]["outdoor"]["accuracy"] == pytest.approx(17 / 20)  # p10, p11, p14 wrong
    assert s["latency_ms"]["p50"] is not None and s["peak_rss_mb"] > 0 and s["load_ms"] > 0
    assert "Baba Yaga P=0.846 R=0.846 F1=0.846" in done.stdout
    assert "confusions: Baba Yaga as Koschei ×2" in done.stdout
    page = (tmp_path / "out" / "eval.html").read_text()
    assert "<tr><td>config</td><td>characters</td><td>Baba Yaga</td><td>Koschei</td><td>2</td></tr>" in page
    assert "question outdoor: accuracy 0.850 over 20 photos" in done.stdout
    assert not list((tmp_path / "set").glob("*.json")) and not list((tmp_path / "set").glob("*.xmp"))


def test_the_html_report_holds_its_plots_and_data(tmp_path):
    config, manifest = _set_up(tmp_path, SCRIPT[:4])
    assert _eval(config, manifest, tmp_path / "out").returncode == 0
    page = (tmp_path / "out" / "eval.html").read_text()
    assert page.count("<svg") == 2  # accuracy vs latency, per-label F1 of the one profile
    assert "Micro F1 vs latency p50" in page and 'data-kind="bar"' in page and 'data-kind="point"' in page
    data = page.split("id='data'>")[1].split("</script>")[0]
    assert json.loads(data)[0]["characters"]["labels"][BY]["tp"] == 4


def test_an_interrupted_run_resumes_without_relabelling_what_is_done(tmp_path):
    config, manifest = _set_up(tmp_path)
    assert _eval(config, manifest, tmp_path / "out").returncode == 0
    results = tmp_path / "out" / "config" / "photos.jsonl"
    kept = [json.loads(line) for line in results.read_text().splitlines()[:8]]
    # Mark a kept result so relabelling it would show: p00 "predicted" nothing.
    kept[0] = {**kept[0], "characters": [], "props": []}
    cut = json.dumps(json.loads(results.read_text().splitlines()[8]))[:30]  # a line cut short by the stop
    results.write_text("".join(json.dumps(r) + "\n" for r in kept) + cut)
    again = _eval(config, manifest, tmp_path / "out")
    assert again.returncode == 0, again.stderr
    s = json.loads((tmp_path / "out" / "eval.json").read_text())["profiles"][0]
    assert s["photos"] == 20
    assert s["characters"]["labels"][BY]["tp"] == 10  # p00 kept as stored, not labelled again
    assert s["props"]["labels"][L]["tp"] == 4
    assert sum(1 for line in results.read_text().splitlines() if line.startswith("{\"file\"")) == 8 + 12


def test_a_rerun_with_changed_settings_is_refused_not_mixed(tmp_path):
    config, manifest = _set_up(tmp_path, SCRIPT[:2])
    assert _eval(config, manifest, tmp_path / "out").returncode == 0
    config.write_text(config.read_text().replace("image_max_side = 256", "image_max_side = 300"))
    done = _eval(config, manifest, tmp_path / "out")
    assert done.returncode == 2
    assert "holds results made with other settings than profile 'config' has now" in done.stderr


def test_a_bad_manifest_line_is_one_line_naming_file_and_line(tmp_path):
    config, manifest = _set_up(tmp_path, SCRIPT[:3])
    lines = manifest.read_text().splitlines()
    lines[2] = lines[2].replace('"characters": ["Baba Yaga"]', '"characters": "Baba Yaga"')
    manifest.write_text("\n".join(lines) + "\n")
    done = _eval(config, manifest, tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert f"{manifest}:3: 'characters' is missing or not a list of names" in done.stderr


def test_a_name_outside_the_catalog_is_refused_with_its_line(tmp_path):
    config, manifest = _set_up(tmp_path, SCRIPT[:2])
    manifest.write_text(manifest.read_text() + '{"file": "set/p00.jpg", "characters": ["Kashchey"], "props": []}\n')
    done = _eval(config, manifest, tmp_path / "out")
    assert done.returncode == 2 and f"{manifest}:3: 'characters' names 'Kashchey'" in done.stderr


def test_truth_export_takes_only_photos_a_person_confirmed_or_corrected(tmp_path):
    inbox = tmp_path / "inbox"
    photos = [make_photo(inbox / f"{n}.jpg") for n in ("corrected", "confirmed", "untouched")]
    config = write_config(tmp_path, [inbox], backend="fake")
    assert run_bbsd("label", "--config", str(config), str(inbox)).returncode == 0
    corrected = json.loads(sidecar.path_for(photos[0]).read_text())
    corrected["labels"]["characters"], corrected["labels"]["props"] = [K], []  # labels_sha256 now differs
    sidecar.path_for(photos[0]).write_text(json.dumps(corrected))
    confirmed = json.loads(sidecar.path_for(photos[1]).read_text())
    sidecar.path_for(photos[1]).write_text(json.dumps({**confirmed, "reviewed": True}))
    out = tmp_path / "truth.jsonl"
    done = run_bbsd("truth", "export", "--config", str(config), "--out", str(out))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(d["file"], d["characters"], d["props"]) for d in lines] == [
        ("inbox/confirmed.jpg", [BY], [L]), ("inbox/corrected.jpg", [K], [])]
    # The exported manifest is one eval reads back.
    assert _eval(config, out, tmp_path / "out").returncode == 0


def test_a_profile_may_not_change_the_catalog(tmp_path):
    config, manifest = _set_up(tmp_path, SCRIPT[:2])
    bad = tmp_path / "bad.toml"
    bad.write_text('[[characters]]\nname = "Kot"\ndescription = "cat"\n')
    done = _eval(config, manifest, tmp_path / "out", "--profile", str(bad))
    assert done.returncode == 2 and "a profile may not set [characters]" in done.stderr


def test_the_tiny_real_model_with_and_without_references_reports_latency_memory_and_tokens(tmp_path, tiny_models,
                                                                                           summary):
    """Labels of random weights mean nothing; the plumbing is real: two model loads, two profiles, one of them
    showing the catalog's reference photos, which the first photo pays for and the others find cached."""
    from tests.show.test_references import with_references

    (tmp_path / "inbox").mkdir()
    config = write_config(tmp_path, [tmp_path / "inbox"], tiny_models)
    make_photo(tmp_path / "refs" / "baba-yaga.jpg", size=(640, 480), color=(200, 30, 30))
    make_photo(tmp_path / "refs" / "lantern.png", color=(220, 180, 40), fmt="PNG")
    with_references(config, {BY: [("refs/baba-yaga.jpg", "full figure, red shawl")], L: [("refs/lantern.png", "lit")]})
    for i in range(3):
        make_photo(tmp_path / "set" / f"p{i}.jpg", color=(90 * i, 60, 60))
    manifest = tmp_path / "truth.jsonl"
    manifest.write_text('{"file": "set/p0.jpg", "characters": ["Koschei"], "props": []}\n'
                        '{"file": "set/p1.jpg", "characters": [], "props": ["lantern"]}\n'
                        '{"file": "set/p2.jpg", "characters": ["Baba Yaga"], "props": []}\n')
    (tmp_path / "plain.toml").write_text('[prompt]\nreferences = "off"\n')
    (tmp_path / "gallery.toml").write_text('[prompt]\nreferences = "gallery"\n')
    done = _eval(config, manifest, tmp_path / "out", "--profile", str(tmp_path / "plain.toml"),
                 "--profile", str(tmp_path / "gallery.toml"))
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert [p["profile"] for p in doc["profiles"]] == ["plain", "gallery"]
    for p in doc["profiles"]:
        assert p["photos"] == 3 and p["model"]["backend"] == "llama"
        assert 0 < p["latency_ms"]["p50"] <= p["latency_ms"]["p95"]
        assert p["peak_rss_mb"] > 0 and p["load_ms"] > 0 and p["throughput_per_min"] > 0
        assert [c["threshold"] for c in p["threshold_curve"]][:2] == [0.0, 0.1]  # the engine's confidences
        _review_figures_hold_together(p)
    plain, gallery = (p["evaluated_tokens"] for p in doc["profiles"])
    # The first photo pays for the gallery once: two reference images of 16 tokens and their caption lines.
    assert gallery["first"] > plain["first"] + 2 * 16
    assert plain["first"] > plain["rest_mean"]  # the prefix is cached without references too
    assert abs(gallery["rest_mean"] - plain["rest_mean"]) <= 0.1 * plain["rest_mean"]
    summary(f"bbsd eval, tiny model: evaluated prompt tokens, first photo {gallery['first']:g} with references / "
            f"{plain['first']:g} without; later photos {gallery['rest_mean']:g} / {plain['rest_mean']:g}")
    assert doc["machine"]
    table = done.stdout.splitlines()
    header = next(line for line in table if line.startswith("profile "))
    assert "eval tok 1st" in header and "eval tok rest" in header
    assert f"{gallery['first']:.1f}" in next(line for line in table if line.startswith("gallery "))
    page = (tmp_path / "out" / "eval.html").read_text()
    # F1 vs latency, then per profile its per-label F1 bars, its review-threshold curve, the review set's
    # catch against its size and the reliability diagram
    assert page.count("<svg") == 9 and "plain" in page and "gallery" in page
    assert page.count("<title>Mistakes caught vs photos") == 2 and page.count("<title>Reliability of") == 2
    assert "<th>eval tok 1st</th>" in page and f"<td>{gallery['first']:.1f}</td>" in page
    _renders_in_chromium(tmp_path / "out" / "eval.html", tmp_path / "eval.png")


def _review_figures_hold_together(p: dict) -> None:
    """Random weights: the figures mean nothing, but each is there and agrees with the others."""
    r, rel = p["review"], p["reliability"]
    assert (r["threshold"], r["photos"], r["failed"], r["unknown"]) == (0.5, 3 - p["failed"], p["failed"], 0)
    labels = [v for kind in ("characters", "props") for v in p[kind]["labels"].values()]
    wrong, missed = sum(v["fp"] for v in labels), sum(v["fn"] for v in labels)
    assert r["mistakes"] == wrong + missed if not p["failed"] else r["mistakes"] <= wrong + missed
    assert 0 <= r["caught"] <= r["mistakes"] and 0 <= r["flagged"] <= r["photos"]
    thresholds = [c["threshold"] for c in r["curve"]]
    assert thresholds == sorted(set(thresholds)) and thresholds[0] == 0.0 and 0.5 in thresholds
    assert all(0 <= c["caught"] <= c["best"] <= r["mistakes"] and 0 <= c["flagged"] <= r["photos"] for c in r["curve"])
    assert (r["curve"][0]["flagged"], r["curve"][0]["caught"]) == (0, 0)  # 0 marks nothing
    at = next(c for c in r["curve"] if c["threshold"] == 0.5)
    assert (at["flagged"], at["caught"]) == (r["flagged"], r["caught"])
    # Every written name has a confidence, in exactly one bin.
    assert rel["names"] == sum(v["tp"] + v["fp"] for v in labels) == sum(b["names"] for b in rel["bins"])
    assert rel["right"] == sum(v["tp"] for v in labels) and 0 <= rel["ece"] <= 1


def _renders_in_chromium(page: Path, png: Path) -> None:
    """Headless Chromium draws the report: the scatter plots' blue dots and the F1 bars' green are on the screenshot."""
    import shutil

    from PIL import Image

    browser = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if browser is None:
        pytest.skip("no headless Chromium: `make tools` installs chromium-headless-shell")
    subprocess.run([browser, "--no-sandbox", "--disable-gpu", f"--screenshot={png}", "--window-size=1100,2600",
                    "--hide-scrollbars", page.as_uri()], capture_output=True, timeout=120, check=True)
    shot = Image.open(png).convert("RGB")
    pixels = list(zip(*(band.tobytes() for band in shot.split()), strict=True))  # getdata() goes in Pillow 14
    blue = sum(1 for r, g, b in pixels if b > 200 and r < 80 and 90 < g < 140)  # #1f6feb: dots and lines
    green = sum(1 for r, g, b in pixels if r < 80 and 140 < g < 190 and b < 110)  # #2da44e: the F1 bars
    assert shot.size == (1100, 2600) and blue > 50 and green > 5000, (blue, green)


def test_each_profile_reaches_the_engine_worker(tmp_path):
    """The fake runs in the supervised worker, which reads the config itself: a profile's own
    replies file must be what answers there, or profiles would all measure the same model."""
    config, manifest = _set_up(tmp_path, SCRIPT[:5])  # p00-p04: everything right
    silent = {f"p{i:02d}.jpg": {"characters": [], "props": [], "caption": "", "scene": "", "visible_text": [],
                                "answers": {"outdoor": "no"}} for i in range(5)}
    (tmp_path / "silent.json").write_text(json.dumps(silent))
    (tmp_path / "silent.toml").write_text(f'[fake]\nreplies = "{tmp_path / "silent.json"}"\n')
    (tmp_path / "as-is.toml").write_text("[engine]\nimage_max_side = 200\n")
    done = _eval(config, manifest, tmp_path / "out", "--profile", str(tmp_path / "as-is.toml"),
                 "--profile", str(tmp_path / "silent.toml"))
    assert done.returncode == 0, done.stderr
    as_is, quiet = json.loads((tmp_path / "out" / "eval.json").read_text())["profiles"]
    assert as_is["micro"]["recall"] == 1.0 and as_is["questions"]["outdoor"]["accuracy"] == 1.0
    assert quiet["micro"]["recall"] == 0.0 and quiet["questions"]["outdoor"]["accuracy"] == 0.0


def test_precision_and_recall_move_with_the_review_threshold_as_computed_by_hand():
    from bbsd.study.scores import Sample, threshold_curve

    photos = [(Sample(frozenset({"A"}), frozenset({"A", "B"})), {"A": 0.9, "B": 0.3}),
              (Sample(frozenset({"B"}), frozenset({"B"})), {"B": 0.6}),
              (Sample(frozenset({"A"}), frozenset()), {})]
    curve = {c["threshold"]: (c["precision"], c["recall"]) for c in threshold_curve(photos)}
    assert curve[0.0] == (2 / 3, 2 / 3)  # everything kept: B in the first photo is a false positive
    assert curve[0.5] == (1.0, 2 / 3)  # B at 0.3 goes to review: precision rises, recall holds
    assert curve[0.7] == (1.0, 1 / 3)  # B at 0.6 goes too: recall falls
    assert curve[0.9] == (1.0, 1 / 3)  # A at exactly 0.9 is kept (at or above)
    assert threshold_curve([(Sample(frozenset({"A"}), frozenset({"A"})), {})]) is None  # no confidences: no curve


def test_a_manifest_typed_in_nfd_names_the_catalogs_nfc_names(tmp_path):
    import unicodedata

    from bbsd import config
    from bbsd.study import truth

    cfg = write_config(tmp_path, [tmp_path], backend="fake",
                       extra='[[props]]\nname = "éclair"\ndescription = "a cake"\n')
    (tmp_path / "p.jpg").write_bytes(b"")
    nfd = unicodedata.normalize("NFD", "éclair")
    manifest = tmp_path / "truth.jsonl"
    manifest.write_text(json.dumps({"file": "p.jpg", "characters": [], "props": [nfd]}) + "\n")
    [item] = truth.read(manifest, config.load(cfg))
    assert item.props == frozenset({"éclair"})  # NFC, as the catalog and the model's labels are
