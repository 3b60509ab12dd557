"""The docs stay true: every configuration key is in the reference, the README's Quick start is what
CI runs, and every link in the README and docs/ leads to a file and heading that exist."""

import re
from pathlib import Path

from bbsd.config import SCHEMA
from bbsd.engine import registry

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())  # at any depth
README = (REPO / "README.md").read_text()
CONFIGURATION = (REPO / "docs" / "stage" / "configuration.md").read_text()
CI = (REPO / ".ci" / "run").read_text()
PAGES = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").rglob("*.md"))]


def test_every_config_key_is_documented():
    documented = set(re.findall(r"^\| `(\w+\.\w+)` \|", CONFIGURATION, flags=re.M))
    backends = [registry.get(name).tables for name in registry.SHIPPED]  # a plugin's (the tests' fake) aside
    tables = [SCHEMA, *backends]  # the core's and each backend's
    assert documented == {f"{s}.{k}" for t in tables for s, keys in t.items() for k in keys}


def test_ci_runs_the_readme_test_command():
    quick = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert "\nmake test\n" in CI and "\nmake release\n" in CI


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def broken_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
            broken.append(target)
    return broken


def test_every_link_in_the_docs_resolves():
    assert {str(p.relative_to(REPO)): broken_links(p) for p in PAGES if broken_links(p)} == {}


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# A heading\n")
    page.write_text("[ok](there.md#a-heading) [gone](missing.md) [no](there.md#no-such) [web](https://x.org)\n")
    assert broken_links(page) == ["missing.md", "there.md#no-such"]


def test_every_source_path_named_in_the_docs_exists():
    """A module or test moved or renamed leaves no page pointing at its old place (`bbsd/engine/jump.py`,
    `tests/e2e/test_faults.py`); a pattern (`tests/*/test_hostile_*.py`) is not a path."""
    named = {m for p in PAGES for m in re.findall(r"`((?:bbsd|tests)/[\w/.-]*\w/?)`", p.read_text())}
    assert named and sorted(m for m in named if not (REPO / m).exists()) == []


def _shipped_texts() -> list[Path]:
    """What users read outside docs/: hints and --help in the code, the config, the unit, the registry."""
    code = [p for p in (REPO / "bbsd").rglob("*.py") if "llamacpp" not in p.parts]
    return [*code, REPO / "config.toml", REPO / "Makefile", REPO / "bbsd" / "models" / "models.toml",
            REPO / "systemd" / "bbsd.service"]


def test_every_docs_page_the_code_points_to_exists():
    """A hint, a --help text or a comment in the shipped config that names a page (`docs/producer/eval.md`)
    names one that exists, and none sends a reader to a README section that moved into docs/."""
    named = {(str(p.relative_to(REPO)), m) for p in _shipped_texts()
             for m in re.findall(r"(?<![\w/])(docs/[\w/.-]+\.md)", p.read_text())}
    assert named and sorted(f"{p}: {m}" for p, m in named if not (REPO / m).exists()) == []
    headings = set(re.findall(r"^#+ (.+)$", README, flags=re.M))  # README "Run as a service" moved to a page
    sections = {(str(p.relative_to(REPO)), m) for p in _shipped_texts()
                for m in re.findall(r"README[ :]+[\"'(]+([^\"')]+)", p.read_text())}
    assert sections and sorted(f"{p}: {m}" for p, m in sections if m not in headings) == []


def test_the_readme_is_a_front_door():
    """What it is, who it is for, the two commands, the flow, links: the manual lives in docs/."""
    assert len(README.splitlines()) <= 150
