"""Configuration: read once from TOML (+ `BBSD_*` environment), validated into a frozen `Settings`.

Invariant: nothing downstream ever sees an unvalidated value. Every key has a type,
a default (or is required), bounds and a description; a wrong one raises `ConfigError`
naming the key, the file and the fix. Relative paths resolve against the config file's folder.
The core owns the sections below; the configured backend (`bbsd.engines`) owns its own
tables and validates them into `Settings.backend`, which nothing else reads.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbsd import formats, safefs
from bbsd.config_keys import REQUIRED, Key, Validator, section
from bbsd.engine import registry
from bbsd.errors import ConfigError
from bbsd.show import catalog, questions, references
from bbsd.show.catalog import Catalog

SCHEMA: dict[str, dict[str, Key]] = {
    "watch": {
        "folders": Key("paths", REQUIRED, "folders to watch for new photos (one or more)"),
        "recursive": Key("bool", True, "also watch sub-folders"),
        "extensions": Key("strs", formats.DEFAULT_PHOTOS, "file extensions taken as photos (case-insensitive)"),
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
    "engine": {
        "backend": Key("choice", registry.DEFAULT, "labelling backend: llama (in-process llama.cpp) or openai "
                       "(inference servers); a plugin may add one", choices=registry.SHIPPED),
        "image_max_side": Key("int", 768, "longest image side in pixels sent to the model", 32, 8192),
        "max_output_tokens": Key("int", 768, "upper bound on the reply length in tokens", 32, 8192),
        "temperature": Key("float", 0.0, "sampling temperature; 0 = deterministic", 0.0, 2.0),
        "seed": Key("int", 0, "sampling seed", 0, 2**31 - 1),
    },
    "prompt": {
        "references": Key("choice", "gallery", "how the catalog's reference photos are shown: gallery = each image "
                          "with its caption before the photo (evaluated once, kept in the KV cache); off = not at all",
                          choices=tuple(references.STRATEGIES)),
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
        "questions_branch": Key("str", None, "keyword branch of the answers to [[questions]], levels split by |; "
                                "default: root (BBS|Act|Act 2)"),
        "review_below": Key("float", 0.5, "mark a photo for review when a name's confidence is below this (or a "
                            "name not chosen scored at least this); 0 = never", 0.0, 1.0),
        "review_keyword": Key("str", "bbsd|needs review", "hierarchical keyword that marks a photo for review"),
    },
    "log": {
        "level": Key("choice", "info", "lowest level logged", choices=("debug", "info", "warning", "error")),
        "format": Key("choice", "auto", "auto = console on a terminal, JSON lines otherwise",
                      choices=("auto", "json", "console")),
    },
}
ARRAY_SECTIONS = (*catalog.SECTIONS, "questions")  # [[characters]], [[props]], [[questions]]


@dataclass(frozen=True)
class XmpSettings:
    naming: str
    root: str
    questions_branch: str | None
    review_below: float
    review_keyword: str

    def answers_branch(self) -> str:
        """Where answer keywords go: `questions_branch`, else the root."""
        return self.questions_branch or self.root


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
class EngineSettings:
    """What every backend is asked: which backend, and how to ask the model."""

    backend: str
    image_max_side: int
    max_output_tokens: int
    temperature: float
    seed: int


@dataclass(frozen=True)
class PromptSettings:
    references: str  # a `references.STRATEGIES` name


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
class LogSettings:
    level: str
    format: str


@dataclass(frozen=True)
class Settings:
    """The whole validated configuration; frozen so no layer can change it behind another's back."""

    source: Path
    watch: WatchSettings
    engine: EngineSettings
    prompt: PromptSettings
    worker: WorkerSettings
    decode: DecodeSettings
    service: ServiceSettings
    xmp: XmpSettings
    log: LogSettings
    catalog: Catalog
    questions: tuple[questions.Question, ...]
    backend: Any  # the configured backend's own frozen settings; only that backend reads them
    profile: Path | None = None  # a `bbsd eval` profile laid over `source` (`load_profile`)


