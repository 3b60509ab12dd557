"""Configuration: read once from TOML (+ `BBSD_*` environment), validated into a frozen `Settings`.

Invariant: nothing downstream ever sees an unvalidated value. Every key has a type,
a default (or is required), bounds and a description; a wrong one raises `ConfigError`
naming the key, the file and the fix. Relative paths resolve against the config file's folder.
"""

from __future__ import annotations

import difflib
import os
import tomllib
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bbsd.catalog import Catalog, CatalogEntry
from bbsd.errors import ConfigError

DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "tif", "tiff", "webp", "heic", "heif",
                      "cr2", "cr3", "nef", "arw", "raf", "orf", "rw2", "dng", "pef", "srw")
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


SCHEMA: dict[str, dict[str, Key]] = {
    "watch": {
        "folders": Key("paths", REQUIRED, "folders to watch for new photos (one or more)"),
        "recursive": Key("bool", True, "also watch sub-folders"),
        "extensions": Key("strs", DEFAULT_EXTENSIONS, "file extensions taken as photos (case-insensitive)"),
        "settle_seconds": Key("float", 2.0, "size and mtime must stay unchanged this long", 0.05, 600),
        "incomplete_timeout_seconds": Key(
            "float", 60.0, "a file that stays truncated or empty this long gets an error sidecar", 0.5, 86400
        ),
        "rescan_seconds": Key("float", 300.0, "full rescan interval, catches missed events", 1, 86400),
        "observer": Key("choice", "auto", "auto = polling on network filesystems (NFS, SMB/CIFS, sshfs), "
                        "inotify elsewhere", choices=("auto", "native", "polling")),
        "poll_seconds": Key("float", 5.0, "polling interval for network filesystems", 0.2, 3600),
        "pair_seconds": Key("float", 10.0, "a RAW and a JPEG with the same name written this close are one shot; "
                            "0 = label each file", 0, 3600),
    },
    "model": {
        "backend": Key("choice", "llama", "labelling backend", choices=("llama", "fake")),
        "name": Key("str", None, "a registry name (gguf_models/models.toml); sets path and mmproj"),
        "dir": Key("path", None, "folder with the GGUF files and models.toml; default gguf_models/ beside the config"),
        "path": Key("path", None, "text model GGUF (required for the llama backend unless name is set)"),
        "mmproj": Key("path", None, "vision projector GGUF (required for the llama backend unless name is set)"),
    },
    "engine": {
        "context_size": Key("int", 4096, "context window in tokens", 512, 131072),
        "threads": Key("int", 0, "CPU threads; 0 = one per physical core", 0, 512),
        "gpu_layers": Key("layers", 0, "layers offloaded to the GPU; -1 = all, 0 = CPU only, \"auto\" = as many as fit",
                          -1, 10000),
        "flash_attention": Key("bool", True, "use flash attention (less memory for the KV cache)"),
        "prefix_cache": Key("bool", True, "keep the prompt's fixed part (system text, catalog) in the KV cache and "
                            "evaluate only the image and the text after it per photo; false = everything per photo"),
        "jump_forward": Key("bool", True, "append the reply's keys, punctuation and the rest of an unambiguous "
                            "name as text instead of sampling them token by token"),
        "image_max_side": Key("int", 768, "longest image side in pixels sent to the model", 32, 8192),
        "max_output_tokens": Key("int", 768, "upper bound on the reply length in tokens", 32, 8192),
        "temperature": Key("float", 0.0, "sampling temperature; 0 = deterministic", 0.0, 2.0),
        "seed": Key("int", 0, "sampling seed", 0, 2**31 - 1),
    },
    "worker": {
        "isolate": Key("bool", True, "run the model in a supervised worker process (survives engine crashes)"),
        "timeout_seconds": Key("float", 600.0, "a photo taking longer kills the worker: engine_timeout", 1, 86400),
        "start_timeout_seconds": Key("float", 600.0, "longest model load before the worker is given up", 1, 86400),
        "recycle_after_photos": Key("int", 1000, "restart the worker after this many photos; 0 = never", 0, 10**7),
        "recycle_rss_growth_mb": Key("int", 2048, "restart the worker when its memory grew this much over its "
                                     "post-load baseline; 0 = never", 0, 10**7),
    },
    "decode": {
        "timeout_seconds": Key("float", 60.0, "a photo whose decoding takes longer gets decode_timeout "
                               "(the decoder process is restarted)", 1, 3600),
        "max_megapixels": Key("float", 180.0, "larger photos get an error sidecar; a JPEG is measured after "
                              "DCT scaling (a 250 MP panorama decodes at 1/8 size), other formats at full size",
                              1, 10000),
        "memory_mb": Key("int", 4096, "address-space limit of the decoder process; 0 = none", 0, 10**6),
    },
    "service": {
        "state_dir": Key("path", None, "where status.json lives; default: a folder per config file "
                         "(named after its path) in $STATE_DIRECTORY (systemd), /var/lib/bbsd or ~/.local/state/bbsd"),
    },
    "xmp": {
        "naming": Key("choice", "ext", "XMP sidecar name: ext = IMG_0001.JPG.xmp, base = IMG_0001.xmp, off = none",
                      choices=("ext", "base", "off")),
        "root": Key("str", "BBS", "root of the hierarchical keywords (BBS|Characters|Baba Yaga)"),
    },
    "log": {
        "level": Key("choice", "info", "lowest level logged", choices=("debug", "info", "warning", "error")),
        "format": Key("choice", "auto", "auto = console on a terminal, JSON lines otherwise",
                      choices=("auto", "json", "console")),
    },
}
CATALOG_SECTIONS = ("characters", "props")


