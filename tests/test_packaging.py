"""Installing bbsd prints nothing a user should not see from our own package, and ships its data."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from tests.conftest import REPO


def test_wheel_builds_without_setuptools_warnings_and_ships_the_schema(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "bbsd", src / "bbsd", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-v", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    output = r.stdout + r.stderr
    for warning in ("Warning", "deprecated", "absent from the `packages`"):
        assert warning not in output, [line for line in output.splitlines() if warning in line]
    wheel = next((tmp_path / "dist").glob("bbsd-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "bbsd/schema/sidecar.schema.json" in names
    assert "License-Expression: MIT" in metadata
