"""Configuration keys: a typed `Key` each, and `section` that validates one table's values.

Invariant: a value is coerced by its key's kind and bounds or refused with one `ConfigError` that
names the key, the file and the fix; a `BBSD_SECTION_KEY` variable wins over the file. The core's
tables (`config.SCHEMA`) and every backend's own tables use this (split from `config`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbsd.errors import ConfigError

REQUIRED = object()


@dataclass(frozen=True)
class Key:
    """One configuration key: its type, default, bounds and what it is for."""

    kind: str  # "str", "int", "float", "bool", "path", "paths", "strs", "choice"
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()


class Validator:
    """Formats every complaint the same way: the key, the file, the fix."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str, hint: str) -> ConfigError:
        return ConfigError(f"{self.path}: [{key}] {problem}", hint)


def section(body: dict[str, Any], table: str, keys: Mapping[str, Key], v: Validator,
            env: Mapping[str, str]) -> dict[str, Any]:
    """Validate one table's keys (a `BBSD_SECTION_KEY` variable wins over the file); backends use this too."""
    out = {}
    for name, key in keys.items():
        dotted = f"{table}.{name}"
        env_name = f"BBSD_{table}_{name}".upper()
        if env_name in env:
            out[name] = _coerce_env(env[env_name], key, dotted, env_name, v)
        elif name in body:
            out[name] = _coerce(body[name], key, dotted, v, base=v.path.parent)
        elif key.default is REQUIRED:
            raise v.fail(dotted, "is required", f"add `{name} = ...` under [{table}]: {key.help}")
        else:
            out[name] = key.default
    return out


def _coerce_env(text: str, key: Key, dotted: str, env_name: str, v: Validator) -> Any:
    """Environment values are strings; parse them by the key's kind, relative paths against the cwd."""
    parsers: dict[str, Callable[[str], Any]] = {
        "int": int,
        "float": float,
        "bool": _env_bool,
        "switch": lambda s: "auto" if s.strip().lower() == "auto" else _env_bool(s),
        "paths": lambda s: [p for p in s.split(os.pathsep) if p],
        "strs": lambda s: [p.strip() for p in s.split(",") if p.strip()],
    }
    try:
        value = parsers.get(key.kind, str)(text)
    except (ValueError, KeyError):
        what = ENV_KINDS.get(key.kind, f"a valid {key.kind}")
        raise v.fail(dotted, f"from ${env_name}={text!r} is not {what}",
                     f"set ${env_name} to {what}: {key.help}") from None
    return _coerce(value, key, dotted, v, base=Path.cwd())


ENV_KINDS = {"bool": "true or false", "switch": 'true, false or "auto"'}  # in words, for the messages


def _env_bool(text: str) -> bool:
    return {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}[text.strip().lower()]


def _coerce(value: Any, key: Key, dotted: str, v: Validator, base: Path) -> Any:
    checkers = {
        "str": _as_str, "choice": _as_choice, "int": _as_number, "float": _as_number, "layers": _as_layers,
        "bool": _as_bool, "switch": _as_switch, "path": _as_path, "paths": _as_paths, "strs": _as_strs,
    }
    return checkers[key.kind](value, key, dotted, v, base)


def _as_str(value, key, dotted, v, base):
    if not isinstance(value, str) or not value.strip():
        raise v.fail(dotted, f"must be a non-empty string, got {value!r}", key.help)
    return value


def _as_choice(value, key, dotted, v, base):
    value = _as_str(value, key, dotted, v, base)
    if value not in key.choices:
        raise v.fail(dotted, f"is {value!r}", f"use one of: {', '.join(key.choices)}")
    return value


def _as_bool(value, key, dotted, v, base):
    if not isinstance(value, bool):
        raise v.fail(dotted, f"must be true or false, got {value!r}", key.help)
    return value


def _as_number(value, key, dotted, v, base):
    ok = isinstance(value, int) if key.kind == "int" else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        raise v.fail(dotted, f"must be {'an integer' if key.kind == 'int' else 'a number'}, got {value!r}",
                     key.help)
    if (key.low is not None and value < key.low) or (key.high is not None and value > key.high):
        raise v.fail(dotted, f"is {value}, outside {key.low}..{key.high}", key.help)
    return float(value) if key.kind == "float" else value


def _as_switch(value, key, dotted, v, base):
    """true, false, or "auto" (the program decides, per device)."""
    if isinstance(value, bool) or value == "auto":
        return value
    raise v.fail(dotted, f'must be true, false or "auto", got {value!r}', key.help)


def _as_layers(value, key, dotted, v, base):
    if value == "auto":
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    return _as_number(value, Key("int", key.default, key.help, key.low, key.high), dotted, v, base)


def _as_path(value, key, dotted, v, base):
    value = _as_str(value, key, dotted, v, base)
    if not value.strip():
        raise v.fail(dotted, "is empty", key.help)
    return (base / Path(value).expanduser()).resolve()


def _as_paths(value, key, dotted, v, base):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise v.fail(dotted, "must be a non-empty list of paths", key.help)
    return tuple(_as_path(item, key, dotted, v, base) for item in value)


def _as_strs(value, key, dotted, v, base):
    if not isinstance(value, list | tuple) or not all(isinstance(s, str) and s for s in value):
        raise v.fail(dotted, "must be a list of non-empty strings", key.help)
    return tuple(s.lower().lstrip(".") for s in value)
