"""The PyTorch twin of the tiny LLaVA-style pair: the same computation llama.cpp runs on its GGUFs.

Invariant: for the same weights, the same tokens and the same pixels (`bbsd.models.twin.pixels`), the
twin's next-token logits are llama.cpp's (tests/models/test_twin.py measures it). Every place where
llama.cpp's graph differs from a textbook CLIP/LLaVA is copied here on purpose, not "fixed"; the list is
in bbsd/models/twin.py's docstring. Parameters carry llama.cpp's tensor names through `gguf_tensors`.
Needs torch (the `convert` extra); bbsd itself never imports this module.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bbsd.models.gguf_pair import TinySpec


def gelu(x: torch.Tensor) -> torch.Tensor:
    """ggml_gelu: the tanh approximation (clip.cpp with `use_gelu`, and the `mlp` projector)."""
    return F.gelu(x, approximate="tanh")


class VitBlock(nn.Module):
    """A CLIP encoder layer: pre-LayerNorm attention with biases, pre-LayerNorm GELU MLP, two residuals."""

    def __init__(self, e: int, heads: int, ff: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(e, eps=1e-5), nn.LayerNorm(e, eps=1e-5)
        self.q, self.k, self.v, self.out = (nn.Linear(e, e) for _ in range(4))
        self.up, self.down = nn.Linear(e, ff), nn.Linear(ff, e)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape
        h = self.ln1(x)
        q, k, v = (p(h).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        att = F.scaled_dot_product_attention(q, k, v)  # no mask, scale 1/sqrt(d_head)
        x = x + self.out(att.transpose(1, 2).reshape(b, n, e))
        return x + self.down(gelu(self.up(self.ln2(x))))


class VisionTower(nn.Module):
    """CLIP ViT + LLaVA's `mlp` projector, as clip.cpp's build_llava computes it: pixels (B, 3, S, S) →
    (B, n_patches, n_embd) embeddings that take the place of the image in the text model's input."""

    def __init__(self, spec: TinySpec) -> None:
        super().__init__()
        e, p = spec.v_embd, spec.patch_size
        self.n_patches = (spec.image_size // p) ** 2
        self.patch = nn.Conv2d(3, e, p, stride=p, bias=False)
        self.cls = nn.Parameter(torch.randn(e) * 0.02)
        self.pos = nn.Parameter(torch.randn(self.n_patches + 1, e) * 0.02)
        self.pre_ln = nn.LayerNorm(e, eps=1e-5)
        self.blocks = nn.ModuleList(VitBlock(e, spec.v_head, spec.v_ff) for _ in range(spec.v_layer))
        self.mm0, self.mm2 = nn.Linear(e, spec.n_embd), nn.Linear(spec.n_embd, spec.n_embd)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch(pixels).flatten(2).transpose(1, 2)  # (B, n_patches, e), patches row by row
        x = torch.cat([x, self.cls.expand(x.shape[0], 1, -1)], 1) + self.pos  # class token last
        x = self.pre_ln(x)
        for block in self.blocks[:-1]:  # llama.cpp's default feature layer: the last block never runs
            x = block(x)
        return self.mm2(gelu(self.mm0(x[:, 1:])))  # every patch but the first, then the class token


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """llama.cpp's rope type NORM: (B, heads, T, hd), pairs of adjacent dimensions rotated by pos * base^(-2i/hd)."""
    t, hd = x.shape[-2], x.shape[-1]
    inv = base ** (-torch.arange(0, hd, 2, dtype=torch.float32, device=x.device) / hd)
    ang = torch.arange(t, dtype=torch.float32, device=x.device)[:, None] * inv  # (T, hd/2)
    cos, sin = ang.cos(), ang.sin()
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).flatten(-2)


