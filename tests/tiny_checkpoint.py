"""Tiny random-weight InternVL checkpoints with the real structure of the published ones.

`internvl2_8b` mirrors OpenGVLab/InternVL2-8B (InternViT-300M + MLP projector + InternLM2 with a fused
`wqkv`, a SentencePiece `tokenizer.model` with InternLM2's specials and InternVL's image tokens added
after it); `internvl2_5_1b` mirrors OpenGVLab/InternVL2_5-1B (the same ViT + Qwen2 with a byte-level BPE
`tokenizer.json`). Names, config keys and layouts are the real ones; only the sizes are tiny. Weights are
float16 so the converter keeps them bit for bit and a reference forward pass sees the same numbers.
Needs the convert extra (sentencepiece, tokenizers, safetensors).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VISION = {"architectures": ["InternVisionModel"], "attention_dropout": 0.0, "drop_path_rate": 0.0, "dropout": 0.0,
          "hidden_act": "gelu", "hidden_size": 32, "image_size": 56, "initializer_factor": 1.0,
          "initializer_range": 0.02, "intermediate_size": 64, "layer_norm_eps": 1e-6, "model_type": "intern_vit_6b",
          "norm_type": "layer_norm", "num_attention_heads": 2, "num_channels": 3, "num_hidden_layers": 4,
          "patch_size": 14, "qk_normalization": False, "qkv_bias": True, "use_flash_attn": False}
# InternVL's image tokens, added after the text model's own vocabulary (ids from vocab_size - 9 up)
IMAGE_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
INTERNLM2_SPECIALS = ["<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>",
                      "<|im_start|>"]
CHATML = ("{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = ["The puppet king Koschei stands under a brass lantern", "Baba Yaga in a red shawl laughs",
          "A photo of the stage, the curtain, two puppets and a table", "0123456789 .,;:!?'\"()[]{}<>-_/\\"]


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    backbone: str  # the llm_config architecture
    tensors: dict[str, np.ndarray]  # every tensor written, float16
    config: dict


def _rand(rng: np.random.Generator, *shape: int, scale: float = 0.25, offset: float = 0.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale + offset).astype(np.float16)


def _vision_tensors(rng, v: dict, llm_hidden: int) -> dict[str, np.ndarray]:
    d, f, p = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    n_pos = (v["image_size"] // p) ** 2 + 1
    t = {"vision_model.embeddings.class_embedding": _rand(rng, 1, 1, d),
         "vision_model.embeddings.patch_embedding.weight": _rand(rng, d, 3, p, p, scale=0.05),
         "vision_model.embeddings.patch_embedding.bias": _rand(rng, d),
         "vision_model.embeddings.position_embedding": _rand(rng, 1, n_pos, d)}
    for i in range(v["num_hidden_layers"]):
        pre = f"vision_model.encoder.layers.{i}."
        t |= {pre + "ls1": _rand(rng, d, scale=0.1, offset=0.5), pre + "ls2": _rand(rng, d, scale=0.1, offset=0.5),
              pre + "attn.qkv.weight": _rand(rng, 3 * d, d), pre + "attn.qkv.bias": _rand(rng, 3 * d),
              pre + "attn.proj.weight": _rand(rng, d, d), pre + "attn.proj.bias": _rand(rng, d),
              pre + "mlp.fc1.weight": _rand(rng, f, d), pre + "mlp.fc1.bias": _rand(rng, f),
              pre + "mlp.fc2.weight": _rand(rng, d, f), pre + "mlp.fc2.bias": _rand(rng, d),
              pre + "norm1.weight": _rand(rng, d, scale=0.1, offset=1.0), pre + "norm1.bias": _rand(rng, d),
              pre + "norm2.weight": _rand(rng, d, scale=0.1, offset=1.0), pre + "norm2.bias": _rand(rng, d)}
    merged = d * 4  # pixel shuffle with downsample_ratio 0.5 stacks 2x2 patches
    t |= {"mlp1.0.weight": _rand(rng, merged, scale=0.1, offset=1.0), "mlp1.0.bias": _rand(rng, merged),
          "mlp1.1.weight": _rand(rng, llm_hidden, merged), "mlp1.1.bias": _rand(rng, llm_hidden),
          "mlp1.3.weight": _rand(rng, llm_hidden, llm_hidden), "mlp1.3.bias": _rand(rng, llm_hidden)}
    return t


def _internlm2_tensors(rng, c: dict) -> dict[str, np.ndarray]:
    d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = d // c["num_attention_heads"]
    qkv_rows = (c["num_attention_heads"] + 2 * c["num_key_value_heads"]) * hd
    t = {"language_model.model.tok_embeddings.weight": _rand(rng, v, d, scale=1.0),
         "language_model.model.norm.weight": _rand(rng, d, scale=0.1, offset=1.0),
         "language_model.output.weight": _rand(rng, v, d)}
    for i in range(c["num_hidden_layers"]):
        pre = f"language_model.model.layers.{i}."
        t |= {pre + "attention.wqkv.weight": _rand(rng, qkv_rows, d), pre + "attention.wo.weight": _rand(rng, d, d),
              pre + "attention_norm.weight": _rand(rng, d, scale=0.1, offset=1.0),
              pre + "ffn_norm.weight": _rand(rng, d, scale=0.1, offset=1.0),
              pre + "feed_forward.w1.weight": _rand(rng, f, d), pre + "feed_forward.w3.weight": _rand(rng, f, d),
              pre + "feed_forward.w2.weight": _rand(rng, d, f)}
    return t


def _qwen2_tensors(rng, c: dict) -> dict[str, np.ndarray]:
    d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = d // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    t = {"language_model.model.embed_tokens.weight": _rand(rng, v, d, scale=1.0),
         "language_model.model.norm.weight": _rand(rng, d, scale=0.1, offset=1.0),
         "language_model.lm_head.weight": _rand(rng, v, d)}
    for i in range(c["num_hidden_layers"]):
        pre = f"language_model.model.layers.{i}."
        t |= {pre + "self_attn.q_proj.weight": _rand(rng, d, d), pre + "self_attn.q_proj.bias": _rand(rng, d),
              pre + "self_attn.k_proj.weight": _rand(rng, kv, d), pre + "self_attn.k_proj.bias": _rand(rng, kv),
              pre + "self_attn.v_proj.weight": _rand(rng, kv, d), pre + "self_attn.v_proj.bias": _rand(rng, kv),
              pre + "self_attn.o_proj.weight": _rand(rng, d, d),
              pre + "input_layernorm.weight": _rand(rng, d, scale=0.1, offset=1.0),
              pre + "post_attention_layernorm.weight": _rand(rng, d, scale=0.1, offset=1.0),
              pre + "mlp.gate_proj.weight": _rand(rng, f, d), pre + "mlp.up_proj.weight": _rand(rng, f, d),
              pre + "mlp.down_proj.weight": _rand(rng, d, f)}
    return t


def _sentencepiece(folder: Path) -> int:
    """InternLM2's tokenizer shape: SentencePiece BPE with byte fallback, its chat specials inside the model."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 20), model_writer=buf, model_type="bpe",
                                   vocab_size=320, byte_fallback=True, user_defined_symbols=INTERNLM2_SPECIALS,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False,
                                   num_threads=1, minloglevel=2)
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    return spm.SentencePieceProcessor(model_proto=buf.getvalue()).vocab_size()


