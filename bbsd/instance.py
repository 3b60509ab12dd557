"""Which bbsd instance a configuration file is, and where that instance keeps its state.

Invariant: each daemon instance (one config file) has its own state folder, derived from the
config's path unless `[service] state_dir` names one, so two daemons on one PC never share a
status file or a cache of model digests.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

STATUS_FILE = "status.json"  # the file that marks a folder as an instance's (`service.state`)


def folder_for(configured: Path | None, config: Path) -> Path:
    """`[service] state_dir` if set, else this config's own folder under the state base."""
    if configured is not None:
        return configured
    name = instance_name(config)
    return base_dir(name) / name


def instance_name(config: Path) -> str:
    """A readable, stable name per config file: `bbsd-config-1a2b3c4d` for /etc/bbsd/config.toml
    (its folder's name and its stem, then the first 8 hex digits of the sha256 of its resolved path)."""
    config = Path(config).resolve()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{config.parent.name}-{config.stem}").strip("-")[:40] or "bbsd"
    return f"{slug}-{hashlib.sha256(str(config).encode()).hexdigest()[:8]}"


def base_dir(instance: str) -> Path:
    """systemd's $STATE_DIRECTORY, else /var/lib/bbsd if usable (or it holds this instance),
    else ~/.local/state/bbsd."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    system = Path("/var/lib/bbsd")
    if (system / instance / STATUS_FILE).exists() or (system.is_dir() and os.access(system, os.W_OK)):
        return system
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "bbsd"
