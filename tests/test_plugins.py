"""Plugins: the modules named in BBSD_PLUGINS or installed under the `bbsd.plugins` entry points are
imported by every bbsd process, the daemon's children included; one that fails is one line, not a
traceback; a plugin's backend is configured by its name like bbsd's own."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from bbsd import config
from bbsd.engine import registry
from bbsd.sidecars import record as sidecar
from tests.conftest import make_photo, run_bbsd, wait_until, write_config

# A plugin that notes each process that imports it: the bbsd command it runs (`run`, `_worker`, …), its pid.
MARKER = """import os, sys
with open(os.environ["PLUGIN_MARKS"], "a") as f:
    f.write(f"{sys.argv[1] if len(sys.argv) > 1 else ''} {os.getpid()}\\n")
"""


def _env(tmp_path: Path, plugins: str) -> dict[str, str]:
    """PYTHONPATH and BBSD_PLUGINS with `plugins` added to what the suite already loads (its doubles)."""
    path = os.pathsep.join(filter(None, [str(tmp_path / "site"), os.environ.get("PYTHONPATH")]))
    named = ",".join(filter(None, [os.environ.get("BBSD_PLUGINS"), plugins]))
    return {"PYTHONPATH": path, "BBSD_PLUGINS": named, "PLUGIN_MARKS": str(tmp_path / "marks")}


def _module(tmp_path: Path, name: str, source: str) -> None:
    (tmp_path / "site").mkdir(exist_ok=True)
    (tmp_path / "site" / f"{name}.py").write_text(source)


def _installed(tmp_path: Path, module: str) -> None:
    """A package installed with `module` as its `bbsd.plugins` entry point (as pip would leave it)."""
    info = tmp_path / "site" / "marker_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: marker-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[bbsd.plugins]\nmarker = {module}\n")


def _marks(tmp_path: Path) -> list[tuple[str, str]]:
    """(command, pid) of each import of the marker plugin."""
    path = tmp_path / "marks"
    return [tuple(line.split()) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_the_daemon_and_both_of_its_children_load_the_plugins_named_in_the_environment(tmp_path, bbsd_run):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _module(tmp_path, "marker", MARKER)
    run = bbsd_run(write_config(tmp_path, [inbox], backend="fake"), env=_env(tmp_path, "marker"))
    run.wait_for("daemon.ready")
    photo = make_photo(inbox / "a.jpg")
    wait_until(lambda: sidecar.path_for(photo).exists(), 60, "the photo's sidecar")
    assert run.stop() == 0
    marks = _marks(tmp_path)
    assert {command for command, _ in marks} == {"run", "_worker", "_decoder"}  # a decoder per worker thread
    assert len({pid for _, pid in marks}) == len(marks)  # each process once


def test_a_plugin_installed_under_the_entry_point_group_is_loaded(tmp_path):
    _module(tmp_path, "marker", MARKER)
    _installed(tmp_path, "marker")
    r = run_bbsd("--help", env=_env(tmp_path, ""))
    assert r.returncode == 0, r.stderr
    assert [command for command, _ in _marks(tmp_path)] == ["--help"]


def test_a_plugin_both_named_and_installed_is_loaded_once(tmp_path):
    _module(tmp_path, "marker", MARKER)
    _installed(tmp_path, "marker")
    assert run_bbsd("--help", env=_env(tmp_path, "marker")).returncode == 0
    assert [command for command, _ in _marks(tmp_path)] == ["--help"]


@pytest.mark.parametrize(("source", "said"), [
    (None, "ModuleNotFoundError: No module named 'broken_plugin'"),
    ("raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU here"),
])
def test_a_plugin_that_cannot_be_imported_is_one_line_with_a_hint(tmp_path, source, said):
    if source is not None:
        _module(tmp_path, "broken_plugin", source)
    r = run_bbsd("check", "--config", str(tmp_path / "absent.toml"), env=_env(tmp_path, "broken_plugin"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"bbsd: error: the plugin 'broken_plugin' cannot be loaded: {said} — check the module name in "
        "BBSD_PLUGINS (comma-separated module names, importable from sys.path or PYTHONPATH), or unset BBSD_PLUGINS"]


def test_an_installed_plugin_that_fails_names_its_package(tmp_path):
    _installed(tmp_path, "gone_plugin")
    r = run_bbsd("--help", env=_env(tmp_path, ""))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "the plugin 'gone_plugin' cannot be loaded" in r.stderr
    assert "marker-plugin installs it as the 'marker' entry point of bbsd.plugins" in r.stderr


@pytest.fixture
def backends(monkeypatch) -> dict:
    """The registry's table, restored after the test."""
    monkeypatch.setattr(registry, "BACKENDS", dict(registry.BACKENDS))
    return registry.BACKENDS


def test_a_registered_backend_is_configured_by_its_name(tmp_path, backends):
    twin = dataclasses.replace(registry.get("fake"), name="twin")
    registry.register("twin", twin)
    registry.register("twin", twin)  # a plugin imported twice: harmless
    settings = config.load(write_config(tmp_path, [tmp_path], backend="twin"), environ={})
    assert settings.engine.backend == "twin" and registry.get("twin") is twin
    assert "twin" not in registry.SHIPPED  # the reference lists bbsd's own only


def test_a_plugin_cannot_take_a_backend_name_that_is_taken(backends):
    with pytest.raises(ValueError, match="'llama' is taken"):
        registry.register("llama", dataclasses.replace(registry.get("fake"), name="llama"))
    with pytest.raises(ValueError, match="must be named so"):
        registry.register("other", registry.get("fake"))
    assert backends["llama"] == "bbsd.engine.llama.backend"
