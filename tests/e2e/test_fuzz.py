"""Fuzzing a running daemon with mutated real photo files (seeded and replayable).

`make test` runs BBSD_FUZZ_FILES (default 200) files of seed BBSD_FUZZ_SEED (default 17);
`make fuzz` runs a longer set over several seeds. Every file must end with exactly one
sidecar (labelled or error), no traceback may reach the log, the daemon must stay up and
label a clean photo afterwards, and its memory must stay bounded.
"""

from __future__ import annotations

import collections
import json
import os
import time

import psutil
import pytest

from bbsd.sidecars import record as sidecar
from tests import fuzz
from tests.conftest import make_photo, wait_until, write_config
from tests.e2e.test_arrivals import make_dng

pytestmark = pytest.mark.slow
FILES = int(os.environ.get("BBSD_FUZZ_FILES", "200"))
SEEDS = [int(s) for s in os.environ.get("BBSD_FUZZ_SEED", "17").split(",")]


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzzed_files_each_get_one_sidecar_and_the_daemon_survives(tmp_path, tiny_models, bbsd_run, summary, seed):
    inbox, staging = tmp_path / "inbox", tmp_path / "staging"
    inbox.mkdir()
    staging.mkdir()
    dng = make_dng(tmp_path / "seed.dng").read_bytes()
    files = fuzz.corpus(staging, FILES, seed, extra_seeds=[("dng", dng)])
    cfg = write_config(tmp_path, [inbox], tiny_models, extra="[decode]\ntimeout_seconds = 10\n")
    run = bbsd_run(cfg, "run")
    run.wait_for("daemon.ready")
    rss_before = psutil.Process(run.proc.pid).memory_info().rss / 2**20

    t0 = time.monotonic()
    for f in files:  # arrive as a burst, each file whole (as a copy tool's rename does)
        os.rename(f, inbox / f.name)
    photos = [inbox / f.name for f in files]
    wait_until(lambda: all(sidecar.path_for(p).exists() for p in photos), 600, "a sidecar for every file",
               interval=0.5)
    took = time.monotonic() - t0

    statuses = collections.Counter()
    codes = collections.Counter()
    for p in photos:
        doc = json.loads(sidecar.path_for(p).read_text())
        statuses[doc["status"]] += 1
        if doc["status"] == "error":
            codes[doc["error"]["code"]] += 1
    assert statuses["labeled"] and statuses["error"]  # the corpus really exercises both paths
    assert "internal_error" not in codes, codes  # every failure was understood, none was a bbsd bug
    json_files = [p for p in inbox.iterdir() if p.suffix == ".json"]
    assert len(json_files) == FILES  # one sidecar per file, no strays

    def records() -> collections.Counter:
        return collections.Counter(e["path"] for e in run.events() if e.get("event") in ("photo.labeled",
                                                                                          "photo.failed"))
    wait_until(lambda: set(records()) >= {str(p) for p in photos}, 60, "one record event per file")
    twice = {k: n for k, n in records().items() if n > 1}
    assert not twice, twice  # none labelled (or failed) twice

    clean = make_photo(inbox / "clean_after_fuzz.jpg", color=(10, 220, 10))
    wait_until(lambda: sidecar.path_for(clean).exists(), 60, "the clean photo")
    assert json.loads(sidecar.path_for(clean).read_text())["status"] == "labeled"
    assert run.proc.poll() is None
    rss_after = psutil.Process(run.proc.pid).memory_info().rss / 2**20
    assert rss_after - rss_before < 64, (rss_before, rss_after)
    text = run.log_path.read_text()
    assert "Traceback" not in text and '"exception"' not in text
    assert all(line.startswith("{") for line in text.splitlines() if line.strip())  # events only, no raw chatter
    lost = collections.Counter(e["reason"] for e in run.events("decoder.lost"))
    summary(f"fuzz seed {seed}: {FILES} files in {took:.0f} s — {statuses['labeled']} labelled, "
            f"{statuses['error']} error sidecars {dict(codes)}; decoder restarts {dict(lost)}; "
            f"daemon RSS {rss_before:.0f} → {rss_after:.0f} MB")
    assert run.stop() == 0
