"""`bbsd run` and `bbsd check` say once, at start, when the model is one bbsd made itself: its random test
model (a warning: the labels mean nothing) or its toy model (trained on synthetic puppets only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bbsd.models import twin
from tests.conftest import run_bbsd, write_config

pytestmark = pytest.mark.slow
RANDOM = "the model has random weights"
TOY = "bbsd's toy model, trained on synthetic puppets"


@pytest.fixture(scope="module")
def toy_models(tmp_path_factory) -> tuple[Path, Path]:
    return twin.write_pair_from(twin.shipped("bpe"), tmp_path_factory.mktemp("toy"))


def _config(tmp_path: Path, models: tuple[Path, Path]) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    return write_config(tmp_path, [inbox], models)


@pytest.mark.parametrize("which", ["random", "toy"])
def test_check_says_once_which_weights_bbsd_made(tmp_path, tiny_models, toy_models, which):
    r = run_bbsd("check", "--config", str(_config(tmp_path, tiny_models if which == "random" else toy_models)))
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stdout.splitlines() if RANDOM in line or TOY in line]
    if which == "random":
        assert len(said) == 1 and said[0].startswith("warning: ") and RANDOM in said[0], r.stdout
        assert "mean nothing" in said[0]
    else:
        assert len(said) == 1 and said[0].startswith("model: ") and TOY in said[0], r.stdout
    assert "bbsd models list" in said[0]


@pytest.mark.parametrize("which", ["random", "toy"])
def test_run_says_once_at_start_which_weights_bbsd_made(tmp_path, tiny_models, toy_models, bbsd_run, which):
    run = bbsd_run(_config(tmp_path, tiny_models if which == "random" else toy_models))
    run.wait_for("daemon.ready")
    assert run.stop() == 0
    said = run.events("model.weights")
    assert [e["weights"] for e in said] == [which], said
    events = [e["event"] for e in run.events()]
    assert events.index("model.weights") < events.index("daemon.ready")  # at start
    if which == "random":
        assert said[0]["level"] == "warning" and RANDOM in said[0]["message"]
    else:
        assert said[0]["level"] == "info" and TOY in said[0]["message"]
    assert "bbsd models list" in said[0]["hint"]
