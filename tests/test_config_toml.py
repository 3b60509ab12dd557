"""The shipped config.toml says what the defaults are: every uncommented value equals the documented
default (`config.SCHEMA` and each backend's tables) unless a comment on its line says why it differs
(a required key, an example path): the file once said `flash_attention = true` where the default is
"auto", 1.9x slower decode steps for every CPU user who kept it."""

import re
import tomllib
from pathlib import Path

from bbsd import config
from bbsd.config_keys import REQUIRED, Key
from bbsd.engine import registry

CONFIG = Path(__file__).resolve().parent.parent / "config.toml"


def _keys() -> dict[str, dict[str, Key]]:
    tables = {s: dict(keys) for s, keys in config.SCHEMA.items()}
    for name in registry.BACKENDS:
        for s, keys in registry.get(name).tables.items():
            tables.setdefault(s, {}).update(keys)
    return tables


def _comment(text: str, section: str, key: str) -> str:
    """The comments on the lines of `key = ...` in `[section]` (a value may span lines)."""
    body = re.split(r"^\[", text, flags=re.M)
    table = next(b for b in body if b.startswith(section + "]"))
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"{key}\s*=", line))
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"[a-z_]+\s*=|#", lines[i])), len(lines))
    return " ".join(line.split("#", 1)[1] for line in lines[start:end] if "#" in line)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def test_every_uncommented_value_is_the_documented_default_or_says_why_not():
    text = CONFIG.read_text()
    tables, differ = _keys(), []
    for section, body in tomllib.loads(text).items():
        if not isinstance(body, dict):
            continue  # [[characters]], [[props]]: the example catalog
        for key, value in body.items():
            default = tables[section][key].default
            if default is not REQUIRED and _plain(default) == value:
                continue
            differ.append(f"[{section}] {key}")
            assert "default" in _comment(text, section, key), (
                f"config.toml: [{section}] {key} = {value!r} is not the documented default "
                f"{'(required)' if default is REQUIRED else repr(default)}: write the default, or say why on its line")
    assert differ == ["[watch] folders", "[model] path", "[model] mmproj"]  # the example paths, nothing else


def test_flash_attention_is_auto_as_documented():
    engine = tomllib.loads(CONFIG.read_text())["engine"]
    assert engine["flash_attention"] == "auto" == _keys()["engine"]["flash_attention"].default
