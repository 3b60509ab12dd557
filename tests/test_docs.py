"""The README's configuration reference and Quick start stay true to the code."""

import re
from pathlib import Path

from bbsd import engines
from bbsd.config import SCHEMA

README = (Path(__file__).parent.parent / "README.md").read_text()
CI = (Path(__file__).parent.parent / ".ci" / "run").read_text()


def test_every_config_key_is_documented():
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+\.\w+)` \|", section, flags=re.M))
    tables = [SCHEMA, *(engines.get(name).tables for name in engines.BACKENDS)]  # the core's and each backend's
    assert documented == {f"{s}.{k}" for t in tables for s, keys in t.items() for k in keys}


def test_ci_runs_the_readme_test_command():
    quick = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert "\nmake test\n" in CI and "\nmake release\n" in CI