def _decoder_entry(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def _internlm2_tokenizer(folder: Path) -> int:
    n_sp = _sentencepiece(folder)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    decoder = {str(i): _decoder_entry(sp.IdToPiece(i)) for i in (0, 1, 2)}
    decoder |= {str(sp.PieceToId(s)): _decoder_entry(s) for s in INTERNLM2_SPECIALS}
    added = {s: n_sp + i for i, s in enumerate(IMAGE_TOKENS)}
    decoder |= {str(i): _decoder_entry(s) for s, i in added.items()}
    (folder / "added_tokens.json").write_text(json.dumps(dict(sorted(added.items())), indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"added_tokens_decoder": decoder, "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>",
         "unk_token": "<unk>", "chat_template": CHATML, "model_max_length": 4096,
         "tokenizer_class": "InternLM2Tokenizer", "auto_map": {"AutoTokenizer": [
             "tokenization_internlm2.InternLM2Tokenizer", None]}}, indent=2))
    return n_sp + len(IMAGE_TOKENS)


QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _qwen2_tokenizer(folder: Path) -> tuple[int, dict[str, int]]:
    """Qwen2's tokenizer shape: byte-level BPE with Qwen2's split regex, specials added after the merges."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *IMAGE_TOKENS]
    tok.add_special_tokens(specials)
    tok.save(str(folder / "tokenizer.json"))
    ids = {s: tok.token_to_id(s) for s in specials}
    decoder = {str(tok.token_to_id(s)): _decoder_entry(s) for s in specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"added_tokens_decoder": decoder, "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
         "chat_template": CHATML.replace("{{ bos_token }}", ""), "model_max_length": 4096,
         "tokenizer_class": "Qwen2Tokenizer", "errors": "replace"}, indent=2))
    return tok.get_vocab_size(), ids


def _write(folder: Path, config: dict, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    (folder / "config.json").write_text(json.dumps(config, indent=2))
    names = sorted(tensors)
    half = len(names) // 2  # two shards and an index, as the published checkpoints have
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for shard, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(folder / shard), metadata={"format": "pt"})
        weight_map |= {n: shard for n in part}
    total = sum(t.nbytes for t in tensors.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _chat_config(llm: dict, template: str, seed: int) -> dict:
    return {"architectures": ["InternVLChatModel"], "downsample_ratio": 0.5, "dynamic_image_size": True,
            "force_image_size": VISION["image_size"], "llm_config": llm, "max_dynamic_patch": 12,
            "min_dynamic_patch": 1, "model_type": "internvl_chat", "ps_version": "v2", "select_layer": -1,
            "template": template, "torch_dtype": "float16", "use_thumbnail": True, "vision_config": dict(VISION),
            "_tiny_seed": seed}


def internvl2_8b(folder: Path, seed: int = 8) -> Checkpoint:
    """OpenGVLab/InternVL2-8B's structure: InternViT-300M-448px + mlp1 + internlm2_5-7b-chat, tiny."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _internlm2_tokenizer(folder)
    llm = {"architectures": ["InternLM2ForCausalLM"], "bias": False, "bos_token_id": 1, "eos_token_id": 2,
           "hidden_act": "silu", "hidden_size": 64, "intermediate_size": 128, "max_position_embeddings": 4096,
           "model_type": "internlm2", "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
           "pad_token_id": 2, "rms_norm_eps": 1e-5, "rope_scaling": {"factor": 2.0, "type": "dynamic"},
           "rope_theta": 1000000, "tie_word_embeddings": False, "torch_dtype": "float16", "vocab_size": vocab}
    config = _chat_config(llm, "internlm2-chat", seed)
    rng = np.random.default_rng(seed)
    tensors = _vision_tensors(rng, VISION, llm["hidden_size"]) | _internlm2_tensors(rng, llm)
    _write(folder, config, tensors)
    return Checkpoint(folder, "InternLM2ForCausalLM", tensors, config)


