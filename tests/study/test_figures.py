"""`bbsd report` and `bbsd eval`: latency and memory count labelled photos only; failures by error code.

The photos are real files through the real pipeline (the fake model answers): nine labelled, a
text file named `.jpg` and two truncated JPEGs, which fail at 0 ms before the model sees them.
Before, the report took every sidecar's time (p50 over 12 records, failures drawn as 0 ms points
and as RSS points) and eval every photo's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bbsd import config
from bbsd.engine import prompt
from bbsd.metrics import percentile
from bbsd.pipeline import Pipeline
from bbsd.sidecars import record as sidecar
from bbsd.study import performance, runs, summary
from bbsd.study import report as eval_report
from bbsd.study.truth import Truth
from tests.conftest import jpeg_bytes, make_photo, write_config
from tests.fakes.engine import FakeLabeler

BAD = {"notes.jpg": "not_an_image", "cut1.jpg": "truncated", "cut2.jpg": "truncated"}


@pytest.fixture
def photos(tmp_path) -> tuple[Path, list[Path], Pipeline]:
    """Nine photos the model labels and three it never sees, with a pipeline over their folder."""
    inbox = tmp_path / "in"
    good = [make_photo(inbox / f"p{i}.jpg", size=(160 + 40 * i, 120), color=(i * 25, 60, 9)) for i in range(9)]
    (inbox / "notes.jpg").write_text("not a photo\n")
    for name in ("cut1.jpg", "cut2.jpg"):
        (inbox / name).write_bytes(jpeg_bytes()[:300])
    settings = config.load(write_config(tmp_path, [inbox], backend="fake"), environ={})
    pipeline = Pipeline(FakeLabeler(), settings, prompt.build(settings.catalog))
    yield inbox, good, pipeline
    pipeline.close()


def test_report_figures_and_plots_count_labelled_sidecars_and_name_failures_by_code(photos):
    inbox, good, pipeline = photos
    for path in sorted(inbox.iterdir()):
        pipeline.process(path)
    docs = {p.name: json.loads(sidecar.path_for(p).read_text()) for p in sorted(inbox.glob("*.jpg"))}
    assert {n: d["error"]["code"] for n, d in docs.items() if d["status"] == "error"} == BAD
    labelled = [docs[p.name]["timing_ms"]["total"] for p in good]

    records = performance.collect((inbox,), ("jpg",), None)
    s = performance.summarise(records)
    assert (s["photos"], s["labelled"], s["failed"]) == (12, 9, 3)
    assert (s["p50_ms"], s["p95_ms"], s["max_ms"]) == (percentile(labelled, 0.5), percentile(labelled, 0.95),
                                                       max(labelled))
    assert s["failures"] == {"truncated": 2, "not_an_image": 1}
    assert s["peak_rss_mb"] == max(docs[p.name]["memory_mb"]["rss"] for p in good)
    text = performance.text_summary(s).splitlines()
    assert text[1] == "failed: 3 (truncated 2, not_an_image 1)"

    page = performance.html(records, s)
    charts = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    latency, histogram, memory, per_minute = charts
    assert latency.count('data-kind="point"') == 9 and memory.count('data-kind="point"') == 9
    assert sum(int(v) for v in re.findall(r'data-value="(\d+)"', histogram)) == 9
    assert sum(int(v) for v in re.findall(r'data-value="(\d+)"', per_minute)) == 12  # every photo handled
    assert "3 failed, not drawn (truncated 2, not_an_image 1)" in latency
    assert "<th>Failed</th><td>3 (truncated 2, not_an_image 1)</td>" in page


def test_eval_latency_and_memory_count_labelled_photos_and_failures_by_code(photos):
    inbox, good, pipeline = photos
    every = [*good, *(inbox / n for n in BAD)]
    results = {str(p): runs.label_one(pipeline, p) for p in every}
    truths = [Truth(p, frozenset(), frozenset()) for p in every]
    s = summary.summarise("fake", truths, results, [], (), 0.5)
    ms = [results[str(p)]["ms"] for p in good]
    assert s["latency_ms"] == {"p50": percentile(ms, 0.5), "p95": percentile(ms, 0.95)}
    assert (s["photos"], s["failed"], s["failures"]) == (12, 3, {"truncated": 2, "not_an_image": 1})
    assert s["peak_rss_mb"] == round(max(results[str(p)]["rss_mb"] for p in good), 1)
    assert s["throughput_per_min"] == round(60_000 * 12 / sum(r["ms"] for r in results.values()), 2)
    assert "fake failed: 3 (truncated 2, not_an_image 1)" in eval_report.table([s]).splitlines()
    assert "fake failed: 3 (truncated 2, not_an_image 1), not counted" in eval_report.html([s], "here")
