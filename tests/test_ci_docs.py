"""The docs that say what CI runs name every `make` step of `.ci/run`, in its order."""

import re

from tests.conftest import REPO

CI_STEPS = re.findall(r"^make ([\w-]+)\s*$", (REPO / ".ci" / "run").read_text(), flags=re.M)


def _in_order(text: str) -> list[str]:
    """The `make …` targets that `text` names, in order of first mention."""
    seen = []
    for target in re.findall(r"`make ([\w-]+)`", text):
        if target not in seen:
            seen.append(target)
    return seen


def test_the_docs_name_every_step_ci_runs():
    assert CI_STEPS == ["test", "release", "systemd-test"]
    release = (REPO / "docs" / "developer" / "release.md").read_text().split("## CI", 1)[1].split("\n## ", 1)[0]
    install = (REPO / "docs" / "stage" / "install.md").read_text()
    said = re.search(r"CI runs (.+?)(?:\n\n|\.\s)", install, flags=re.S)
    assert said, "docs/stage/install.md no longer says what CI runs"
    assert _in_order(release) == CI_STEPS, release
    assert _in_order(said.group(1)) == CI_STEPS, said.group(1)
