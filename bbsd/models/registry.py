"""The model registry (shipped in the package as bbsd/models/models.toml, plus a models folder's own
models.toml), GGUF inspection and the hardware-fit estimate.

Invariants: the registry is the same from any working folder (the shipped rows are read through
importlib.resources, in a wheel and in the venue artefact too); a models folder's models.toml adds
rows and replaces a shipped row of the same name (any case), never the other way round; it is
validated when read (a bad row names its file, its model and the key);
inspection only reads GGUF metadata (never loads weights); a text model and an mmproj belong
together when the projector's output width equals the text model's embedding width — the
check libmtmd itself makes, done here before anything is loaded.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from bbsd.errors import ConfigError, ModelError
from bbsd.models.gguf_pair import WEIGHTS_KEY

STATUSES = ("runnable", "convert", "not-runnable", "text-only")
PROVEN = ("synthetic", "paper")  # ran here end to end on tiny weights of the same structure / read, not run
ROUTES = {"runnable": "ready GGUF", "convert": "convert", "not-runnable": "remote backend", "text-only": "none (text)"}
# Bits per weight of common llama.cpp quantisations (incl. block scales), for sizes before download.
BITS_PER_WEIGHT = {"F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.7,
                   "Q4_K_M": 4.85, "Q4_0": 4.55, "IQ4_XS": 4.25, "Q3_K_M": 3.91, "Q2_K": 3.35}
RUNTIME_MB = 75.0  # Python, llama.cpp and libmtmd loaded, no model: measured on the tiny fixture's worker
MMPROJ_SHARE = 0.15  # a vision projector is roughly this fraction of a small model's weights, before download


@dataclass(frozen=True)
class Entry:
    name: str
    family: str
    params_b: float
    status: str
    repo: str
    licence: str = ""
    quant: str = ""
    text: str = ""
    mmproj: str = ""
    sha256: dict[str, str] = field(default_factory=dict)
    size: dict[str, int] = field(default_factory=dict)
    context: int = 4096
    image_side: int = 768
    n_layer: int = 0
    n_head_kv: int = 0
    head_dim: int = 0
    proven: str = "paper"
    notes: str = ""


def route(entry: Entry) -> str:
    """How the model gets into bbsd: a ready GGUF pair, `bbsd models convert`, or a remote inference server."""
    return ROUTES[entry.status]


def registry_path(models_dir: Path) -> Path:
    """A models folder's own registry (rows converted or added there): optional."""
    return models_dir / "models.toml"


def shipped() -> Traversable:
    """The registry that ships with bbsd, inside the package."""
    return resources.files(__package__) / "models.toml"


def load(models_dir: Path | None = None) -> list[Entry]:
    """The registry: the shipped rows, then those of `models_dir`'s models.toml where there is one. A
    local row replaces the shipped row of the same name (in its place); the others are added after."""
    entries = {e.name.casefold(): e for e in load_registry(shipped())}
    local = registry_path(models_dir) if models_dir is not None else None
    if local is not None and local.is_file():
        entries.update((e.name.casefold(), e) for e in load_registry(local))
    return list(entries.values())


def load_registry(path: Path | Traversable) -> list[Entry]:
    """The rows of one registry file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"model registry {path} not found", "reinstall bbsd: the registry ships inside "
                          "the package (bbsd/models/models.toml)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})", "fix the syntax at that line") from None
    known = set(Entry.__dataclass_fields__)
    entries = []
    for row in raw.get("model", []):
        name = row.get("name", "?")
        if unknown := set(row) - known:
            raise ConfigError(f"{path}: model {name!r} has unknown key {sorted(unknown)[0]!r}",
                              f"known keys: {', '.join(sorted(known))}")
        if row.get("status") not in STATUSES:
            raise ConfigError(f"{path}: model {name!r} status {row.get('status')!r}", f"use one of {STATUSES}")
        if row.get("proven", "paper") not in PROVEN:
            raise ConfigError(f"{path}: model {name!r} proven {row.get('proven')!r}", f"use one of {PROVEN}")
        entries.append(Entry(**row))
    return entries


def find(entries: list[Entry], name: str) -> Entry:
    for e in entries:
        if e.name.casefold() == name.casefold():
            return e
    names = ", ".join(e.name for e in entries)
    raise ConfigError(f"model {name!r} is not in the registry", f"known models: {names}")


def local_files(entry: Entry, models_dir: Path) -> tuple[Path | None, Path | None]:
    """The entry's text and mmproj files in `models_dir`, found by registry name or by pattern."""
    def pick(explicit: str, want_mmproj: bool) -> Path | None:
        if explicit and (models_dir / explicit).is_file():
            return models_dir / explicit
        stem = entry.repo.rsplit("/", 1)[-1].removesuffix("-GGUF").casefold()
        for p in sorted(models_dir.glob("*.gguf")):
            low = p.name.casefold()
            if stem in low and low.startswith("mmproj") == want_mmproj:
                return p
        return None

    return pick(entry.text, False), pick(entry.mmproj, True)