def internvl2_5_1b(folder: Path, seed: int = 25) -> Checkpoint:
    """OpenGVLab/InternVL2_5-1B's structure: InternViT-300M-448px-V2_5 + mlp1 + Qwen2.5-0.5B-Instruct, tiny."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, ids = _qwen2_tokenizer(folder)
    llm = {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": ids["<|endoftext|>"],
           "eos_token_id": ids["<|im_end|>"], "hidden_act": "silu", "hidden_size": 64, "intermediate_size": 128,
           "max_position_embeddings": 4096, "max_window_layers": 2, "model_type": "qwen2",
           "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
           "rope_theta": 1000000.0, "sliding_window": 4096, "tie_word_embeddings": False, "torch_dtype": "float16",
           "use_cache": True, "use_sliding_window": False, "vocab_size": vocab}
    config = _chat_config(llm, "internvl2_5", seed)
    rng = np.random.default_rng(seed)
    tensors = _vision_tensors(rng, VISION, llm["hidden_size"]) | _qwen2_tensors(rng, llm)
    _write(folder, config, tensors)
    return Checkpoint(folder, "Qwen2ForCausalLM", tensors, config)


BUILDERS = {"InternVL2-8B": internvl2_8b, "InternVL2.5-1B": internvl2_5_1b}
