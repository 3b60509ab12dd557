"""The reference pages rendered from the code by cog blocks are current: a configuration key added,
removed or re-described, a command's option changed, or a layer or import contract changed, fails
here until the page is rendered again (the command is in the failure)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cogapp import Cog

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())  # at any depth
PAGES = ["docs/stage/configuration.md", "docs/stage/commands.md", "docs/developer/architecture.md"]


def cog_check(page: Path) -> int:
    """cog's own check mode: 0 when running the page's blocks would not change it."""
    name = page.relative_to(REPO) if page.is_relative_to(REPO) else page
    return Cog().main(["cog", "--check", "--check-fail-msg", f"render it again: .venv/bin/cog -r {name}", str(page)])


@pytest.mark.parametrize("name", PAGES)
def test_generated_reference_is_current(name, capsys):
    status = cog_check(REPO / name)
    said = capsys.readouterr()
    assert status == 0, said.out + said.err


def test_a_hand_edited_reference_fails_the_check(tmp_path):
    """The check is not a formality: a default changed by hand (not in the code) is caught."""
    page = tmp_path / "configuration.md"
    text = (REPO / PAGES[0]).read_text()
    row = "| `watch.settle_seconds` | float | `2.0` |"
    assert row in text
    page.write_text(text.replace(row, "| `watch.settle_seconds` | float | `3.0` |"))
    assert cog_check(page) != 0