@dataclass(frozen=True)
class WatchSettings:
    folders: tuple[Path, ...]
    recursive: bool
    extensions: tuple[str, ...]
    settle_seconds: float
    incomplete_timeout_seconds: float
    rescan_seconds: float
    observer: str
    poll_seconds: float
    pair_seconds: float


@dataclass(frozen=True)
class ModelSettings:
    backend: str
    name: str | None
    dir: Path
    path: Path | None
    mmproj: Path | None


@dataclass(frozen=True)
class EngineSettings:
    context_size: int
    threads: int
    gpu_layers: int | str  # "auto" is resolved when the engine loads
    flash_attention: bool
    prefix_cache: bool
    jump_forward: bool
    image_max_side: int
    max_output_tokens: int
    temperature: float
    seed: int


@dataclass(frozen=True)
class WorkerSettings:
    isolate: bool
    timeout_seconds: float
    start_timeout_seconds: float
    recycle_after_photos: int
    recycle_rss_growth_mb: int


@dataclass(frozen=True)
class DecodeSettings:
    timeout_seconds: float
    max_megapixels: float
    memory_mb: int


@dataclass(frozen=True)
class ServiceSettings:
    state_dir: Path | None


@dataclass(frozen=True)
class XmpSettings:
    naming: str
    root: str


@dataclass(frozen=True)
class LogSettings:
    level: str
    format: str


@dataclass(frozen=True)
class Settings:
    """The whole validated configuration; frozen so no layer can change it behind another's back."""

    source: Path
    watch: WatchSettings
    model: ModelSettings
    engine: EngineSettings
    worker: WorkerSettings
    decode: DecodeSettings
    service: ServiceSettings
    xmp: XmpSettings
    log: LogSettings
    catalog: Catalog


