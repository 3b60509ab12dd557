"""Tiny random-weight GGUF models: a text model and its mmproj (LLaVA, InternVL or Qwen2-VL shaped).

They load and run through the real llama.cpp engine (tokenizer, chat template,
image encoder, projector, grammar sampling), so tests and the demo exercise
every real code path; their labels are meaningless by construction.
No weights are downloaded: everything is generated here with the `gguf` package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEXT_FILE = "tiny-text.gguf"
MMPROJ_FILE = "tiny-mmproj.gguf"

# ChatML, the convention of Qwen and InternVL; kept inside the GGUF like real models do.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen2-VL's image delimiters: libmtmd wraps every image in them and looks them up in the vocabulary.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>")
# A few merges so the BPE tokenizer has real work to do.
MERGES = ("Ġ t", "h e", "Ġt he", "Ġ a", "i n", "e r", "Ġ s", "o n")


@dataclass(frozen=True)
class TinySpec:
    """Shape of the generated pair; small enough to load in milliseconds."""

    n_embd: int = 64
    n_head: int = 4
    n_layer: int = 2
    n_ff: int = 128
    n_ctx_train: int = 4096
    v_embd: int = 32
    v_head: int = 2
    v_layer: int = 2
    v_ff: int = 64
    image_size: int = 56
    patch_size: int = 14
    seed: int = 0
    projector: str = "mlp"  # "mlp" (LLaVA), "internvl" (tiling + pixel shuffle) or "qwen2vl" (M-RoPE, any image size)
    n_head_kv: int = 0  # 0: as many as n_head; fewer is grouped-query attention, as real models have
    f16: bool = False  # store the text model's matrices as f16 (benchmark shapes of billions of weights)
    # Spread of the transformer blocks' weights. Deep shapes need less: the residual stream of 30
    # random blocks drowns the output layer's bias column, and replies run to every string's cap.
    block_scale: float = 0.02
    # Vocabulary size: 0 keeps the few hundred tokens the tests need. A real model's 49k (SmolVLM) or
    # 152k (Qwen2) tokens cost every generated token an output layer that wide and every grammar
    # check that many candidates; the padding tokens are never produced by the tokenizer and
    # practically never sampled (`_output`), so replies stay what the small vocabulary gives.
    n_vocab: int = 0
    # Added to the closing quote's and closing bracket's bias: strings and lists end sooner, as a real
    # model's short caption and few names do (benchmark shapes; 0 keeps the test pair's replies).
    close_bias: float = 0.0
    # "bpe": a byte-level BPE vocabulary (GPT-2, Qwen2). "spm": a SentencePiece-style one (llama.cpp's
    # `llama` tokenizer: scored pieces, `▁` for a space, byte fallback, a word-start piece put before
    # plain text), as InternLM2 and Gemma have; `n_vocab` padding is for "bpe" only.
    tokenizer: str = "bpe"
    # False: the lone space token is practically never written (as a model that never writes the optional
    # whitespace JSON allows), so a reply sampled token by token equals the one jump-forward writes.
    spaces: bool = True
    # Added to the SPM vocabulary's `<unk>` bias: a model that writes it inside strings, as a real one did.
    unknown_bias: float = 0.0


def _byte_level_alphabet() -> list[str]:
    """GPT-2's reversible byte-to-unicode map: one printable char per byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _vocab(spec: TinySpec = TinySpec(), pad: bool = True) -> tuple[list[str], list[int]]:
    import gguf

    tokens = _byte_level_alphabet()
    tokens += ["".join(m.split(" ")) for m in MERGES]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    specials = SPECIAL_TOKENS + (VISION_TOKENS if _is_qwen2vl(spec) else ())
    tokens += list(specials)
    types += [gguf.TokenType.CONTROL] * len(specials)
    padding = _padding(max(0, spec.n_vocab - len(tokens)) if pad else 0)
    tokens += padding
    types += [gguf.TokenType.NORMAL] * len(padding)
    return tokens, [int(t) for t in types]


SPM_SPACE = "\u2581"  # SentencePiece's visible space
SPM_UNKNOWN = "<unk>"
# Whole pieces for the reply's keys and punctuation, as a real SentencePiece vocabulary has them
# (each reachable by merges of its prefixes): a reply's keys take a few tokens, not one per letter.
SPM_WORDS = ("characters", "props", "caption", "scene", "visible_text", '":["', '"],"', '","', '":"', '":[]', "],")


