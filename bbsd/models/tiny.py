"""Tiny random-weight GGUF models: a text model and its mmproj (LLaVA, InternVL or Qwen2-VL shaped).

They load and run through the real llama.cpp engine (tokenizer, chat template,
image encoder, projector, grammar sampling), so tests and the demo exercise
every real code path; their labels are meaningless by construction, and their files say so
(`bbsd.weights` = "random": `bbsd run` and `bbsd check` warn).
No weights are downloaded: everything is generated here (seeded) and written by `gguf_pair`,
the writer a trained toy model (`twin`) uses too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bbsd.models.gguf_pair import (
    CHAT_TEMPLATE,
    MERGES,
    MMPROJ_FILE,
    RANDOM,
    SPECIAL_TOKENS,
    SPM_SPACE,
    SPM_UNKNOWN,
    SPM_WORDS,
    TEXT_FILE,
    VISION_TOKENS,
    TinySpec,
    bpe_vocab,
    byte_level_alphabet,
    is_qwen2vl,
    vocabulary,
)
from bbsd.models.gguf_pair import write_mmproj as write_mmproj_tensors
from bbsd.models.gguf_pair import write_text as write_text_tensors

__all__ = ["CHAT_TEMPLATE", "MERGES", "MMPROJ_FILE", "SPECIAL_TOKENS", "TEXT_FILE", "VISION_TOKENS", "TinySpec",
           "mmproj_tensors", "text_tensors", "write_lora", "write_mmproj", "write_pair", "write_text_model"]


def _rand(rng: np.random.Generator, *shape: int, scale: float = 0.02) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _embeddings(rng: np.random.Generator, v: int, d: int) -> np.ndarray:
    """Random embeddings plus one large constant dimension.

    After RMS normalisation that dimension stays near +sqrt(d) whatever the input, so the
    output layer's first column acts as a per-token bias (see `_output`).
    """
    emb = _rand(rng, v, d, scale=1.0)
    emb[:, 0] = 100.0
    return emb


def _as_last_letter(emb: np.ndarray, tokens: list[str]) -> np.ndarray:
    """Each `SPM_WORDS` piece embedded as its last character: the random model, which mostly follows
    its last token, then goes on after a piece jump-forward wrote as after the letters it samples one
    by one (its replies are compared with jump-forward on and off)."""
    index = {t: i for i, t in enumerate(tokens)}
    for w in SPM_WORDS:
        for k in range(2, len(w) + 1):
            if w[:k] in index and w[k - 1] in index:
                emb[index[w[:k]]] = emb[index[w[k - 1]]]
    return emb


def _output(rng: np.random.Generator, tokens: list[str], d: int, padding: int = 0,
            close_bias: float = 0.0, spaces: bool = True, unknown_bias: float = 0.0) -> np.ndarray:
    """Output weights whose bias column makes the model write short printable-ASCII strings.

    A purely random model writes every JSON string to its maximum length in multi-byte
    characters (over a thousand tokens a photo); with this bias a closing quote is likely,
    so a reply takes tens of tokens and the tests run fast. Still random, still meaningless.
    """
    out = _rand(rng, len(tokens), d, scale=1.0)
    alphabet = byte_level_alphabet()
    # the SPM vocabulary's `<unk>` is as likely as a character: a real model writes it now and then
    printable = {alphabet[b] for b in range(0x20, 0x7F)} | {"Ġ", SPM_SPACE, SPM_UNKNOWN}
    for i, token in enumerate(tokens):
        if i >= len(tokens) - padding:  # padding tokens: far below the noise of the other columns, never chosen
            out[i, 0] = -4.0
        elif token == '"':
            out[i, 0] = 0.32 + close_bias
        elif token == "]" and close_bias:
            out[i, 0] = close_bias
        elif token in ("Ġ", SPM_SPACE) and not spaces:
            out[i, 0] = -1.0
        elif token in printable or token in SPECIAL_TOKENS:
            out[i, 0] = rng.normal(0.0, 0.1) + (unknown_bias if token == SPM_UNKNOWN else 0.0)
        else:
            out[i, 0] = -1.0  # control and non-ASCII bytes: practically never chosen
    return out


def text_tensors(spec: TinySpec = TinySpec()) -> dict[str, np.ndarray]:
    """The random text model's tensors, by llama.cpp name, in the order they are written."""
    rng = np.random.default_rng(spec.seed)
    tokens = vocabulary(spec)
    d, v = spec.n_embd, len(tokens)
    d_kv = d // spec.n_head * (spec.n_head_kv or spec.n_head)
    dtype = np.float16 if spec.f16 else np.float32
    t = {"token_embd.weight": _as_last_letter(_embeddings(rng, v, d), tokens).astype(dtype),
         "output_norm.weight": np.ones(d, dtype=np.float32)}
    padding = max(0, spec.n_vocab - len(bpe_vocab(spec, pad=False)[0])) if spec.tokenizer == "bpe" else 0
    t["output.weight"] = _output(rng, tokens, d, padding, spec.close_bias, spec.spaces,
                                 spec.unknown_bias).astype(dtype)
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = np.ones(d, dtype=np.float32)
        for name, rows in (("attn_q", d), ("attn_k", d_kv), ("attn_v", d_kv), ("attn_output", d)):
            t[p + name + ".weight"] = _rand(rng, rows, d, scale=spec.block_scale).astype(dtype)
            if is_qwen2vl(spec) and name != "attn_output":
                t[p + name + ".bias"] = np.zeros(rows, dtype=np.float32)
        t[p + "ffn_norm.weight"] = np.ones(d, dtype=np.float32)
        t[p + "ffn_gate.weight"] = _rand(rng, spec.n_ff, d, scale=spec.block_scale).astype(dtype)
        t[p + "ffn_up.weight"] = _rand(rng, spec.n_ff, d, scale=spec.block_scale).astype(dtype)
        t[p + "ffn_down.weight"] = _rand(rng, d, spec.n_ff, scale=spec.block_scale).astype(dtype)
    return t


