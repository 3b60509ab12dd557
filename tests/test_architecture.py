"""The house rules (docs/developer/architecture.md) hold: import-linter's contracts in pyproject.toml are
kept by the code, and each kind of wrong arrow planted in a copy of the package breaks its contract."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LINT = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the package under `root`, with the repository's contracts."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--no-cache", str(REPO / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_code_keeps_every_contract():
    r = _lint(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 broken" in r.stdout and "KEPT" in r.stdout


# A wrong arrow of each kind the rules forbid: (module it goes into, the line, the contract that must break).
PLANTED = {
    "an engine module imports a command above it":
        ("engine/labeler.py", "from bbsd import cli_models  # noqa", "A stage imports only the stages below it"),
    "two peers import each other":
        ("arrive/settle.py", "from bbsd.show import catalog  # noqa", "A stage imports only the stages below it"),
    "a circle inside a stage":
        ("engine/prompt.py", "from bbsd.engine import supervisor  # noqa", "No circle of imports"),
    "a second door to llama_cpp":
        ("engine/llama/native.py", "import llama_cpp  # noqa", "Only bbsd.llama_binding imports llama_cpp"),
    "the daemon imports a decoding module":
        ("pipeline.py", "from bbsd.photo import decode  # noqa", "The daemon never imports a photo-decoding module"),
    "a new top-level module no layer names":
        ("stray.py", "", "A stage imports only the stages below it"),
}


@pytest.mark.parametrize("plant", PLANTED)
def test_a_planted_violation_breaks_its_contract(tmp_path, plant):
    module, line, contract = PLANTED[plant]
    shutil.copytree(REPO / "bbsd", tmp_path / "bbsd", ignore=shutil.ignore_patterns("__pycache__", "llamacpp"))
    target = tmp_path / "bbsd" / module
    target.write_text((target.read_text() if target.exists() else '"""A module."""\n') + f"\n{line}\n")
    r = _lint(tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert contract in r.stdout.partition("Broken contracts")[2], r.stdout
