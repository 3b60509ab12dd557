"""The model registry ships with bbsd and is the same from any folder; a models folder beside the config
(or named by `[model] dir` / `--dir`) adds its own rows and replaces shipped ones by name."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bbsd import config
from bbsd.models import registry as models
from tests.conftest import SLACK, bbsd_cmd

LOCAL = """
[[model]]
name = "Local-VL"
family = "llava"
params_b = 0.001
status = "runnable"
repo = "bbs/Local-VL-GGUF"
text = "Local-VL-F32.gguf"
mmproj = "mmproj-Local-VL-F32.gguf"

[[model]]
name = "smolvlm-500m"
family = "mine"
params_b = 0.5
status = "runnable"
repo = "bbs/SmolVLM-500M-finetuned-GGUF"
"""


def _models_list(cwd: Path, *args: str) -> dict[str, str]:
    """`bbsd models list` run from `cwd`, as a person runs it anywhere: its rows by name."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    r = subprocess.run(bbsd_cmd("models", "list", *args), capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=60 * SLACK)
    assert r.returncode == 0, r.stderr
    table = r.stdout.split("\n\n", 1)[0].splitlines()[1:]
    return {line.split()[0]: line for line in table}


def test_models_list_shows_the_shipped_registry_from_any_folder(tmp_path):
    rows = _models_list(tmp_path)  # no gguf_models/ here
    shipped = [e.name for e in models.load_registry(models.shipped())]
    assert len(shipped) > 10 and list(rows) == shipped


def test_a_models_folder_beside_the_config_adds_rows_and_replaces_shipped_ones_by_name(tmp_path, tiny_models):
    folder = tmp_path / "gguf_models"
    folder.mkdir()
    shutil.copy(tiny_models[0], folder / "Local-VL-F32.gguf")
    shutil.copy(tiny_models[1], folder / "mmproj-Local-VL-F32.gguf")
    (folder / "models.toml").write_text(LOCAL)
    rows = _models_list(tmp_path)
    shipped = [e.name for e in models.load_registry(models.shipped())]
    assert list(rows) == [*(n if n != "SmolVLM-500M" else "smolvlm-500m" for n in shipped), "Local-VL"]
    assert " mine " in rows["smolvlm-500m"]  # the local row, in the shipped row's place
    assert "Local-VL-F32.gguf" in rows["Local-VL"] and "mmproj-Local-VL-F32.gguf" in rows["Local-VL"]

    elsewhere = tmp_path / "show"  # the config's folder decides, not the working folder
    elsewhere.mkdir()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'model = "local-vl"\n[watch]\nfolders = ["{elsewhere}"]\n')
    s = config.load(cfg, environ={})
    assert (s.backend.path, s.backend.mmproj) == (folder / "Local-VL-F32.gguf", folder / "mmproj-Local-VL-F32.gguf")
