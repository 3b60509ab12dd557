"""The docs stay true: every configuration key is in the reference, and the README's Quick start is what
CI runs."""

import re
from pathlib import Path

from bbsd.config import SCHEMA
from bbsd.engine import registry as engines

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
CONFIGURATION = (REPO / "docs" / "stage" / "configuration.md").read_text()
CI = (REPO / ".ci" / "run").read_text()
TEST_DOUBLES = ("fake",)  # a backend for the tests, not for a show: not in the reference


def test_every_config_key_is_documented():
    documented = set(re.findall(r"^\| `(\w+\.\w+)` \|", CONFIGURATION, flags=re.M))
    backends = [engines.get(name).tables for name in engines.BACKENDS if name not in TEST_DOUBLES]
    tables = [SCHEMA, *backends]  # the core's and each backend's
    assert documented == {f"{s}.{k}" for t in tables for s, keys in t.items() for k in keys}


def test_ci_runs_the_readme_test_command():
    quick = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert "\nmake test\n" in CI and "\nmake release\n" in CI
