"""The reply loss of a batch whose examples share their opening tokens, with that prefix computed once.

Invariant: the same loss as running each example whole through the twin (train/twin.py) — attention is
causal, so the shared prefix's hidden states are the same in every example; only the rest (the image, the
instruction, the reply) is computed per example, attending to the prefix's keys and values at its
positions. bbsd's prompt puts the system text and the catalog (most of the tokens) before the image, so a
step costs about what the photo-specific part costs. The logits are computed for the reply's rows only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from train.twin import LlamaBlock, ToyVLM, rope


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    b, t, _ = x.shape
    return x.view(b, t, n, -1).transpose(1, 2)


def _rope_from(x: torch.Tensor, start: int) -> torch.Tensor:
    """RoPE at positions start … start+T-1 (twin.rope counts from 0)."""
    if start == 0:
        return rope(x)
    return rope(F.pad(x, (0, 0, start, 0)))[..., start:, :]


def _block(blk: LlamaBlock, xp: torch.Tensor, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One llama block on the prefix (1, P, d) and the examples' rests (B, S, d)."""
    p, (b, s, d) = xp.shape[1], xs.shape
    hp, hs = blk.attn_norm(xp), blk.attn_norm(xs)
    qp, kp, vp = rope(_heads(blk.q(hp), blk.heads)), rope(_heads(blk.k(hp), blk.kv)), _heads(blk.v(hp), blk.kv)
    qs = _rope_from(_heads(blk.q(hs), blk.heads), p)
    ks, vs = _rope_from(_heads(blk.k(hs), blk.kv), p), _heads(blk.v(hs), blk.kv)
    k = torch.cat([kp.expand(b, -1, -1, -1), ks], 2)
    v = torch.cat([vp.expand(b, -1, -1, -1), vs], 2)
    if blk.kv != blk.heads:
        kp, vp, k, v = (z.repeat_interleave(blk.heads // blk.kv, 1) for z in (kp, vp, k, v))
    mask = torch.ones(s, p + s, dtype=torch.bool, device=xs.device)
    mask[:, p:] = torch.ones(s, s, dtype=torch.bool, device=xs.device).tril()
    att_p = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)
    att_s = F.scaled_dot_product_attention(qs, k, v, attn_mask=mask)
    xp = xp + blk.o(att_p.transpose(1, 2).reshape(1, p, d))
    xs = xs + blk.o(att_s.transpose(1, 2).reshape(b, s, d))
    hp, hs = blk.ffn_norm(xp), blk.ffn_norm(xs)
    return (xp + blk.down(F.silu(blk.gate(hp)) * blk.up(hp)),
            xs + blk.down(F.silu(blk.gate(hs)) * blk.up(hs)))


def reply_loss(model: ToyVLM, prefix: torch.Tensor, rests: Sequence[Sequence[torch.Tensor]],
               replies: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of the replies' tokens (teacher forcing) for examples `prefix` + rest + reply,
    where `prefix` is token ids and each rest is pieces (token ids or an image's pixels)."""
    return reply_loss_and_images(model, prefix, rests, replies)[0]


def reply_loss_and_images(model: ToyVLM, prefix: torch.Tensor, rests: Sequence[Sequence[torch.Tensor]],
                          replies: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """`reply_loss`, and the images' embeddings as the text model gets them (n_images, n_patches, d); the
    ViT runs once on all of the batch's images."""
    xp = model.text.embed(prefix)[None]
    pixels = [p for rest in rests for p in rest if p.is_floating_point()]
    images = model.vision(torch.stack(pixels)) if pixels else torch.zeros(0, device=prefix.device)
    it = iter(images)
    seqs = [torch.cat([next(it) if p.is_floating_point() else model.text.embed(p) for p in [*rest, reply[:-1]]])
            for rest, reply in zip(rests, replies, strict=True)]
    longest = max(len(x) for x in seqs)
    xs = torch.stack([F.pad(x, (0, 0, 0, longest - len(x))) for x in seqs])  # padding after: never attended
    for blk in model.text.blocks:
        xp, xs = _block(blk, xp, xs)
    rows = torch.cat([xs[i, len(x) - len(r):len(x)] for i, (x, r) in enumerate(zip(seqs, replies, strict=True))])
    return F.cross_entropy(model.text.output(model.text.norm(rows)), torch.cat(list(replies))), images