def load(path: Path, environ: Mapping[str, str] | None = None, *, references: bool = True) -> Settings:
    """Read, merge environment overrides, validate; raise `ConfigError` on the first problem.

    `references=False` leaves the catalog's reference photos out (the engine worker's fallback when
    one is gone: the daemon's prompt names them, and its photos wait until they can be shown).
    """
    path = Path(path)
    return from_raw(_references_dropped(read_toml(path), references), path, environ)


def _references_dropped(raw: dict[str, Any], keep: bool) -> dict[str, Any]:
    if keep:
        return raw
    for name in catalog.SECTIONS:
        if isinstance(raw.get(name), list):
            raw[name] = [{k: v for k, v in e.items() if k != "references"} if isinstance(e, dict) else e
                         for e in raw[name]]
    return raw


# What an eval profile may not change: what is asked, how photos are read and where outputs go,
# so every profile answers the same questions about the same pixels.
NOT_IN_PROFILES = ("watch", "decode", "service", "xmp", "log", "characters", "props", "questions")


def load_profile(path: Path, profile: Path, environ: Mapping[str, str] | None = None, *,
                 references: bool = True) -> Settings:
    """The config `path` with the tables of the TOML file `profile` laid over it, key by key.

    Paths in the profile resolve against the main config's folder. The engine worker is given both
    files (`Settings.profile`), so it loads exactly what this process validated.
    """
    raw, over = _references_dropped(read_toml(Path(path)), references), read_toml(Path(profile))
    for name, body in over.items():
        if name in NOT_IN_PROFILES:
            raise ConfigError(f"{profile}: a profile may not set [{name}]", "a profile changes the model or "
                              "engine; keep the catalog, questions and folders in the main config")
        base = raw.get(name)
        raw[name] = {**base, **body} if isinstance(base, dict) and isinstance(body, dict) else body
    return dataclasses.replace(from_raw(raw, Path(path), environ), profile=Path(profile).resolve())


def from_raw(raw: dict[str, Any], path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Validate an already-read TOML document as if it were the file `path` (eval profiles merge first)."""
    if isinstance(raw.get("model"), str):  # `model = "NAME"`: the short form of [model] name
        raw["model"] = {"name": raw["model"]}
    env = os.environ if environ is None else environ
    v = Validator(path)
    _legacy_backend_key(raw, v)
    engine = EngineSettings(**section(_table(raw, "engine", v), "engine", _engine_keys(), v, env))
    backend = registry.get(engine.backend)
    _reject_unknown(raw, v, backend)
    _planned_strategy(raw, v, env)
    values = {s: section(raw.get(s, {}), s, SCHEMA[s], v, env) for s in SCHEMA if s != "engine"}
    return Settings(
        source=path.resolve(),
        watch=WatchSettings(**values["watch"]),
        engine=engine,
        prompt=PromptSettings(**values["prompt"]),
        worker=WorkerSettings(**values["worker"]),
        decode=DecodeSettings(**values["decode"]),
        service=ServiceSettings(**values["service"]),
        xmp=_xmp(values["xmp"], v),
        log=LogSettings(**values["log"]),
        catalog=catalog.parse(raw, v.fail, base=path.parent),
        questions=questions.parse(raw.get("questions", []), v.fail),
        backend=backend.configure(raw, v, env, engine),
    )


def _planned_strategy(raw: dict[str, Any], v: Validator, env: Mapping[str, str]) -> None:
    """A reference strategy that is designed but not built says so, instead of "not one of"."""
    body = raw.get("prompt")
    value = env.get("BBSD_PROMPT_REFERENCES", body.get("references") if isinstance(body, dict) else None)
    if isinstance(value, str) and value in references.PLANNED:
        raise v.fail("prompt.references", f"{value!r} ({references.PLANNED[value]}) is planned, not built yet",
                     f"use one of: {', '.join(references.STRATEGIES)} (docs/producer/eval.md: where it would plug in)")


def _engine_keys() -> dict[str, Key]:
    """[engine]'s keys, `backend` any backend registered now: a plugin registers its own at the start of
    the process, after SCHEMA was made (whose choices, bbsd's own backends, are what the reference lists)."""
    keys = SCHEMA["engine"]
    return {**keys, "backend": dataclasses.replace(keys["backend"], choices=tuple(registry.BACKENDS))}


def _table(raw: dict[str, Any], name: str, v: Validator) -> dict[str, Any]:
    body = raw.get(name, {})
    if not isinstance(body, dict):
        raise v.fail(name, "must be a table", f"write it as [{name}]")
    return body


def _legacy_backend_key(raw: dict[str, Any], v: Validator) -> None:
    """`[model] backend` (before backends owned their tables) still selects the backend."""
    model = raw.get("model")
    if not isinstance(model, dict) or "backend" not in model:
        return
    engine = raw.setdefault("engine", {})
    legacy = model.pop("backend")
    if not model:
        del raw["model"]  # `[model]\nbackend = "fake"` alone: nothing of the llama backend's is left in it
    if isinstance(engine, dict) and engine.setdefault("backend", legacy) != legacy:
        raise v.fail("model.backend", f"says {legacy!r} but [engine] backend says {engine['backend']!r}",
                     "keep only `backend = ...` under [engine]")


CONFIG_LIMIT = 4 << 20  # bytes: a catalog of thousands of entries is well under 1 MiB


def read_toml(path: Path) -> dict[str, Any]:
    """The configuration file's tables. It may be a link (/etc/bbsd/config.toml → a versioned file), but
    it is read only if it ends at a regular file under CONFIG_LIMIT: a FIFO put in its place must not
    block a reload (SIGHUP) forever, nor /dev/zero fill the memory."""
    try:
        data = safefs.read_regular(path, CONFIG_LIMIT, follow=True)
        return tomllib.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found", "pass --config PATH or copy config.toml") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})", "fix the syntax at that line") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})", "save the file as UTF-8") from None
    except safefs.TooLargeError:
        raise ConfigError(f"{path}: larger than {CONFIG_LIMIT >> 20} MiB", "is this the configuration file?") from None
    except safefs.NotRegularError as e:
        raise ConfigError(f"{path}: {e.strerror}", "point --config at the configuration file itself") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})", "check the file's permissions") from None


