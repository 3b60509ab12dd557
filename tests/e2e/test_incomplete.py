"""A file that may still be arriving (empty, truncated) waits quietly: `bbsd run` as a real subprocess
logs `photo.incomplete` once when its wait starts and once when it ends, however often it looks."""

from __future__ import annotations

from pathlib import Path

import pytest

from bbsd.sidecars import record as sidecar
from tests.conftest import jpeg_bytes, make_photo, wait_until, write_config

pytestmark = pytest.mark.slow


def _start(tmp_path: Path, bbsd_run, timeout_s: str):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    make_photo(inbox / "ok.jpg")  # a photo labelled first: the daemon is past its start-up scan
    cfg = write_config(tmp_path, [inbox], backend="fake")
    run = bbsd_run(cfg, env={"BBSD_WATCH_INCOMPLETE_TIMEOUT_SECONDS": timeout_s})
    run.wait_for("photo.labeled")
    return inbox, run


def _waits(run, photo: Path) -> list[dict]:
    return [e for e in run.events("photo.incomplete") if e["path"] == str(photo)]


def test_an_empty_file_logs_its_wait_once_at_start_and_once_at_timeout(tmp_path, bbsd_run):
    inbox, run = _start(tmp_path, bbsd_run, "3")  # looked at about once a second for 3 s
    empty = inbox / "empty.jpg"
    empty.write_bytes(b"")
    wait_until(lambda: sidecar.path_for(empty).exists() and len(_waits(run, empty)) >= 2, 60, "the timeout")
    assert run.stop() == 0
    waits = _waits(run, empty)
    assert [e["state"] for e in waits] == ["waiting", "ended"], waits
    assert waits[0]["code"] == "empty_file" and waits[0]["timeout_s"] == 3
    assert waits[1]["outcome"] == "timed_out" and waits[1]["code"] == "empty_file"
    assert waits[1]["waited_s"] >= 2


def test_a_truncated_file_that_completes_logs_its_wait_once_at_start_and_once_when_labelled(tmp_path, bbsd_run):
    inbox, run = _start(tmp_path, bbsd_run, "60")  # time enough to finish the copy on a loaded machine
    cut = inbox / "cut.jpg"
    data = jpeg_bytes(size=(800, 600))
    cut.write_bytes(data[:2000])
    wait_until(lambda: _waits(run, cut), 60, "the wait's start")
    with cut.open("ab") as f:  # the copy goes on
        f.write(data[2000:])
    wait_until(lambda: len(_waits(run, cut)) >= 2, 60, "the wait's end")
    assert run.stop() == 0
    waits = _waits(run, cut)
    assert [e["state"] for e in waits] == ["waiting", "ended"], waits
    assert waits[0]["code"] == "truncated"
    assert waits[1]["outcome"] == "labeled"
    assert sidecar.read(cut)["status"] == "labeled"
