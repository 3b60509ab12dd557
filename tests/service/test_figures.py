"""`bbsd status`'s latency and memory count labelled photos only; failed photos are counted by error code.

A photo that fails before the model sees it (a text file named `.jpg`, a truncated JPEG) takes
0 ms and leaves the daemon's own RSS as its memory: before, both went into the figures
(`latency: p50 0 ms` and a 57 MB RSS where labelled photos ran at 100 MB).
"""

from __future__ import annotations

import json
import statistics

from bbsd import console
from bbsd.service.state import Status
from bbsd.sidecars import record as sidecar
from tests.conftest import jpeg_bytes, make_photo, run_bbsd, wait_until, write_config

FAILURES = {3: "truncated", 6: "not_an_image", 11: "truncated"}  # the 4th, 7th and last photo of 12


def test_status_latency_and_memory_come_from_labelled_photos_and_failures_are_counted_by_code(tmp_path):
    status = Status(tmp_path, "m.gguf")
    labelled = iter(range(100, 1000, 100))  # 9 labelled photos: 100 .. 900 ms at 100 MB
    for i in range(12):
        if i in FAILURES:
            status.record(False, 0.0, {"rss": 57.4, "vram": None}, FAILURES[i])
        else:
            status.record(True, float(next(labelled)), {"rss": 100.0, "vram": None})
    doc = json.loads(json.dumps(status.snapshot("running", 0, None)))  # as `status.json` holds it
    assert (doc["labeled"], doc["failed"]) == (9, 3)
    assert doc["failures"] == {"truncated": 2, "not_an_image": 1}  # most frequent first
    assert (doc["p50_ms"], doc["last_ms"], doc["rss_mb"]) == (500.0, 900.0, 100.0)  # was 450, 0 and 57.4
    assert doc["p95_ms"] == 860.0
    shown = console.status_text(doc, running=True).splitlines()
    assert shown[2] == "photos since start: 9 labelled, 3 failed (truncated 2, not_an_image 1)"
    assert shown[3] == "latency: p50 500 ms, p95 860 ms, last 900 ms"
    assert shown[4] == "memory: RSS 100.0 MB, VRAM - MB"


def test_the_daemon_tells_status_each_failed_photos_code(tmp_path, bbsd_run):
    inbox = tmp_path / "in"
    inbox.mkdir()
    cfg = write_config(tmp_path, [inbox], backend="fake")
    run = bbsd_run(cfg)
    try:
        good = [make_photo(inbox / f"p{i}.jpg", color=(i * 60, 0, 0)) for i in range(3)]
        (inbox / "notes.jpg").write_text("not a photo\n")
        (inbox / "cut.jpg").write_bytes(jpeg_bytes()[:300])
        every = [*good, inbox / "notes.jpg", inbox / "cut.jpg"]
        wait_until(lambda: all(sidecar.path_for(p).exists() for p in every), 60, "five sidecars")
        wait_until(lambda: json.loads(run_bbsd("status", "--config", str(cfg), "--json").stdout)
                   .get("failed") == 2, 10, "status to count the two failures")
        doc = json.loads(run_bbsd("status", "--config", str(cfg), "--json").stdout)
        totals = [json.loads(sidecar.path_for(p).read_text())["timing_ms"]["total"] for p in good]
        assert doc["p50_ms"] == statistics.median(totals)  # the failed photos' 0 ms left out
        assert doc["failures"] == {"not_an_image": 1, "truncated": 1} and doc["labeled"] == 3
        r = run_bbsd("status", "--config", str(cfg))
        assert "3 labelled, 2 failed (not_an_image 1, truncated 1)" in r.stdout
    finally:
        assert run.stop() == 0