# --- GGUF metadata ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GgufInfo:
    path: Path
    kind: str  # "text" or "mmproj"
    architecture: str
    name: str
    quant: str
    size_bytes: int
    context_length: int | None = None
    embedding_length: int | None = None
    n_layer: int | None = None
    n_head_kv: int | None = None
    head_dim: int | None = None
    chat_template: bool = False
    vocab_size: int | None = None
    projector: str | None = None
    projection_dim: int | None = None
    weights: str | None = None  # bbsd's mark on a pair it wrote itself (gguf_pair.WEIGHTS_KEY): "random" or "toy"


def inspect(path: Path) -> GgufInfo:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path.name} is not a readable GGUF file ({e})", "re-download it") from None
    f = reader.fields

    def get(key: str, default: Any = None) -> Any:
        return f[key].contents() if key in f else default

    arch = get("general.architecture", "?")
    ftype = get("general.file_type")
    quant = gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_") if ftype is not None else "?"
    common = {"path": path, "architecture": arch, "name": get("general.name", path.stem), "quant": quant,
              "size_bytes": path.stat().st_size, "weights": get(WEIGHTS_KEY)}
    if arch == "clip":
        return GgufInfo(kind="mmproj", projector=get("clip.projector_type") or get("clip.vision.projector_type"),
                        projection_dim=get("clip.vision.projection_dim"), **common)
    n_head = get(f"{arch}.attention.head_count")
    n_embd = get(f"{arch}.embedding_length")
    return GgufInfo(kind="text", context_length=get(f"{arch}.context_length"), embedding_length=n_embd,
                    n_layer=get(f"{arch}.block_count"), n_head_kv=get(f"{arch}.attention.head_count_kv", n_head),
                    head_dim=get(f"{arch}.attention.key_length") or (n_embd // n_head if n_embd and n_head else None),
                    chat_template="tokenizer.chat_template" in f,
                    vocab_size=len(f["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in f else None,
                    **common)


def pairing(text: GgufInfo, mmproj: GgufInfo) -> tuple[bool, str]:
    if text.kind != "text" or mmproj.kind != "mmproj":
        return False, "give the text model first and the mmproj second"
    if mmproj.projection_dim != text.embedding_length:
        return False, (f"do not belong together: the projector outputs {mmproj.projection_dim}-wide embeddings, "
                       f"the text model takes {text.embedding_length}")
    width = text.embedding_length
    return True, f"belong together ({mmproj.projector} projector into a {width}-wide {text.architecture})"


# --- hardware fit -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    weights_mb: float
    mmproj_mb: float
    kv_mb: float
    compute_mb: float
    runtime_mb: float

    @property
    def total_mb(self) -> float:
        return self.weights_mb + self.mmproj_mb + self.kv_mb + self.compute_mb + self.runtime_mb


def kv_mb(n_layer: int, n_head_kv: int, head_dim: int, context: int) -> float:
    """K and V caches in f16: 2 tensors x layers x context x KV width x 2 bytes."""
    return 2 * n_layer * context * n_head_kv * head_dim * 2 / 2**20


UBATCH = 512
TYPICAL_VOCAB = 152_064  # Qwen2/InternVL tokenizers; Gemma's is larger, SmolVLM's smaller


def compute_mb(weights_mb: float, vocab: int) -> float:
    """llama.cpp's compute buffer: f32 logits for one ubatch over the vocabulary, plus activations
    that scale with the model (flash attention keeps the attention scores out of it)."""
    return (UBATCH * vocab * 4) / 2**20 + 0.01 * weights_mb


def estimate_files(text: GgufInfo, mmproj: GgufInfo | None, context: int) -> Estimate:
    w = text.size_bytes / 2**20
    kv = kv_mb(text.n_layer or 0, text.n_head_kv or 0, text.head_dim or 0, context)
    vocab = text.vocab_size or TYPICAL_VOCAB
    return Estimate(w, (mmproj.size_bytes / 2**20) if mmproj else 0.0, kv, compute_mb(w, vocab), RUNTIME_MB)


def estimate_entry(entry: Entry, context: int) -> Estimate:
    if entry.size.get("text"):
        w = entry.size["text"] / 2**20
    else:
        w = entry.params_b * 1e9 * BITS_PER_WEIGHT.get(entry.quant or "Q4_K_M", 4.85) / 8 / 2**20
    mm = entry.size.get("mmproj", 0) / 2**20 or (w * MMPROJ_SHARE if entry.status != "text-only" else 0)
    kv = kv_mb(entry.n_layer, entry.n_head_kv, entry.head_dim, context)
    return Estimate(w, mm, kv, compute_mb(w, TYPICAL_VOCAB), RUNTIME_MB)


def verdict(need_mb: float, have_mb: float | None) -> str:
    if have_mb is None:
        return "unknown"
    if need_mb <= 0.7 * have_mb:
        return "green"
    return "yellow" if need_mb <= have_mb else "red"