def _reject_unknown(raw: dict[str, Any], v: Validator, backend: registry.Backend) -> None:
    known = {s: set(keys) for s, keys in SCHEMA.items()}
    for s, keys in backend.tables.items():
        known.setdefault(s, set()).update(keys)
    for name, body in raw.items():
        if name in ARRAY_SECTIONS:
            continue
        if name not in known:
            raise v.fail(name, *_foreign(name, None, backend, set(known) | set(ARRAY_SECTIONS)))
        if not isinstance(body, dict):
            raise v.fail(name, "must be a table", f"write it as [{name}]")
        for key in body:
            if key not in known[name]:
                raise v.fail(f"{name}.{key}", *_foreign(name, key, backend, known[name]))


def _foreign(section: str, key: str | None, backend: registry.Backend, known: set[str]) -> tuple[str, str]:
    """The complaint about an unknown section or key: another backend's, or a typo."""
    owner = registry.owner_of(section, key)
    if owner and owner != backend.name:
        return (f"belongs to the {owner} backend, and this configuration uses {backend.name}",
                f"remove it, or set `backend = \"{owner}\"` under [engine]")
    what = "is not a known section" if key is None else "is not a known key"
    return what, _did_you_mean(key or section, known)


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    listed = ", ".join(sorted(options))
    return f"did you mean '{close[0]}'? (known: {listed})" if close else f"known: {listed}"


def _xmp(values: dict[str, Any], v: Validator) -> XmpSettings:
    """The answers' branch and the review keyword are keyword paths: each level must survive as one keyword."""
    for key in ("questions_branch", "review_keyword"):
        path = values[key]
        for level in (path.split("|") if path is not None else ()):
            if not level.strip() or level != level.strip():
                raise v.fail(f"xmp.{key}", f"{path!r} has an empty or padded level",
                             "write levels split by | without spaces around them, e.g. \"BBS|Questions\"")
            if "/" in level:
                raise v.fail(f"xmp.{key}", f"{path!r} contains '/', which digiKam reads as a level separator",
                             "split levels with | only")
    return XmpSettings(**values)