def _spm_vocab() -> tuple[list[str], list[int], list[float]]:
    """The SentencePiece-style vocabulary: `<unk>`, BOS/EOS, the 256 byte-fallback pieces, the
    printable ASCII characters (`▁` for the space), a few scored merges, then ChatML's specials."""
    import gguf

    tokens = [SPM_UNKNOWN, "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    chars = [SPM_SPACE if b == 0x20 else chr(b) for b in range(0x20, 0x7F)]
    merges = ["".join(m.split(" ")).replace("Ġ", SPM_SPACE) for m in MERGES]
    words = list(dict.fromkeys(w[:k] for w in SPM_WORDS for k in range(2, len(w) + 1)))
    tokens += chars + merges + words + list(SPECIAL_TOKENS)
    types += [gguf.TokenType.NORMAL] * (len(chars) + len(merges) + len(words))
    types += [gguf.TokenType.CONTROL] * len(SPECIAL_TOKENS)
    # llama.cpp's SPM tokenizer merges the pair of highest score first: words (longest first), then
    # the merges, then characters.
    scores = [0.0] * 259 + [-100.0 - i for i in range(len(chars))] + [-10.0 - i for i in range(len(merges))]
    scores += [-1.0 + 0.01 * len(w) for w in words] + [0.0] * len(SPECIAL_TOKENS)
    return tokens, [int(t) for t in types], scores


def _padding(n: int) -> list[str]:
    """`n` distinct tokens of two CJK characters each, written in the byte-level alphabet as any
    byte-level BPE vocabulary stores its multi-byte tokens."""
    alphabet = _byte_level_alphabet()
    cjk = 0x9FFF - 0x4E00 + 1
    return ["".join(alphabet[b] for b in (chr(0x4E00 + i // cjk) + chr(0x4E00 + i % cjk)).encode())
            for i in range(n)]


def _is_qwen2vl(spec: TinySpec) -> bool:
    return spec.projector == "qwen2vl"


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
    alphabet = _byte_level_alphabet()
    # the SPM vocabulary's `<unk>` is as likely as a character: a real model writes it now and then
    printable = {alphabet[b] for b in range(0x20, 0x7F)} | {"Ġ", SPM_SPACE, SPM_UNKNOWN}
    for i, token in enumerate(tokens):
        if i >= len(tokens) - padding:  # `_padding`: far below the noise of the other columns, never chosen
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


def write_text_model(path: Path, spec: TinySpec = TinySpec()) -> Path:
    """Write a text model with a byte-level BPE vocabulary: llama architecture, or qwen2vl for the
    Qwen2-VL spec (M-RoPE: rotary sections for time, height and width; q/k/v biases like Qwen2)."""
    import gguf

    rng = np.random.default_rng(spec.seed)
    tokens, types = _vocab(spec) if spec.tokenizer == "bpe" else _spm_vocab()[:2]
    w = gguf.GGUFWriter(str(path), "qwen2vl" if _is_qwen2vl(spec) else "llama")
    w.add_name("bbsd-tiny-text")
    w.add_context_length(spec.n_ctx_train)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(spec.n_layer)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    n_kv = spec.n_head_kv or spec.n_head
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(spec.n_embd // spec.n_head)
    if _is_qwen2vl(spec):
        w.add_rope_dimension_sections(_mrope_sections(spec.n_embd // spec.n_head))
        w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if spec.f16 else gguf.LlamaFileType.ALL_F32)
    _tokenizer(w, spec, tokens, types)
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    d, v = spec.n_embd, len(tokens)
    d_kv = d // spec.n_head * n_kv
    dtype = np.float16 if spec.f16 else np.float32
    w.add_tensor("token_embd.weight", _as_last_letter(_embeddings(rng, v, d), tokens).astype(dtype))
    w.add_tensor("output_norm.weight", np.ones(d, dtype=np.float32))
    padding = max(0, spec.n_vocab - len(_vocab(spec, pad=False)[0])) if spec.tokenizer == "bpe" else 0
    out = _output(rng, tokens, d, padding, spec.close_bias, spec.spaces, spec.unknown_bias)
    w.add_tensor("output.weight", out.astype(dtype))
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(d, dtype=np.float32))
        for name, rows in (("attn_q", d), ("attn_k", d_kv), ("attn_v", d_kv), ("attn_output", d)):
            w.add_tensor(p + name + ".weight", _rand(rng, rows, d, scale=spec.block_scale).astype(dtype))
            if _is_qwen2vl(spec) and name != "attn_output":
                w.add_tensor(p + name + ".bias", np.zeros(rows, dtype=np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(d, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", _rand(rng, spec.n_ff, d, scale=spec.block_scale).astype(dtype))
        w.add_tensor(p + "ffn_up.weight", _rand(rng, spec.n_ff, d, scale=spec.block_scale).astype(dtype))
        w.add_tensor(p + "ffn_down.weight", _rand(rng, d, spec.n_ff, scale=spec.block_scale).astype(dtype))
    _finish(w)
    return path


def _tokenizer(w, spec: TinySpec, tokens: list[str], types: list[int]) -> None:
    if spec.tokenizer == "spm":
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_scores(_spm_vocab()[2])
        w.add_add_space_prefix(True)
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
    else:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(list(MERGES))
        w.add_bos_token_id(tokens.index("<|endoftext|>"))


def _mrope_sections(head_dim: int) -> list[int]:
    """Rotary pairs for (time, height, width, unused): Qwen2-VL's 16/24/24 of 64 pairs, scaled to this head."""
    pairs = head_dim // 2
    t = pairs // 4
    h = (pairs - t) // 2
    return [t, h, pairs - t - h, 0]


def write_mmproj(path: Path, spec: TinySpec = TinySpec()) -> Path:
    """Write a CLIP vision encoder with LLaVA's `mlp` projector (or the spec's) into the text model's width."""
    import gguf

    if _is_qwen2vl(spec):
        return _write_qwen2vl_mmproj(path, spec)
    rng = np.random.default_rng(spec.seed + 1)
    e, n_pos = spec.v_embd, (spec.image_size // spec.patch_size) ** 2 + 1
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name("bbsd-tiny-mmproj")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_clip_has_vision_encoder(True)
    w.add_clip_projector_type(spec.projector)
    w.add_vision_embedding_length(e)
    w.add_vision_head_count(spec.v_head)
    w.add_vision_feed_forward_length(spec.v_ff)
    w.add_vision_block_count(spec.v_layer)
    w.add_vision_projection_dim(spec.n_embd)
    w.add_vision_attention_layernorm_eps(1e-5)
    w.add_vision_image_size(spec.image_size)
    w.add_vision_patch_size(spec.patch_size)
    w.add_vision_image_mean([0.5, 0.5, 0.5])
    w.add_vision_image_std([0.5, 0.5, 0.5])
    w.add_vision_use_gelu(True)
    w.add_tensor("v.patch_embd.weight", _rand(rng, e, 3, spec.patch_size, spec.patch_size))
    w.add_tensor("v.class_embd", _rand(rng, e))
    w.add_tensor("v.position_embd.weight", _rand(rng, n_pos, e))
    w.add_tensor("v.pre_ln.weight", np.ones(e, dtype=np.float32))
    w.add_tensor("v.pre_ln.bias", np.zeros(e, dtype=np.float32))
    _vision_blocks(w, rng, spec)
    if spec.projector == "internvl":
        _internvl_projector(w, rng, spec)
    else:
        w.add_tensor("mm.0.weight", _rand(rng, spec.n_embd, e))
        w.add_tensor("mm.0.bias", np.zeros(spec.n_embd, dtype=np.float32))
        w.add_tensor("mm.2.weight", _rand(rng, spec.n_embd, spec.n_embd))
        w.add_tensor("mm.2.bias", np.zeros(spec.n_embd, dtype=np.float32))
    _finish(w)
    return path


def _vision_blocks(w, rng: np.random.Generator, spec: TinySpec) -> None:
    """The ViT's transformer blocks: LayerNorms, biased attention and a biased two-layer MLP."""
    e = spec.v_embd
    for i in range(spec.v_layer):
        p = f"v.blk.{i}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(p + name + ".weight", _rand(rng, e, e))
            w.add_tensor(p + name + ".bias", np.zeros(e, dtype=np.float32))
        for ln in ("ln1", "ln2"):
            w.add_tensor(p + ln + ".weight", np.ones(e, dtype=np.float32))
            w.add_tensor(p + ln + ".bias", np.zeros(e, dtype=np.float32))
        w.add_tensor(p + "ffn_up.weight", _rand(rng, spec.v_ff, e))
        w.add_tensor(p + "ffn_up.bias", np.zeros(spec.v_ff, dtype=np.float32))
        w.add_tensor(p + "ffn_down.weight", _rand(rng, e, spec.v_ff))
        w.add_tensor(p + "ffn_down.bias", np.zeros(e, dtype=np.float32))


def _write_qwen2vl_mmproj(path: Path, spec: TinySpec) -> Path:
    """Qwen2-VL's vision tower as llama.cpp's converter writes it (projector `qwen2vl_merger`).

    Any image size: libmtmd resizes to multiples of 2x2 patches (8 to 4096 merged tokens) and
    tells the decoder each token's (row, column); the ViT has no position table (2D rotary instead)
    and no class token. The Conv3D patch embedding is split into two Conv2Ds (`.weight`, `.weight.1`);
    `post_ln` is the merger's LayerNorm and `mm.0`/`mm.2` its MLP from 2x2 patches to the text width.
    """
    import gguf

    rng = np.random.default_rng(spec.seed + 1)
    e, merged = spec.v_embd, spec.v_embd * 4
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name("bbsd-tiny-qwen2vl-mmproj")
    w.add_type(gguf.GGUFType.MMPROJ)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_clip_has_vision_encoder(True)
    w.add_clip_projector_type(gguf.VisionProjectorType.QWEN2VL)
    w.add_vision_projection_dim(spec.n_embd)
    w.add_vision_image_size(560)  # what the converter writes for Qwen2-VL: unused, images keep their own size
    w.add_vision_patch_size(spec.patch_size)
    w.add_vision_embedding_length(e)
    w.add_vision_feed_forward_length(spec.v_ff)
    w.add_vision_block_count(spec.v_layer)
    w.add_vision_head_count(spec.v_head)
    w.add_vision_image_mean([0.48145466, 0.4578275, 0.40821073])  # CLIP's, as Qwen2-VL's preprocessor
    w.add_vision_image_std([0.26862954, 0.26130258, 0.27577711])
    w.add_vision_attention_layernorm_eps(1e-6)  # no use_gelu / use_silu: quick GELU, as Qwen2-VL's ViT
    for frame in ("v.patch_embd.weight", "v.patch_embd.weight.1"):
        w.add_tensor(frame, _rand(rng, e, 3, spec.patch_size, spec.patch_size))
    _vision_blocks(w, rng, spec)
    w.add_tensor("v.post_ln.weight", np.ones(e, dtype=np.float32))
    w.add_tensor("v.post_ln.bias", np.zeros(e, dtype=np.float32))
    w.add_tensor("mm.0.weight", _rand(rng, merged, merged))
    w.add_tensor("mm.0.bias", np.zeros(merged, dtype=np.float32))
    w.add_tensor("mm.2.weight", _rand(rng, spec.n_embd, merged))
    w.add_tensor("mm.2.bias", np.zeros(spec.n_embd, dtype=np.float32))
    _finish(w)
    return path


def _internvl_projector(w, rng: np.random.Generator, spec: TinySpec) -> None:
    """InternVL: tiles of the image, 2x2 pixel shuffle, then LayerNorm + a GELU MLP into the text width."""
    w.add_vision_projector_scale_factor(2)
    w.add_vision_preproc_min_tiles(1)
    w.add_vision_preproc_max_tiles(4)
    merged = spec.v_embd * 4
    w.add_tensor("mm.model.mlp.0.weight", np.ones(merged, dtype=np.float32))
    w.add_tensor("mm.model.mlp.0.bias", np.zeros(merged, dtype=np.float32))
    w.add_tensor("mm.model.mlp.1.weight", _rand(rng, spec.n_embd, merged))
    w.add_tensor("mm.model.mlp.1.bias", np.zeros(spec.n_embd, dtype=np.float32))
    w.add_tensor("mm.model.mlp.3.weight", _rand(rng, spec.n_embd, spec.n_embd))
    w.add_tensor("mm.model.mlp.3.bias", np.zeros(spec.n_embd, dtype=np.float32))


def _finish(w) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


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
    n_vocab = len(_vocab(spec)[0] if spec.tokenizer == "bpe" else _spm_vocab()[0])
    w.add_tensor("output.weight.lora_a", _rand(rng, rank, spec.n_embd, scale=1.0))
    w.add_tensor("output.weight.lora_b", _rand(rng, n_vocab, rank, scale=1.0))
    _finish(w)
    return path


def write_pair(folder: Path, spec: TinySpec = TinySpec()) -> tuple[Path, Path]:
    """Write both files into `folder` (created if needed); returns (text, mmproj)."""
    folder.mkdir(parents=True, exist_ok=True)
    return (
        write_text_model(folder / TEXT_FILE, spec),
        write_mmproj(folder / MMPROJ_FILE, spec),
    )
