"""An instance's state folder is named as its docs say: the config's folder and stem, then a hash of its path."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from bbsd import instance


def test_the_system_configs_instance_is_named_as_its_docstring_says():
    """`/etc/bbsd/config.toml` → `bbsd-config-<8 hex>` (docs/stage/service.md's /var/lib/bbsd/bbsd-config-…)."""
    config = Path("/etc/bbsd/config.toml")
    name = instance.instance_name(config)
    assert name == f"bbsd-config-{hashlib.sha256(str(config.resolve()).encode()).hexdigest()[:8]}"
    example = re.search(r"`([a-z-]+)-[0-9a-f]{8}` for (/\S+?)\.?(\s|$)", instance.instance_name.__doc__)
    assert example and example.group(2) == str(config)
    assert example.group(1) == name.rsplit("-", 1)[0], instance.instance_name.__doc__

