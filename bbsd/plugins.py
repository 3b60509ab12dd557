"""Plugins: Python modules that bbsd imports at the start of a process, before any command runs.

Invariant: the modules named in `BBSD_PLUGINS` (comma-separated) and those installed under the
`bbsd.plugins` entry-point group are imported once per process, by `bbsd.cli.main`, so the daemon and
every child it starts (`bbsd _worker`, `bbsd _decoder`: same environment, same installation) load the
same ones; a plugin that cannot be imported stops the command with a `PluginError` that names it,
never a traceback. A plugin does its work when imported: it may register a labelling backend
(`bbsd.engine.registry.register`). With neither set, nothing is imported. docs/developer/plugins.md.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from importlib import metadata

from bbsd.errors import BbsdError

ENV = "BBSD_PLUGINS"
GROUP = "bbsd.plugins"

_loaded: list[str] = []  # what this process imported, in order
_done = False


class PluginError(BbsdError):
    """A plugin named in the environment or installed under `bbsd.plugins` cannot be imported."""


def load(environ: Mapping[str, str] | None = None) -> list[str]:
    """Import the plugins (the environment's first, then the installed ones) unless already done in this
    process; returns what was imported. Raises `PluginError` on the first that fails."""
    global _done
    if _done:
        return list(_loaded)
    env = os.environ if environ is None else environ
    named = [name.strip() for name in env.get(ENV, "").split(",") if name.strip()]
    for name in named:
        _import(name, lambda name=name: importlib.import_module(name),
                f"check the module name in {ENV} (comma-separated module names, importable from "
                f"sys.path or PYTHONPATH), or unset {ENV}")
    for entry in metadata.entry_points(group=GROUP):
        owner = entry.dist.name if entry.dist is not None else "an installed package"
        _import(entry.value, entry.load, f"{owner} installs it as the '{entry.name}' entry point of {GROUP}: "
                "reinstall or uninstall that package")
    _done = True
    return list(_loaded)


def loaded() -> list[str]:
    """The plugins this process imported, in order."""
    return list(_loaded)


def _import(name: str, do: Callable[[], object], hint: str) -> None:
    if name in _loaded:  # named twice, or both named and installed
        return
    try:
        do()
    except Exception as e:  # an import may fail any way a module can (ImportError, SyntaxError, its own code)
        raise PluginError(f"the plugin {name!r} cannot be loaded: {type(e).__name__}: {e}", hint) from e
    _loaded.append(name)
