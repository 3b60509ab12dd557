"""A straightforward numpy forward pass of the checkpoint's text model, as Hugging Face's code computes it.

Written from the model definitions (modeling_internlm2.py, modeling_qwen2.py), not from llama.cpp: the
fused `wqkv` is split the InternLM2 way (per key/value group: its query heads, then one key, one value)
and RoPE rotates halves (`rotate_half`). A converter that splits or permutes differently gives other logits.
"""

from __future__ import annotations

import numpy as np


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, theta: float) -> np.ndarray:
    """x: (tokens, heads, head_dim); HF's rotate_half layout."""
    n, _, hd = x.shape
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = np.outer(np.arange(n), inv)
    cos, sin = np.cos(np.concatenate([ang, ang], -1))[:, None], np.sin(np.concatenate([ang, ang], -1))[:, None]
    half = hd // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    n, nh, hd = q.shape
    rep = nh // k.shape[1]
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
    scores = np.where(np.tril(np.ones((n, n), bool)), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", p, v).reshape(n, nh * hd)


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def split_wqkv(wqkv: np.ndarray, c: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nh, nkv, d = c["num_attention_heads"], c["num_key_value_heads"], c["hidden_size"]
    hd, per = d // nh, nh // nkv
    g = wqkv.reshape(nkv, per + 2, hd, d)
    return g[:, :per].reshape(-1, d), g[:, -2].reshape(-1, d), g[:, -1].reshape(-1, d)


def internlm2_logits(t: dict[str, np.ndarray], c: dict, ids: list[int]) -> np.ndarray:
    w = {k.removeprefix("language_model."): v.astype(np.float64) for k, v in t.items()}
    nh, nkv, eps = c["num_attention_heads"], c["num_key_value_heads"], c["rms_norm_eps"]
    x = w["model.tok_embeddings.weight"][ids]
    n = len(ids)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, w[p + "attention_norm.weight"], eps)
        wq, wk, wv = split_wqkv(w[p + "attention.wqkv.weight"], c)
        q, k, v = (h @ wq.T).reshape(n, nh, -1), (h @ wk.T).reshape(n, nkv, -1), (h @ wv.T).reshape(n, nkv, -1)
        x = x + _attention(_rope(q, c["rope_theta"]), _rope(k, c["rope_theta"]), v) @ w[p + "attention.wo.weight"].T
        h = _rms(x, w[p + "ffn_norm.weight"], eps)
        ff = _silu(h @ w[p + "feed_forward.w1.weight"].T) * (h @ w[p + "feed_forward.w3.weight"].T)
        x = x + ff @ w[p + "feed_forward.w2.weight"].T
    return _rms(x, w["model.norm.weight"], eps) @ w["output.weight"].T


def qwen2_logits(t: dict[str, np.ndarray], c: dict, ids: list[int]) -> np.ndarray:
    w = {k.removeprefix("language_model."): v.astype(np.float64) for k, v in t.items()}
    nh, nkv, eps = c["num_attention_heads"], c["num_key_value_heads"], c["rms_norm_eps"]
    x = w["model.embed_tokens.weight"][ids]
    n = len(ids)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}.self_attn."
        h = _rms(x, w[f"model.layers.{i}.input_layernorm.weight"], eps)
        q, k, v = ((h @ w[p + f"{m}_proj.weight"].T + w[p + f"{m}_proj.bias"]) for m in "qkv")
        q, k, v = q.reshape(n, nh, -1), k.reshape(n, nkv, -1), v.reshape(n, nkv, -1)
        x = x + _attention(_rope(q, c["rope_theta"]), _rope(k, c["rope_theta"]), v) @ w[p + "o_proj.weight"].T
        m = f"model.layers.{i}.mlp."
        h = _rms(x, w[f"model.layers.{i}.post_attention_layernorm.weight"], eps)
        x = x + (_silu(h @ w[m + "gate_proj.weight"].T) * (h @ w[m + "up_proj.weight"].T)) @ w[m + "down_proj.weight"].T
    return _rms(x, w["model.norm.weight"], eps) @ w["lm_head.weight"].T


def reference_logits(ckpt, ids: list[int]) -> np.ndarray:
    c = ckpt.config["llm_config"]
    fn = internlm2_logits if ckpt.backbone == "InternLM2ForCausalLM" else qwen2_logits
    return fn({k: v for k, v in ckpt.tensors.items() if k.startswith("language_model.")}, c, ids)
