"""What the commands say is in bbsd's own words: counts agree with their nouns, the label command's help
names its argument, and `bbsd models list` explains every column and status the way bbsd routes them."""

from __future__ import annotations

from bbsd import checks
from tests.conftest import run_bbsd


def test_counts_agree_with_their_nouns():
    assert [checks._count(n, "prop") for n in (0, 1, 2)] == ["0 props", "1 prop", "2 props"]


def test_label_help_names_its_argument_not_a_python_type():
    r = run_bbsd("label", "--help")
    assert r.returncode == 0 and "PHOTO" in r.stdout and "{photos}" not in r.stdout


def test_models_list_legend_matches_the_routes_and_explains_every_column():
    r = run_bbsd("models", "list")
    assert r.returncode == 0, r.stderr
    legend = r.stdout.split("status: ", 1)[1]
    assert "bbsd models convert" in legend and "convert_hf_to_gguf" not in legend
    header = r.stdout.splitlines()[0].split()
    assert header == ["name", "family", "params", "status", "route", "proven", "here"]
    for column in ("route:", "here:", "proven:"):
        assert column in r.stdout