class LlamaBlock(nn.Module):
    def __init__(self, spec: TinySpec) -> None:
        super().__init__()
        d, self.heads, self.kv = spec.n_embd, spec.n_head, spec.n_head_kv or spec.n_head
        d_kv = d // self.heads * self.kv
        self.attn_norm, self.ffn_norm = RMSNorm(d), RMSNorm(d)
        self.q, self.k = nn.Linear(d, d, bias=False), nn.Linear(d, d_kv, bias=False)
        self.v, self.o = nn.Linear(d, d_kv, bias=False), nn.Linear(d, d, bias=False)
        self.gate, self.up = nn.Linear(d, spec.n_ff, bias=False), nn.Linear(d, spec.n_ff, bias=False)
        self.down = nn.Linear(spec.n_ff, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.attn_norm(x)
        q = rope(self.q(h).view(b, t, self.heads, -1).transpose(1, 2))
        k = rope(self.k(h).view(b, t, self.kv, -1).transpose(1, 2))
        v = self.v(h).view(b, t, self.kv, -1).transpose(1, 2)
        if self.kv != self.heads:
            k, v = (z.repeat_interleave(self.heads // self.kv, 1) for z in (k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(att.transpose(1, 2).reshape(b, t, d))
        h = self.ffn_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class LlamaText(nn.Module):
    """llama.cpp's `llama` architecture: embeddings, blocks, RMSNorm, an untied output layer."""

    def __init__(self, spec: TinySpec, n_vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_vocab, spec.n_embd)
        self.blocks = nn.ModuleList(LlamaBlock(spec) for _ in range(spec.n_layer))
        self.norm = RMSNorm(spec.n_embd)
        self.output = nn.Linear(spec.n_embd, n_vocab, bias=False)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """(B, T, d) input embeddings (tokens' and images') → (B, T, n_vocab) logits; positions 0 … T-1."""
        for block in self.blocks:
            embeds = block(embeds)
        return self.output(self.norm(embeds))


class ToyVLM(nn.Module):
    """The pair: a prompt is pieces, token ids (1-D long) or an image's pixels (3, S, S), in order."""

    def __init__(self, spec: TinySpec, n_vocab: int) -> None:
        super().__init__()
        self.spec = spec
        self.vision, self.text = VisionTower(spec), LlamaText(spec, n_vocab)

    def embed(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        """(T, d): each piece's embeddings, one after the other (an image takes n_patches positions)."""
        parts = [self.vision(p[None])[0] if p.is_floating_point() else self.text.embed(p) for p in pieces]
        return torch.cat(parts, 0)

    def forward(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        return self.text(self.embed(pieces)[None])[0]

    def gguf_tensors(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(text, mmproj) tensors under llama.cpp's names, as numpy float32 (for bbsd.models.twin)."""
        text = {name: _np(t) for name, t in _text_named(self.text)}
        return text, {name: _np(t) for name, t in _vision_named(self.vision)}


def from_gguf_tensors(spec: TinySpec, text: dict[str, np.ndarray], mmproj: dict[str, np.ndarray]) -> ToyVLM:
    """The twin holding these tensors (`bbsd.models.twin.load`'s): the inverse of `gguf_tensors`."""
    model = ToyVLM(spec, len(text["token_embd.weight"]))
    with torch.no_grad():
        for tensors, named in ((text, _text_named(model.text)), (mmproj, _vision_named(model.vision))):
            for name, param in named:
                param.copy_(torch.from_numpy(np.asarray(tensors[name], np.float32)))
    return model


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().copy()


def _text_named(m: LlamaText) -> list[tuple[str, torch.Tensor]]:
    """Every parameter of the text model with its llama.cpp name: one table for export and import."""
    out = [("token_embd.weight", m.embed.weight), ("output_norm.weight", m.norm.weight),
           ("output.weight", m.output.weight)]
    names = {"attn_norm": "attn_norm", "q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output",
             "ffn_norm": "ffn_norm", "gate": "ffn_gate", "up": "ffn_up", "down": "ffn_down"}
    for i, block in enumerate(m.blocks):
        out += [(f"blk.{i}.{name}.weight", getattr(block, attr).weight) for attr, name in names.items()]
    return out


def _vision_named(m: VisionTower) -> list[tuple[str, torch.Tensor]]:
    """Every parameter of the vision tower and projector with its llama.cpp name."""
    out = [("v.patch_embd.weight", m.patch.weight), ("v.class_embd", m.cls), ("v.position_embd.weight", m.pos),
           ("v.pre_ln.weight", m.pre_ln.weight), ("v.pre_ln.bias", m.pre_ln.bias)]
    names = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "out": "attn_out", "ln1": "ln1", "ln2": "ln2",
             "up": "ffn_up", "down": "ffn_down"}
    for i, block in enumerate(m.blocks):
        for attr, name in names.items():
            out += [(f"v.blk.{i}.{name}.{kind}", getattr(getattr(block, attr), kind)) for kind in ("weight", "bias")]
    for attr, name in (("mm0", "mm.0"), ("mm2", "mm.2")):
        out += [(f"{name}.{kind}", getattr(getattr(m, attr), kind)) for kind in ("weight", "bias")]
    return out


def seeded(spec: TinySpec, n_vocab: int, seed: int) -> ToyVLM:
    """A twin with seeded random weights; LayerNorm/RMSNorm gains and biases randomised too, so an export
    that swaps or drops one of them shows in the logits."""
    torch.manual_seed(seed)
    model = ToyVLM(spec, n_vocab)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and name != "vision.cls":
                p.copy_((1.0 if name.endswith(".weight") else 0.0) + 0.1 * torch.randn_like(p))
    return model

