"""`make demo` is a new user's first command: what it prints must be true, run after run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
DEMO_RIGHT = 6  # of the demo's 8 photos, the fewest the shipped toy model may label exactly right ("most"; 7 here)


def test_demo_tells_the_truth_about_paths_and_labels_afresh_each_run(tmp_path):
    exe = Path(sys.executable).parent / "bbsd"  # the installed command, as `make demo` runs it
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env["PATH"] = "/usr/bin:/bin"  # a fresh shell: the venv is not on the PATH
    for run in (1, 2):
        r = subprocess.run([str(exe), "demo", "--dir", "demo"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out
        assert "daemon.stopped" in out and "labeled=8" in out, f"run {run} did not label its 8 photos:\n{out}"
        assert "toy model, trained on synthetic puppets" in r.stdout and "bbsd models list" in r.stdout
        verdicts = re.findall(r"^  (right|wrong: .+)$", r.stdout, re.M)
        right = re.search(r"^The toy model named exactly the right characters and props on (\d+) of 8 photos\.$",
                          r.stdout, re.M)
        assert len(verdicts) == 8 and right and int(right[1]) == verdicts.count("right"), r.stdout
        assert int(right[1]) >= DEMO_RIGHT, f"the toy model labelled {right[1]} of 8 demo photos right:\n{r.stdout}"
        assert not re.search(r'^\{"', out, re.M)  # one format in the stream: the worker logs as the daemon does
        for kind in ("JSON", "XMP "):
            shown = re.findall(rf"^  {kind} (\S+)$", r.stdout, re.M)
            assert len(shown) == 8 and all((tmp_path / p).is_file() for p in shown)
        command = re.search(r"^Run it yourself: (\S+) run --config (\S+)$", r.stdout, re.M)
        assert command and (tmp_path / command[2]).is_file()
        assert shutil.which(command[1], path=env["PATH"]) or Path(command[1]).is_absolute()
        assert subprocess.run([command[1], "--version"], capture_output=True, env=env, cwd=tmp_path).returncode == 0
    assert {p.name for p in (tmp_path / "demo").iterdir()} == {"config.toml", "inbox", "models", "photos", "state"}
    status = subprocess.run([str(exe), "status", "--config", "demo/config.toml"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert status.returncode == 3 and "not running (last status" in status.stdout and "tiny-text.gguf" in status.stdout