def load(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, merge environment overrides, validate; raise `ConfigError` on the first problem."""
    path = Path(path)
    raw = _read_toml(path)
    if isinstance(raw.get("model"), str):  # `model = "NAME"`: the short form of [model] name
        raw["model"] = {"name": raw["model"]}
    env = os.environ if environ is None else environ
    v = _Validator(path)
    _reject_unknown(raw, v)
    values = {s: _section(raw.get(s, {}), s, v, env) for s in SCHEMA}
    values["model"]["dir"] = values["model"]["dir"] or (path.parent / "gguf_models").resolve()
    settings = Settings(
        source=path.resolve(),
        watch=WatchSettings(**values["watch"]),
        model=ModelSettings(**values["model"]),
        engine=EngineSettings(**values["engine"]),
        worker=WorkerSettings(**values["worker"]),
        decode=DecodeSettings(**values["decode"]),
        service=ServiceSettings(**values["service"]),
        xmp=XmpSettings(**values["xmp"]),
        log=LogSettings(**values["log"]),
        catalog=_catalog(raw, v),
    )
    return _check_backend(settings, v)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found", "pass --config PATH or copy config.toml") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})", "fix the syntax at that line") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})", "check the file's permissions") from None


class _Validator:
    """Formats every complaint the same way: the key, the file, the fix."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str, hint: str) -> ConfigError:
        return ConfigError(f"{self.path}: [{key}] {problem}", hint)


def _reject_unknown(raw: dict[str, Any], v: _Validator) -> None:
    known = set(SCHEMA) | set(CATALOG_SECTIONS)
    for section, body in raw.items():
        if section not in known:
            raise v.fail(section, "is not a known section", _did_you_mean(section, known))
        if section in SCHEMA:
            if not isinstance(body, dict):
                raise v.fail(section, "must be a table", f"write it as [{section}]")
            for key in body:
                if key not in SCHEMA[section]:
                    raise v.fail(f"{section}.{key}", "is not a known key", _did_you_mean(key, SCHEMA[section]))


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    listed = ", ".join(sorted(options))
    return f"did you mean '{close[0]}'? (known: {listed})" if close else f"known: {listed}"


def _section(body: dict[str, Any], section: str, v: _Validator, env: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for name, key in SCHEMA[section].items():
        dotted = f"{section}.{name}"
        env_name = f"BBSD_{section}_{name}".upper()
        if env_name in env:
            out[name] = _coerce_env(env[env_name], key, dotted, env_name, v)
        elif name in body:
            out[name] = _coerce(body[name], key, dotted, v, base=v.path.parent)
        elif key.default is REQUIRED:
            raise v.fail(dotted, "is required", f"add `{name} = ...` under [{section}]: {key.help}")
        else:
            out[name] = key.default
    return out


def _coerce_env(text: str, key: Key, dotted: str, env_name: str, v: _Validator) -> Any:
    """Environment values are strings; parse them by the key's kind, relative paths against the cwd."""
    parsers: dict[str, Callable[[str], Any]] = {
        "int": int,
        "float": float,
        "bool": lambda s: {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}[
            s.strip().lower()
        ],
        "paths": lambda s: [p for p in s.split(os.pathsep) if p],
        "strs": lambda s: [p.strip() for p in s.split(",") if p.strip()],
    }
    try:
        value = parsers.get(key.kind, str)(text)
    except (ValueError, KeyError):
        raise v.fail(dotted, f"from ${env_name}={text!r} is not a valid {key.kind}",
                     f"set ${env_name} to a {key.kind}: {key.help}") from None
    return _coerce(value, key, dotted, v, base=Path.cwd())


def _coerce(value: Any, key: Key, dotted: str, v: _Validator, base: Path) -> Any:
    checkers = {
        "str": _as_str, "choice": _as_choice, "int": _as_number, "float": _as_number, "layers": _as_layers,
        "bool": _as_bool, "path": _as_path, "paths": _as_paths, "strs": _as_strs,
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


def _catalog(raw: dict[str, Any], v: _Validator) -> Catalog:
    parts = {}
    for section in CATALOG_SECTIONS:
        body = raw.get(section, [])
        if not isinstance(body, list):
            raise v.fail(section, "must be an array of tables", f"write each entry as [[{section}]]")
        parts[section] = tuple(_entry(item, f"{section}[{i}]", v) for i, item in enumerate(body))
        seen: dict[str, int] = {}
        for i, entry in enumerate(parts[section]):
            first = seen.setdefault(entry.name.casefold(), i)
            if first != i:
                raise v.fail(f"{section}[{i}].name", f"{entry.name!r} repeats {section}[{first}] "
                             f"{parts[section][first].name!r} (names are compared ignoring case)",
                             "give every entry a unique name")
    return Catalog(characters=parts["characters"], props=parts["props"])


# Photo tools split hierarchical keywords at these: Lightroom, darktable and digiKam's
# lr:hierarchicalSubject at '|', digiKam:TagsList at '/'. XMP has no escape for them.
HIERARCHY_DELIMITERS = {"|": "Lightroom, darktable and digiKam", "/": "digiKam"}


def _entry(item: Any, where: str, v: _Validator) -> CatalogEntry:
    if not isinstance(item, dict):
        raise v.fail(where, "must be a table", "write it as [[characters]] with name and description")
    unknown = set(item) - {"name", "description"}
    if unknown:
        raise v.fail(f"{where}.{sorted(unknown)[0]}", "is not a known key", "known: name, description")
    name, description = item.get("name"), item.get("description", "")
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 80:
        raise v.fail(f"{where}.name", "must be a non-empty string of at most 80 characters", "name the entry")
    _check_name(name.strip(), f"{where}.name", v)
    if not isinstance(description, str) or len(description) > 500:
        raise v.fail(f"{where}.description", "must be a string of at most 500 characters",
                     "describe what it looks like")
    return CatalogEntry(name=name.strip(), description=description.strip())


def _check_name(name: str, where: str, v: _Validator) -> None:
    """Refuse what cannot survive as one keyword: hierarchy delimiters and control characters.

    Quotes, backslashes, apostrophes and any script are fine: the grammar escapes them.
    """
    for ch, tools in HIERARCHY_DELIMITERS.items():
        if ch in name:
            raise v.fail(where, f"{name!r} contains '{ch}', which {tools} read as a keyword level separator "
                         f"(one name would show as {name.count(ch) + 1} nested keywords)",
                         f"rename it without '{ch}', e.g. {name.replace(ch, ' and ' if ch == '|' else '-')!r}")
    bad = next((ch for ch in name if unicodedata.category(ch) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        raise v.fail(where, f"{name!r} contains the control character U+{ord(bad):04X}",
                     "write the name on one line without tabs or control characters")


def _check_backend(settings: Settings, v: _Validator) -> Settings:
    m = settings.model
    if m.backend != "llama":
        return settings
    if m.name and (m.path is None or m.mmproj is None):
        settings = _resolve_name(settings, v)
    for name in ("path", "mmproj"):
        if getattr(settings.model, name) is None:
            raise v.fail(f"model.{name}", "is required for the llama backend",
                         f"set `{name} = \"gguf_models/....gguf\"` or `name = \"...\"` under [model] "
                         "(see gguf_models/README.md and `bbsd models list`)")
    return settings


def _resolve_name(settings: Settings, v: _Validator) -> Settings:
    from bbsd import models

    m = settings.model
    entry = models.find(models.load_registry(models.registry_path(m.dir)), m.name)
    if entry.status not in ("runnable", "convert"):
        raise v.fail("model.name", f"{entry.name} is {entry.status}", entry.notes or "pick a runnable model")
    text, mmproj = models.local_files(entry, m.dir)
    if text is None or mmproj is None:
        how = (f"convert its checkpoint with `bbsd models convert CHECKPOINT_DIR --out {m.dir}`"
               if entry.status == "convert" else f"fetch them with `bbsd models pull {entry.name}`")
        raise v.fail("model.name", f"the files of {entry.name} are not in {m.dir}", f"{how} (or copy them there)")
    return replace(settings, model=replace(m, path=m.path or text, mmproj=m.mmproj or mmproj))
