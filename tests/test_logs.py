"""Log lines on the journal's stream carry their syslog priority (`<4>` …), and nowhere else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = """
import sys
import structlog
from bbsd import logs
logs.configure("debug", sys.argv[1])
log = structlog.get_logger()
log.debug("probe.debug")
log.info("probe.info", path="/in/a.jpg")
log.warning("probe.warning")
log.error("probe.error")
try:
    raise RuntimeError("boom")
except RuntimeError:
    log.exception("probe.crashed")
"""


def _stderr_of(tmp_path: Path, fmt: str, journal: str | None) -> list[str]:
    """Run the logging setup with stderr to a file; `journal`: "self" sets $JOURNAL_STREAM to that
    file's dev:inode (as systemd does for StandardError=journal), "other" to another file's, None unsets it."""
    err, other = tmp_path / "stderr", tmp_path / "other"
    other.touch()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with err.open("wb") as sink:
        if journal is not None:
            st = os.fstat(sink.fileno()) if journal == "self" else other.stat()
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        done = subprocess.run([sys.executable, "-c", SCRIPT, fmt], stdout=subprocess.DEVNULL, stderr=sink,
                              cwd=REPO, env=env, timeout=60)
    assert done.returncode == 0, err.read_text()
    return err.read_text().splitlines()


def test_on_the_journal_each_json_line_starts_with_its_priority(tmp_path):
    lines = _stderr_of(tmp_path, "json", "self")
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<3>"], lines
    events = [json.loads(line[3:]) for line in lines]
    assert [e["event"] for e in events] == ["probe.debug", "probe.info", "probe.warning", "probe.error",
                                            "probe.crashed"]
    assert events[1]["path"] == "/in/a.jpg" and "boom" in events[4]["exception"]


def test_on_the_journal_every_line_of_a_console_traceback_is_prefixed(tmp_path):
    """journald splits at line breaks: an unprefixed traceback line would be PRIORITY=6."""
    lines = _stderr_of(tmp_path, "console", "self")
    crashed = lines[next(i for i, line in enumerate(lines) if "probe.crashed" in line):]
    assert len(crashed) > 3 and all(line.startswith("<3>") for line in crashed), crashed
    assert lines[0].startswith("<7>") and "probe.debug" in lines[0]


@pytest.mark.parametrize("journal", [None, "other"])
def test_a_file_or_an_inherited_variable_gets_no_prefix(tmp_path, journal):
    """No $JOURNAL_STREAM, or one naming another stream (a command run from a unit's shell with
    stderr redirected): plain JSON lines."""
    lines = _stderr_of(tmp_path, "json", journal)
    assert len(lines) == 5 and all(line.startswith("{") for line in lines), lines
