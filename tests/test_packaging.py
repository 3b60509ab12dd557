"""Installing bbsd prints nothing a user should not see from our own package, ships its data, and
ships no test double or test hook (those are plugins kept with the tests: tests/fakes/)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

# What only the tests may hold: their fault switches, the fake backend, the hooks that used to be in bbsd.
TEST_ONLY = ("BBSD_TEST", "FakeLabeler", "fake_engine", "_test_hook")


def build_wheel(src_package: Path, tmp_path: Path) -> tuple[Path, str]:
    """The wheel pip builds from pyproject.toml, the README and `src_package` (as bbsd/), and pip's output."""
    src = tmp_path / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(src_package, src / "bbsd", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-v", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return next((tmp_path / "dist").glob("bbsd-*.whl")), r.stdout + r.stderr


def _test_only_words(wheel: Path) -> list[str]:
    """'file: word' for each word of TEST_ONLY found in a file of the wheel."""
    found = []
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            text = z.read(name).decode("utf-8", "replace")
            found += [f"{name}: {word}" for word in TEST_ONLY if word in text]
    return found



@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    return build_wheel(REPO / "bbsd", tmp_path_factory.mktemp("wheel"))


def test_wheel_builds_without_setuptools_warnings_and_ships_the_schema(built):
    wheel, output = built
    for warning in ("Warning", "deprecated", "absent from the `packages`"):
        assert warning not in output, [line for line in output.splitlines() if warning in line]
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "bbsd/schema/sidecar.schema.json" in names
    assert "bbsd/models/models.toml" in names  # the model registry: `bbsd models list` from any folder
    assert "License-Expression: MIT" in metadata


def test_the_wheel_holds_no_test_double_and_no_test_hook(built, tmp_path):
    wheel, _ = built
    assert _test_only_words(wheel) == []
    # The check can fail: a package with the old fake backend's class in it is caught.
    planted = tmp_path / "planted"
    shutil.copytree(REPO / "bbsd", planted, ignore=shutil.ignore_patterns("__pycache__"))
    (planted / "engine" / "fake.py").write_text("class FakeLabeler:\n    pass\n")
    assert _test_only_words(build_wheel(planted, tmp_path / "again")[0]) == ["bbsd/engine/fake.py: FakeLabeler"]
