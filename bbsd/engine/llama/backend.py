"""`llama` backend: a GGUF model and its mmproj run in-process by llama.cpp (`llama_engine`).

Invariant: this module owns everything llama-specific outside the engine itself — the [model]
table and the llama keys of [engine], resolving a registry name to files, the unit's read
paths and GPU drop-in — and imports llama.cpp only when the model is opened.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bbsd.config_keys import Key, Validator, section
from bbsd.engine.registry import Backend, UnitNeeds

TABLES = {
    "model": {
        "name": Key("str", None, "a registry name (`bbsd models list`); sets path and mmproj"),
        "dir": Key("path", None, "folder with the GGUF files, and a models.toml whose rows add to the shipped "
                   "registry or replace its rows by name; default gguf_models/ beside the config"),
        "path": Key("path", None, "text model GGUF (required for the llama backend unless name is set)"),
        "mmproj": Key("path", None, "vision projector GGUF (required for the llama backend unless name is set)"),
        "lora": Key("path", None, "LoRA adapter GGUF for the text model (a fine-tune of it: docs/producer/dataset.md)"),
        "lora_scale": Key("float", 1.0, "strength of the LoRA adapter; 1 = as trained", 0.0, 4.0),
    },
    "engine": {
        "context_size": Key("int", 4096, "context window in tokens", 512, 131072),
        "threads": Key("int", 0, "CPU threads; 0 = one per physical core", 0, 512),
        "gpu_layers": Key("layers", 0, "layers offloaded to the GPU; -1 = all, 0 = CPU only, \"auto\" = as many as fit",
                          -1, 10000),
        "flash_attention": Key("switch", "auto", "flash attention; \"auto\" = the text model uses it where a GPU "
                               "that takes its layers supports it, never on a CPU (measured faster without there), "
                               "the vision encoder where the device supports it"),
        "prefix_cache": Key("bool", True, "keep the prompt's fixed part (system text, catalog) in the KV cache and "
                            "evaluate only the image and the text after it per photo; false = everything per photo"),
        "jump_forward": Key("bool", True, "append the reply's keys, punctuation and the rest of an unambiguous "
                            "name as text instead of sampling them token by token"),
        "parallel": Key("int", 0, "photos labelled together when several wait (one sequence each after the shared "
                        "cached prompt); 0 = the measured default: 1 on a CPU, 8 with layers on a GPU", 0, 16),
    },
}


@dataclass(frozen=True)
class LlamaSettings:
    """The model files and every engine setting the llama.cpp engine reads."""

    name: str | None
    dir: Path
    path: Path | None
    mmproj: Path | None
    lora: Path | None
    lora_scale: float
    context_size: int
    threads: int
    gpu_layers: int | str  # "auto" is resolved when the engine loads
    flash_attention: bool | str  # "auto": resolved per device by the engine (`llama_engine.flash_attention`)
    prefix_cache: bool
    jump_forward: bool
    parallel: int
    image_max_side: int
    max_output_tokens: int
    temperature: float
    seed: int


def configure(raw: dict[str, Any], v: Validator, env: Mapping[str, str], engine) -> LlamaSettings:
    model = section(raw.get("model", {}), "model", TABLES["model"], v, env)
    model["dir"] = model["dir"] or (v.path.parent / "gguf_models").resolve()
    own = section(raw.get("engine", {}), "engine", TABLES["engine"], v, env)
    s = LlamaSettings(**model, **own, image_max_side=engine.image_max_side,
                      max_output_tokens=engine.max_output_tokens, temperature=engine.temperature, seed=engine.seed)
    if s.name and (s.path is None or s.mmproj is None):
        s = _resolve_name(s, v)
    for name in ("path", "mmproj"):
        if getattr(s, name) is None:
            raise v.fail(f"model.{name}", "is required for the llama backend",
                         f"set `{name} = \"gguf_models/....gguf\"` or `name = \"...\"` under [model] "
                         "(see gguf_models/README.md and `bbsd models list`)")
    return s


def _resolve_name(s: LlamaSettings, v: Validator) -> LlamaSettings:
    from bbsd.models import registry as models

    entry = models.find(models.load(s.dir), s.name)
    if entry.status not in ("runnable", "convert"):
        raise v.fail("model.name", f"{entry.name} is {entry.status}", entry.notes or "pick a runnable model")
    text, mmproj = models.local_files(entry, s.dir)
    if text is None or mmproj is None:
        how = (f"convert its checkpoint with `bbsd models convert CHECKPOINT_DIR --out {s.dir}`"
               if entry.status == "convert" else f"fetch them with `bbsd models pull {entry.name}`")
        raise v.fail("model.name", f"the files of {entry.name} are not in {s.dir}", f"{how} (or copy them there)")
    return replace(s, path=s.path or text, mmproj=s.mmproj or mmproj)


def open_labeler(settings):
    from bbsd.engine.llama import engine as llama_engine

    return llama_engine.open_labeler(settings, digests(settings))  # hashed before loading: they name what is loaded


def unit(settings) -> UnitNeeds:
    s: LlamaSettings = settings.backend
    return UnitNeeds(read_paths=tuple(p for p in (s.path, s.mmproj, s.lora) if p), gpu=s.gpu_layers != 0)


def info(settings):
    from bbsd.engine.labeler import ModelInfo

    s: LlamaSettings = settings.backend
    return ModelInfo(backend="llama", file=s.path.name, mmproj=s.mmproj.name, lora=s.lora.name if s.lora else None,
                     files=digests(settings))


def digests(settings) -> tuple[tuple[str, int, str], ...]:
    """Size and sha256 of the model files (`fingerprint`), cached in the instance's state folder."""
    from bbsd import fingerprint, instance

    s: LlamaSettings = settings.backend
    folder = instance.folder_for(settings.service.state_dir, settings.source)
    return fingerprint.files({"file": s.path, "mmproj": s.mmproj, "lora": s.lora}, folder)


