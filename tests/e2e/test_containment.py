"""One bad file never stops the service: photo bytes are parsed only in a contained decoder process.

End to end through `bbsd run` (real watcher, real subprocesses, the real engine): hostile and
damaged files each end in one record while the good photos dropped with them are labelled;
a photo in hand at two deaths of the daemon itself is quarantined; a failing main loop
exits promptly. Faults are injected by the suite's plugin (tests/fakes/faults.py), loaded only where a test asks.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from bbsd.sidecars import record as sidecar
from tests import hostile
from tests.conftest import make_photo, wait_until, write_config
from tests.fakes import FAULTS

pytestmark = pytest.mark.slow
PANORAMA = (16000, 15625)  # 250 MP: over Pillow's 179 MP hard limit


@pytest.fixture(scope="session")
def panorama(tmp_path_factory) -> Path:
    return hostile.huge_jpeg(tmp_path_factory.mktemp("pano") / "panorama.jpg", *PANORAMA)


def _doc(photo: Path) -> dict:
    return json.loads(sidecar.path_for(photo).read_text())


def _done(photos) -> bool:
    return all(sidecar.path_for(p).exists() for p in photos)


def _no_traceback(run) -> None:
    text = run.log_path.read_text()
    assert "Traceback" not in text and '"exception"' not in text, text[-3000:]


def test_hostile_files_each_end_in_one_record_and_the_daemon_labels_on(tmp_path, tiny_models, bbsd_run, panorama):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = write_config(tmp_path, [inbox], tiny_models, extra="[decode]\ntimeout_seconds = 3\n")
    run = bbsd_run(cfg, "run", env={**FAULTS, "BBSD_TEST_DECODE_ABORT_ON": "abort",
                                    "BBSD_TEST_DECODE_HANG_ON": "hang"})
    run.wait_for("daemon.ready")
    bad = {
        "too_large": hostile.png_claiming(inbox / "claims_900mp.png", 30000, 30000),
        "ifd": hostile.tiff_ifd_past_end(inbox / "ifd_past_end.tif"),
        "strips": hostile.tiff_strips_past_end(inbox / "strips_past_end.tif"),
        "decoder_crash": make_photo(inbox / "abort_me.jpg", color=(5, 5, 5)),
        "decode_timeout": make_photo(inbox / "hang_me.jpg", color=(6, 6, 6)),
    }
    good = [make_photo(inbox / f"good_{i}.jpg", color=(40 * i, 90, 20)) for i in range(3)]
    os.link(panorama, inbox / "panorama.jpg")
    pano = inbox / "panorama.jpg"
    wait_until(lambda: _done([*bad.values(), *good, pano]), 120, "a record for every file")

    assert bad["too_large"].stat().st_size < 100
    assert _doc(bad["too_large"])["error"]["code"] == "too_large"
    assert "max_megapixels" in _doc(bad["too_large"])["error"]["hint"]
    assert _doc(bad["decoder_crash"])["error"]["code"] == "decoder_crash"
    assert _doc(bad["decode_timeout"])["error"]["code"] == "decode_timeout"
    for key in ("ifd", "strips"):
        assert _doc(bad[key])["status"] == "error", key
    pano_doc = _doc(pano)
    assert pano_doc["status"] == "labeled"
    assert (pano_doc["photo"]["width"], pano_doc["photo"]["height"]) == PANORAMA
    for p in good:
        assert _doc(p)["status"] == "labeled"
    lost = [e for e in run.events("decoder.lost") if e["role"] == "decode"]
    assert {e["reason"] for e in lost} == {"crash", "timeout"}  # the daemon itself lost nothing
    assert sum(e["reason"] == "crash" for e in lost) == 2  # a crash is retried once, then quarantined

    late = make_photo(inbox / "late.jpg", color=(1, 200, 1))  # still labelling after all of that
    wait_until(lambda: _done([late]), 60, "the late photo")
    assert _doc(late)["status"] == "labeled"
    assert run.proc.poll() is None
    _no_traceback(run)
    assert run.stop() == 0


def _in_hand(state: Path) -> str | None:
    """The photo in hand (these daemons run one worker thread)."""
    try:
        in_hand = json.loads((state / "in_hand.json").read_text()).get("in_hand")
    except (OSError, ValueError):
        return None
    return in_hand[0] if in_hand else None


def test_photo_in_hand_at_two_daemon_deaths_is_quarantined(tmp_path, tiny_models, bbsd_run):
    """kill -9 of the daemon itself under a restart loop like systemd's: the third start quarantines."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = write_config(tmp_path, [inbox], tiny_models, extra="[worker]\ntimeout_seconds = 600\n")
    state = tmp_path / "state"
    hooks = {**FAULTS, "BBSD_TEST_HANG_ON": "poison"}  # the engine hangs on it: it stays in hand
    good = [make_photo(inbox / f"good_{i}.jpg", color=(30 * i, 9, 90)) for i in range(2)]
    poison = make_photo(inbox / "poison.jpg", color=(3, 3, 3))
    for start in (1, 2):
        run = bbsd_run(cfg, f"start{start}", env=hooks)
        run.wait_for("daemon.ready")  # the journal was read: what it says now is this start's
        wait_until(lambda: _in_hand(state) == str(poison), 90, f"the poison photo in hand (start {start})")
        os.kill(run.proc.pid, signal.SIGKILL)
        run.proc.wait()
        assert not sidecar.path_for(poison).exists()

    third = bbsd_run(cfg, "start3", env=hooks)
    quarantined = third.wait_for("photo.quarantined")[0]
    assert quarantined["path"] == str(poison) and quarantined["deaths"] == 2
    assert _doc(poison)["error"]["code"] == "daemon_crash"
    late = make_photo(inbox / "late.jpg", color=(200, 9, 9))
    wait_until(lambda: _done([*good, late]), 60, "the other photos")
    assert all(_doc(p)["status"] == "labeled" for p in [*good, late])
    assert third.stop() == 0

    fourth = bbsd_run(cfg, "start4", env=hooks)  # never tried again until it changes
    assert fourth.wait_for("daemon.ready")[0]["queued"] == 0
    assert not fourth.events("photo.quarantined") and fourth.stop() == 0


def test_a_failing_main_loop_exits_promptly_and_abandons_the_photo_in_hand(tmp_path, tiny_models, bbsd_run):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = write_config(tmp_path, [inbox], tiny_models)
    run = bbsd_run(cfg, "run", env={**FAULTS, "BBSD_TEST_LOOP_FAIL_ON": "boom",
                                    "BBSD_TEST_SLOW_MS": "60000"})
    run.wait_for("daemon.ready")
    slow = make_photo(inbox / "slow.jpg")
    wait_until(lambda: _in_hand(tmp_path / "state") == str(slow), 60, "a photo in hand")
    make_photo(inbox / "boom.jpg", color=(9, 9, 9))
    wait_until(lambda: run.events("daemon.failed"), 60, "the main loop's failure")  # the process may exit
    failed = run.events("daemon.failed")[0]
    t_failed = time.monotonic()
    code = run.proc.wait(timeout=30)
    took = time.monotonic() - t_failed
    assert code == 1, run.log_path.read_text()[-2000:]
    assert took < 15  # seconds, not minutes: never a spinning process
    assert "test hook" in failed["error"]
    assert [e["path"] for e in run.events("photo.abandoned")] == [str(slow)]
    assert not sidecar.path_for(slow).exists()  # nothing partial: it is redone at the next start
    assert _in_hand(tmp_path / "state") is None  # an abandoned photo is no death
