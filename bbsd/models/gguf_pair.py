"""The GGUF pair writer: a text model and its mmproj from named numpy arrays, as llama.cpp reads them.

Invariant: one writer for every pair bbsd makes — the random test pair (`tiny`) and a trained toy model
(`twin`) get the same metadata, vocabulary and chat template for the same `TinySpec`; only the arrays
differ, and the `bbsd.weights` mark: `random` or `toy` in both files, so `bbsd run` and `bbsd check` can
say which (from the header, never by loading). Tensors are written in the order given, with the names given
(llama.cpp's: `token_embd.weight`, `blk.0.attn_q.weight`, `v.patch_embd.weight`, `mm.0.weight` …), so the
same arrays with the same mark make the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEXT_FILE = "tiny-text.gguf"
MMPROJ_FILE = "tiny-mmproj.gguf"
# Which weights a pair bbsd wrote holds: RANDOM (the test and benchmark pairs: labels mean nothing) or TOY
# (trained on the toy show's synthetic puppets: right only on that cast). Models bbsd did not write lack it.
WEIGHTS_KEY = "bbsd.weights"
RANDOM, TOY = "random", "toy"

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
SPM_SPACE = "\u2581"  # SentencePiece's visible space
SPM_UNKNOWN = "<unk>"
# Whole pieces for the reply's keys and punctuation, as a real SentencePiece vocabulary has them
# (each reachable by merges of its prefixes): a reply's keys take a few tokens, not one per letter.
SPM_WORDS = ("characters", "props", "caption", "scene", "visible_text", '":["', '"],"', '","', '":"', '":[]', "],")


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
    # practically never sampled (`tiny._output`), so replies stay what the small vocabulary gives.
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
    # A trained vocabulary (train/toktrain.py): its merges in rank order, "left right" in the tokenizer's own
    # alphabet (byte-level for "bpe", `▁` for "spm"). Empty: the fixed test vocabulary above.
    merges: tuple[str, ...] = ()


def is_qwen2vl(spec: TinySpec) -> bool:
    return spec.projector == "qwen2vl"


# --- vocabularies ---------------------------------------------------------------------------------


def byte_level_alphabet() -> list[str]:
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


def bpe_vocab(spec: TinySpec = TinySpec(), pad: bool = True) -> tuple[list[str], list[int]]:
    """The byte-level BPE vocabulary: 256 byte tokens, the merges (the spec's trained ones, else `MERGES`),
    the specials, then `n_vocab` padding."""
    import gguf

    tokens = byte_level_alphabet()
    tokens += merged_pieces(bpe_merges(spec), set(tokens))
    types = [gguf.TokenType.NORMAL] * len(tokens)
    specials = SPECIAL_TOKENS + (VISION_TOKENS if is_qwen2vl(spec) else ())
    tokens += list(specials)
    types += [gguf.TokenType.CONTROL] * len(specials)
    padding = _padding(max(0, spec.n_vocab - len(tokens)) if pad else 0)
    tokens += padding
    types += [gguf.TokenType.NORMAL] * len(padding)
    return tokens, [int(t) for t in types]


def bpe_merges(spec: TinySpec) -> tuple[str, ...]:
    return spec.merges or MERGES


def merged_pieces(merges: tuple[str, ...], have: set[str]) -> list[str]:
    """The pieces the merges make, in rank order, each once and none already in `have`."""
    out = []
    for m in merges:
        piece = m.replace(" ", "")
        if piece not in have:
            have.add(piece)
            out.append(piece)
    return out


def spm_vocab(spec: TinySpec = TinySpec()) -> tuple[list[str], list[int], list[float]]:
    """The SentencePiece-style vocabulary: `<unk>`, BOS/EOS, the 256 byte-fallback pieces, the
    printable ASCII characters (`▁` for the space), scored merges (a trained vocabulary's, else the fixed
    test pieces), then ChatML's specials."""
    import gguf

    if spec.merges:
        return _trained_spm(spec.merges)
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


def _trained_spm(merges: tuple[str, ...]) -> tuple[list[str], list[int], list[float]]:
    """A trained SentencePiece-style vocabulary: the byte-fallback pieces, the characters its merges start
    from, then each merge's piece scored by its rank (llama.cpp's `llama` tokenizer merges the highest score
    first, so it applies them in the trainer's order)."""
    import gguf

    tokens = [SPM_UNKNOWN, "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    have = set(tokens)
    chars = [c for c in dict.fromkeys("".join(m.replace(" ", "") for m in merges)) if c not in have]
    chars = list(dict.fromkeys([SPM_SPACE, *sorted(chars)]))
    pieces = merged_pieces(merges, have | set(chars))
    tokens += chars + pieces + list(SPECIAL_TOKENS)
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    types += [gguf.TokenType.NORMAL] * (len(chars) + len(pieces)) + [gguf.TokenType.CONTROL] * len(SPECIAL_TOKENS)
    scores = [0.0] * (259 + len(chars)) + [-1.0 - i for i in range(len(pieces))] + [0.0] * len(SPECIAL_TOKENS)
    return tokens, [int(t) for t in types], scores


def vocabulary(spec: TinySpec) -> list[str]:
    """The text model's tokens, in id order, for `spec`'s tokenizer."""
    return bpe_vocab(spec)[0] if spec.tokenizer == "bpe" else spm_vocab(spec)[0]


def _padding(n: int) -> list[str]:
    """`n` distinct tokens of two CJK characters each, written in the byte-level alphabet as any
    byte-level BPE vocabulary stores its multi-byte tokens."""
    alphabet = byte_level_alphabet()
    cjk = 0x9FFF - 0x4E00 + 1
    return ["".join(alphabet[b] for b in (chr(0x4E00 + i // cjk) + chr(0x4E00 + i % cjk)).encode())
            for i in range(n)]


# --- the text model -------------------------------------------------------------------------------


def write_text(path: Path, spec: TinySpec, tensors: Mapping[str, np.ndarray], *, weights: str) -> Path:
    """Write the text model: llama architecture (qwen2vl for the Qwen2-VL spec: M-RoPE sections,
    freq base 1e6), `spec`'s shape and tokenizer, ChatML, the `weights` mark, then `tensors` in their order."""
    import gguf

    tokens, types = bpe_vocab(spec) if spec.tokenizer == "bpe" else spm_vocab(spec)[:2]
    w = gguf.GGUFWriter(str(path), "qwen2vl" if is_qwen2vl(spec) else "llama")
    w.add_name("bbsd-tiny-text")
    _mark(w, weights)
    w.add_context_length(spec.n_ctx_train)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(spec.n_layer)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head_kv or spec.n_head)
    w.add_rope_dimension_count(spec.n_embd // spec.n_head)
    if is_qwen2vl(spec):
        w.add_rope_dimension_sections(mrope_sections(spec.n_embd // spec.n_head))
        w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if spec.f16 else gguf.LlamaFileType.ALL_F32)
    _tokenizer(w, spec, tokens, types)
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    return _finish(w, tensors, path)


def _tokenizer(w, spec: TinySpec, tokens: list[str], types: list[int]) -> None:
    if spec.tokenizer == "spm":
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_scores(spm_vocab(spec)[2])
        w.add_add_space_prefix(True)
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
    else:
        w.add_tokenizer_model("gpt2")
        # a trained vocabulary was pre-tokenized by GPT-2's regex (tokenizers' ByteLevel); llama.cpp's
        # "default" splits punctuation runs first
        w.add_tokenizer_pre("gpt-2" if spec.merges else "default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(list(bpe_merges(spec)))
        w.add_bos_token_id(tokens.index("<|endoftext|>"))


def mrope_sections(head_dim: int) -> list[int]:
    """Rotary pairs for (time, height, width, unused): Qwen2-VL's 16/24/24 of 64 pairs, scaled to this head."""
    pairs = head_dim // 2
    t = pairs // 4
    h = (pairs - t) // 2
    return [t, h, pairs - t - h, 0]


# --- the mmproj -----------------------------------------------------------------------------------


def write_mmproj(path: Path, spec: TinySpec, tensors: Mapping[str, np.ndarray], *, weights: str) -> Path:
    """Write the vision encoder + projector: a CLIP ViT with LLaVA's `mlp` projector (or InternVL's),
    or Qwen2-VL's tower for that spec; the `weights` mark; `tensors` in their order."""
    import gguf

    if is_qwen2vl(spec):
        return _write_qwen2vl_mmproj(path, spec, tensors, weights)
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name("bbsd-tiny-mmproj")
    _mark(w, weights)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_clip_has_vision_encoder(True)
    w.add_clip_projector_type(spec.projector)
    w.add_vision_embedding_length(spec.v_embd)
    w.add_vision_head_count(spec.v_head)
    w.add_vision_feed_forward_length(spec.v_ff)
    w.add_vision_block_count(spec.v_layer)
    w.add_vision_projection_dim(spec.n_embd)
    w.add_vision_attention_layernorm_eps(1e-5)
    w.add_vision_image_size(spec.image_size)
    w.add_vision_patch_size(spec.patch_size)
    w.add_vision_image_mean(list(IMAGE_MEAN))
    w.add_vision_image_std(list(IMAGE_STD))
    w.add_vision_use_gelu(True)
    if spec.projector == "internvl":  # tiles of the image, then a 2x2 pixel shuffle
        w.add_vision_projector_scale_factor(2)
        w.add_vision_preproc_min_tiles(1)
        w.add_vision_preproc_max_tiles(4)
    return _finish(w, tensors, path)


IMAGE_MEAN = (0.5, 0.5, 0.5)  # the LLaVA/InternVL spec's normalisation (libmtmd: (x/255 - mean) / std)
IMAGE_STD = (0.5, 0.5, 0.5)


def _write_qwen2vl_mmproj(path: Path, spec: TinySpec, tensors: Mapping[str, np.ndarray], weights: str) -> Path:
    """Qwen2-VL's vision tower as llama.cpp's converter writes it (projector `qwen2vl_merger`).

    Any image size: libmtmd resizes to multiples of 2x2 patches (8 to 4096 merged tokens) and
    tells the decoder each token's (row, column); the ViT has no position table (2D rotary instead)
    and no class token.
    """
    import gguf

    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name("bbsd-tiny-qwen2vl-mmproj")
    _mark(w, weights)
    w.add_type(gguf.GGUFType.MMPROJ)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_clip_has_vision_encoder(True)
    w.add_clip_projector_type(gguf.VisionProjectorType.QWEN2VL)
    w.add_vision_projection_dim(spec.n_embd)
    w.add_vision_image_size(560)  # what the converter writes for Qwen2-VL: unused, images keep their own size
    w.add_vision_patch_size(spec.patch_size)
    w.add_vision_embedding_length(spec.v_embd)
    w.add_vision_feed_forward_length(spec.v_ff)
    w.add_vision_block_count(spec.v_layer)
    w.add_vision_head_count(spec.v_head)
    w.add_vision_image_mean([0.48145466, 0.4578275, 0.40821073])  # CLIP's, as Qwen2-VL's preprocessor
    w.add_vision_image_std([0.26862954, 0.26130258, 0.27577711])
    w.add_vision_attention_layernorm_eps(1e-6)  # no use_gelu / use_silu: quick GELU, as Qwen2-VL's ViT
    return _finish(w, tensors, path)


def _mark(w, weights: str) -> None:
    if weights not in (RANDOM, TOY):
        raise ValueError(f"weights must be {RANDOM!r} or {TOY!r}, not {weights!r}")
    w.add_string(WEIGHTS_KEY, weights)


def _finish(w, tensors: Mapping[str, np.ndarray], path: Path) -> Path:
    for name, array in tensors.items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