def check(settings) -> list[str]:
    s: LlamaSettings = settings.backend
    lora = f", LoRA {s.lora.name} at scale {s.lora_scale:g}" if s.lora else ""
    return [f"model files {s.path.name} + {s.mmproj.name}{lora}: found", _chosen(s)]


def _chosen(s: LlamaSettings) -> str:
    """The engine settings as the engine will apply them, defaults resolved: what a user otherwise gets wrong."""
    from bbsd.engine.llama.engine import batch_size, flash_attention, resolve_parallel, resolve_threads

    threads = f"{resolve_threads(s.threads)} threads" + (" (one per physical core)" if s.threads == 0 else "")
    layers = {0: "CPU only", -1: "all layers on the GPU"}.get(s.gpu_layers, f"GPU layers {s.gpu_layers}") \
        if s.gpu_layers != "auto" else "GPU layers: as many as fit (resolved at load)"
    # "auto" layers are resolved at load (0 where no GPU takes them): say what each outcome gives
    undecided = s.gpu_layers == "auto"
    text_fa, vision_fa = flash_attention(s.flash_attention, s.gpu_layers)
    fa = {True: "on", False: "off", None: "where the device supports it"}
    text = ("where a GPU that takes the layers supports it, off on a CPU" if undecided and s.flash_attention == "auto"
            else fa[text_fa])
    flags = (f"flash attention {text} for the text model and {fa[vision_fa]} for the vision encoder"
             + (" (auto)" if s.flash_attention == "auto" else "") + ", "
             + ", ".join(f"{name} {'on' if on else 'off'}" for name, on in (
                 ("prefix cache", s.prefix_cache), ("jump-forward", s.jump_forward))))
    n = resolve_parallel(s.parallel, s.gpu_layers)
    together = f"up to {n} photos together" if n > 1 else "one photo at a time"
    if undecided and s.parallel == 0:
        together = f"up to {n} photos together if a GPU takes the layers, else one at a time"
    return (f"engine: {threads}, context {s.context_size} tokens per photo, batch {batch_size(s.context_size)} "
            f"(an image is encoded in one batch), {layers}, {flags}, {together}"
            + (" (parallel 0: the default for this device)" if s.parallel == 0 else ""))


def weights(settings) -> str | None:
    """bbsd's mark in the text GGUF's header (`bbsd.weights`: "random", "toy"), None for a model it did not
    make, or one whose header cannot be read (loading it then says what is wrong, in its own words)."""
    from bbsd.errors import ModelError
    from bbsd.models import registry as models

    try:
        return models.inspect(settings.backend.path).weights
    except (ModelError, OSError):
        return None


BACKEND = Backend(name="llama", tables=TABLES, configure=configure, open=open_labeler, isolate=True,
                  info=info, check=check, unit=unit, weights=weights)