def write_text_model(path: Path, spec: TinySpec = TinySpec()) -> Path:
    """Write a random text model with a byte-level BPE vocabulary: llama architecture, or qwen2vl for the
    Qwen2-VL spec (M-RoPE: rotary sections for time, height and width; q/k/v biases like Qwen2)."""
    return write_text_tensors(path, spec, text_tensors(spec), weights=RANDOM)


def mmproj_tensors(spec: TinySpec = TinySpec()) -> dict[str, np.ndarray]:
    """The random vision encoder's and projector's tensors, by llama.cpp name, in the order they are written."""
    rng = np.random.default_rng(spec.seed + 1)
    if is_qwen2vl(spec):
        return _qwen2vl_tensors(rng, spec)
    e, n_pos = spec.v_embd, (spec.image_size // spec.patch_size) ** 2 + 1
    t = {"v.patch_embd.weight": _rand(rng, e, 3, spec.patch_size, spec.patch_size),
         "v.class_embd": _rand(rng, e),
         "v.position_embd.weight": _rand(rng, n_pos, e),
         "v.pre_ln.weight": np.ones(e, dtype=np.float32),
         "v.pre_ln.bias": np.zeros(e, dtype=np.float32)}
    t.update(_vision_blocks(rng, spec))
    if spec.projector == "internvl":
        t.update(_internvl_projector(rng, spec))
    else:
        t["mm.0.weight"] = _rand(rng, spec.n_embd, e)
        t["mm.0.bias"] = np.zeros(spec.n_embd, dtype=np.float32)
        t["mm.2.weight"] = _rand(rng, spec.n_embd, spec.n_embd)
        t["mm.2.bias"] = np.zeros(spec.n_embd, dtype=np.float32)
    return t


def write_mmproj(path: Path, spec: TinySpec = TinySpec()) -> Path:
    """Write a random CLIP vision encoder with LLaVA's `mlp` projector (or the spec's) into the text model's width."""
    return write_mmproj_tensors(path, spec, mmproj_tensors(spec), weights=RANDOM)


def _vision_blocks(rng: np.random.Generator, spec: TinySpec) -> dict[str, np.ndarray]:
    """The ViT's transformer blocks: LayerNorms, biased attention and a biased two-layer MLP."""
    e, t = spec.v_embd, {}
    for i in range(spec.v_layer):
        p = f"v.blk.{i}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            t[p + name + ".weight"] = _rand(rng, e, e)
            t[p + name + ".bias"] = np.zeros(e, dtype=np.float32)
        for ln in ("ln1", "ln2"):
            t[p + ln + ".weight"] = np.ones(e, dtype=np.float32)
            t[p + ln + ".bias"] = np.zeros(e, dtype=np.float32)
        t[p + "ffn_up.weight"] = _rand(rng, spec.v_ff, e)
        t[p + "ffn_up.bias"] = np.zeros(spec.v_ff, dtype=np.float32)
        t[p + "ffn_down.weight"] = _rand(rng, e, spec.v_ff)
        t[p + "ffn_down.bias"] = np.zeros(e, dtype=np.float32)
    return t


def _qwen2vl_tensors(rng: np.random.Generator, spec: TinySpec) -> dict[str, np.ndarray]:
    """Qwen2-VL's tower: the Conv3D patch embedding split into two Conv2Ds (`.weight`, `.weight.1`), the
    blocks, `post_ln` (the merger's LayerNorm) and `mm.0`/`mm.2`, the merger's MLP from 2x2 patches to the
    text width."""
    e, merged = spec.v_embd, spec.v_embd * 4
    t = {frame: _rand(rng, e, 3, spec.patch_size, spec.patch_size)
         for frame in ("v.patch_embd.weight", "v.patch_embd.weight.1")}
    t.update(_vision_blocks(rng, spec))
    t["v.post_ln.weight"] = np.ones(e, dtype=np.float32)
    t["v.post_ln.bias"] = np.zeros(e, dtype=np.float32)
    t["mm.0.weight"] = _rand(rng, merged, merged)
    t["mm.0.bias"] = np.zeros(merged, dtype=np.float32)
    t["mm.2.weight"] = _rand(rng, spec.n_embd, merged)
    t["mm.2.bias"] = np.zeros(spec.n_embd, dtype=np.float32)
    return t


def _internvl_projector(rng: np.random.Generator, spec: TinySpec) -> dict[str, np.ndarray]:
    """InternVL: tiles of the image, 2x2 pixel shuffle, then LayerNorm + a GELU MLP into the text width."""
    merged = spec.v_embd * 4
    return {"mm.model.mlp.0.weight": np.ones(merged, dtype=np.float32),
            "mm.model.mlp.0.bias": np.zeros(merged, dtype=np.float32),
            "mm.model.mlp.1.weight": _rand(rng, spec.n_embd, merged),
            "mm.model.mlp.1.bias": np.zeros(spec.n_embd, dtype=np.float32),
            "mm.model.mlp.3.weight": _rand(rng, spec.n_embd, spec.n_embd),
            "mm.model.mlp.3.bias": np.zeros(spec.n_embd, dtype=np.float32)}


def write_lora(path: Path, spec: TinySpec = TinySpec(), rank: int = 4, seed: int = 7, alpha: float = 4.0) -> Path:
    """A LoRA adapter GGUF for the text model of `spec`, on its output layer, strong enough to move every logit.

    llama.cpp's adapter format: general.type "adapter", adapter.type "lora", `<tensor>.lora_a`
    (rank × in) and `<tensor>.lora_b` (out × rank) beside the base model's tensor names.
    """
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("bbsd-tiny-lora")
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    n_vocab = len(vocabulary(spec))
    w.add_tensor("output.weight.lora_a", _rand(rng, rank, spec.n_embd, scale=1.0))
    w.add_tensor("output.weight.lora_b", _rand(rng, n_vocab, rank, scale=1.0))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_pair(folder: Path, spec: TinySpec = TinySpec()) -> tuple[Path, Path]:
    """Write both files into `folder` (created if needed); returns (text, mmproj)."""
    folder.mkdir(parents=True, exist_ok=True)
    return (
        write_text_model(folder / TEXT_FILE, spec),
        write_mmproj(folder / MMPROJ_FILE, spec),
    )
