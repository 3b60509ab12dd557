"""Train the toy VLM on the toy show, with bbsd's own prompt and reply format; write its weights as a .npz.

    PYTHONPATH=. .venv/bin/python -m train.toyvlm OUT.npz --steps 20 --photos 8

Invariants: seeded (the same arguments give the same weights on the same torch build); the model sees what
bbsd gives llama.cpp — the chat rendered by the GGUF's template as bbsd's engine renders it for the LLaVA
family (system turn; the image, then the instruction), tokenized by llama.cpp itself, and the photo as bbsd's
decoder and libmtmd prepare it (`bbsd.models.twin.pixels`); the loss is on the reply's tokens only (the compact JSON
the reply grammar admits, then `<|im_end|>`). CPU (2 threads by default) or `--device cuda`. Needs torch (the
`convert` extra).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from bbsd import logs
from bbsd.engine import prompt as prompt_mod
from bbsd.engine.labels import CAPTION_MAX, SCENE_MAX
from bbsd.errors import ConfigError
from bbsd.models import gguf_pair
from bbsd.models import twin as toy
from bbsd.models.gguf_pair import TinySpec
from bbsd.photo import decode
from bbsd.show import catalog as catalog_mod
from bbsd.study import toyshow
from train import prefix as shared
from train import toktrain
from train.twin import ToyVLM, seeded

# 8x8-pixel patches on 96 px (144 image tokens): the 192x128 photo letterboxed to 96x64, a prop 10-20 px
# tall; llama.cpp runs v_layer - 1 = 2 ViT blocks (bbsd/models/twin.py)
SPEC = TinySpec(n_embd=96, n_head=4, n_layer=2, n_ff=256, v_embd=64, v_head=4, v_layer=3, v_ff=128,
                image_size=96, patch_size=8)
PHOTO_SIZE = (192, 128)  # rendered; letterboxed to the spec's image size as libmtmd does
MAX_SIDE = 768  # [engine] image_max_side's default: bbsd's decoder hands the model at most this
log = structlog.get_logger("bbsd.train")


def toy_prompt() -> prompt_mod.Prompt:
    """bbsd's prompt for the toy show's cast (the catalog `toyshow.catalog_toml` writes)."""
    def fail(key: str, problem: str, hint: str) -> Exception:
        return ConfigError(f"toy show catalog: {key} {problem}", hint)

    return prompt_mod.build(catalog_mod.parse(tomllib.loads(toyshow.catalog_toml()), fail))


def chat_text(p: prompt_mod.Prompt, marker: str) -> str:
    """The chat as bbsd's llama engine renders it for the `mlp` family (engine._render): a system turn, then
    the user's image marker and instruction, then the assistant's turn opened."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
        gguf_pair.CHAT_TEMPLATE)
    parts = [{"type": "text", "text": marker + "\n"}, {"type": "text", "text": p.user}]
    messages = [{"role": "system", "content": p.system}, {"role": "user", "content": parts}]
    return template.render(messages=messages, add_generation_prompt=True)


def reply_text(truth: dict) -> str:
    """The reply the grammar admits for a photo's truth (a line of the toy show's manifest): compact JSON
    in the schema's key order."""
    reply = {"characters": truth["characters"], "props": truth["props"], "caption": truth["caption"][:CAPTION_MAX],
             "scene": truth["scene"][:SCENE_MAX], "visible_text": []}
    return json.dumps(reply, ensure_ascii=False, separators=(",", ":"))


def show_photos(folder: Path, seed: int, n: int, max_side: int = MAX_SIDE) -> list[tuple[Image.Image, dict]]:
    """Toy show `seed` rendered to camera-like JPEGs (EXIF orientations 1/3/6/8) and decoded by bbsd's own
    decoder, as the pipeline hands photos to the model: (image, truth) each."""
    manifest = toyshow.render_show(folder, seed, n, PHOTO_SIZE, orientations=(1, 3, 6, 8))
    truths = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    return [(decode.decode(folder / t["file"], max_side).image, t) for t in truths]


@dataclass(frozen=True)
class Example:
    pieces: list[torch.Tensor]  # token ids (long) and the image's pixels (float), in order
    reply: torch.Tensor  # the reply's token ids, `<|im_end|>` last
    present: torch.Tensor  # 1.0 for each of the cast (toyshow.CAST's order) in the photo


def present(truth: dict) -> torch.Tensor:
    names = set(truth["characters"]) | set(truth["props"])
    return torch.tensor([1.0 if c.name in names else 0.0 for c in toyshow.CAST])


class Probe(nn.Module):
    """Training-only: which of the cast an image holds, read from its embeddings (the text model's input) by
    a linear layer and the strongest patch. Its loss teaches the ViT and projector to make the cast visible
    in the embeddings sooner than the reply's loss alone does; it is not exported (llama.cpp never runs it)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.head = nn.Linear(d, len(toyshow.CAST))

    def loss(self, images: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self.head(images).amax(1), present)


class Tokenizer:
    """llama.cpp's own tokenizer for the spec's vocabulary, through bbsd's llama Context on a pair of
    this spec (its weights do not matter: only the vocabulary and libmtmd's chunking are used)."""

    def __init__(self, spec: TinySpec, folder: Path) -> None:
        from bbsd.engine.llama import log as llama_log
        from bbsd.engine.llama.native import Context

        llama_log.install()  # llama.cpp's and libmtmd's lines go to bbsd's structured log, not stdout
        self.spec = spec
        text, mmproj = toy.write_pair(folder, spec, *seeded(spec, len(gguf_pair.vocabulary(spec)), 0).gguf_tensors())
        self._ctx = Context(text, mmproj, n_ctx=4096, n_batch=512, threads=2, gpu_layers=0, flash_attention=False)
        self.marker = self._ctx.marker
        self.eos = gguf_pair.vocabulary(spec).index("<|im_end|>")

    def example(self, chat: str, image: Image.Image, truth: dict) -> Example:
        with self._ctx.tokenize(chat, [("photo", image)]) as chunks:
            pieces = [torch.tensor(c.tokens) if c.is_text else torch.from_numpy(toy.pixels(image, self.spec))
                      for c in chunks.items]
        reply = self._ctx.tokens(reply_text(truth))
        if reply is None:
            raise ValueError(f"the reply for {truth['file']} has no exact tokens")
        return Example(pieces, torch.tensor([*reply, self.eos]), present(truth))

    def close(self) -> None:
        self._ctx.close()


def _to(ex: Example, device: str) -> Example:
    return Example([p.to(device) for p in ex.pieces], ex.reply.to(device), ex.present.to(device))


def reply_loss(model: ToyVLM, batch: Sequence[Example]) -> torch.Tensor:
    """Mean cross-entropy of the replies' tokens given the prompt and the reply so far (teacher forcing); the
    prompts' own tokens carry no loss. The sequences are padded at the end: attention is causal, so no real
    token sees the padding, and each example's logits are those it has alone."""
    seqs = [model.embed([*ex.pieces, ex.reply[:-1]]) for ex in batch]
    longest = max(len(s) for s in seqs)
    logits = model.text(torch.stack([F.pad(s, (0, 0, 0, longest - len(s))) for s in seqs]))
    rows = torch.cat([logits[i, len(s) - len(ex.reply):len(s)]  # the rows that predict the reply's tokens
                      for i, (s, ex) in enumerate(zip(seqs, batch, strict=True))])
    return F.cross_entropy(rows, torch.cat([ex.reply for ex in batch]))


def corpus(p: prompt_mod.Prompt, truths: Sequence[dict]) -> list[str]:
    """What the tokenizers are trained on: the prompt's texts (twice, so their words pass the trainer's
    minimum count) and the training photos' replies."""
    return [p.system, p.user] * 2 + [reply_text(t) for t in truths]


def schedule(step: int, steps: int, warmup: int = 20) -> float:
    """The learning rate's factor: linear warm-up, then a cosine down to a tenth."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(out: Path, steps: int, photos: int, seed: int, lr: float, batch: int = 8,
          spec: TinySpec = SPEC, probe_weight: float = 1.0, device: str = "cpu",
          save_every: int = 0, threads: int = 2) -> list[float]:
    """Train on `photos` photos of the toy show `seed` (`show_photos`) for `steps` steps of `batch` photos
    (shuffled each epoch, seeded), with a tokenizer trained on the prompt and those photos' replies
    (`toktrain`); write the weights to `out` (.npz, bbsd.models.twin), also every `save_every` steps (a
    run cut short still leaves its latest weights). Returns the losses."""
    torch.manual_seed(seed)
    if device == "cpu":
        torch.set_num_threads(threads)
    chat_prompt = toy_prompt()
    with tempfile.TemporaryDirectory() as tmp:
        shown = show_photos(Path(tmp) / "show", seed, photos)
        if not spec.merges:
            merges = toktrain.train_merges(spec.tokenizer, corpus(chat_prompt, [t for _, t in shown]))
            spec = dataclasses.replace(spec, merges=merges)
        tok = Tokenizer(spec, Path(tmp) / "pair")
        try:
            chat = chat_text(chat_prompt, tok.marker)
            examples = [tok.example(chat, image, truth) for image, truth in shown]
        finally:
            tok.close()
    n_image = (spec.image_size // spec.patch_size) ** 2
    log.info("train.examples", photos=photos, vocabulary=len(gguf_pair.vocabulary(spec)),
             tokens=[sum(len(p) if not p.is_floating_point() else n_image for p in e.pieces) + len(e.reply)
                     for e in examples][:8])
    head = examples[0].pieces[0]  # the system turn: the same tokens before every photo (prefix.py)
    if not all(torch.equal(e.pieces[0], head) for e in examples):
        raise ValueError("the examples' prompts differ before the image")
    examples = [_to(e, device) for e in examples]
    head = head.to(device)
    model = seeded(spec, len(gguf_pair.vocabulary(spec)), seed).to(device)  # initialised on the CPU: same start
    probe = Probe(spec.n_embd).to(device)
    opt = torch.optim.AdamW([*model.parameters(), *probe.parameters()], lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: schedule(s, steps))
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    losses, began = [], time.monotonic()
    for step in range(steps):
        start = time.monotonic()
        picks = [examples[order[(step * batch + j) % len(examples)]] for j in range(batch)]
        loss, images = shared.reply_loss_and_images(model, head, [e.pieces[1:] for e in picks],
                                                    [e.reply for e in picks])
        seen = probe.loss(images, torch.stack([e.present for e in picks]))
        (loss + probe_weight * seen).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        sched.step()
        losses.append(loss.item())
        if (step + 1) * batch // len(examples) != step * batch // len(examples):  # a new epoch: reshuffle
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed + step)).tolist()
        log.info("train.step", step=step, loss=round(losses[-1], 4), probe=round(seen.item(), 4),
                 seconds=round(time.monotonic() - start, 3),
                 elapsed=round(time.monotonic() - began))
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            toy.save(out, spec, *model.gguf_tensors())
            log.info("train.checkpoint", path=str(out), step=step + 1)
    toy.save(out, spec, *model.gguf_tensors())
    log.info("train.saved", path=str(out), steps=steps, loss=round(losses[-1], 4) if losses else None)
    return losses


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.toyvlm", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="where to write the weights (.npz)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--photos", type=int, default=8, help="training photos (toy show seed --seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch", type=int, default=8, help="photos a step")
    parser.add_argument("--tokenizer", choices=["bpe", "spm"], default="bpe",
                        help="the vocabulary: byte-level BPE or SentencePiece-style, trained on the prompt and replies")
    parser.add_argument("--image-size", type=int, default=SPEC.image_size)
    parser.add_argument("--patch-size", type=int, default=SPEC.patch_size)
    parser.add_argument("--embd", type=int, default=SPEC.n_embd, help="the text model's width")
    parser.add_argument("--layers", type=int, default=SPEC.n_layer, help="the text model's blocks")
    parser.add_argument("--v-embd", type=int, default=SPEC.v_embd, help="the ViT's width")
    parser.add_argument("--v-layers", type=int, default=SPEC.v_layer, help="the ViT's blocks (one is never run)")
    parser.add_argument("--probe", type=float, default=1.0, help="weight of the training-only probe's loss (Probe)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu (2 threads) or cuda")
    parser.add_argument("--save-every", type=int, default=0, help="also write the weights every N steps")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (the sums' order, so the last bits, "
                        "follow it: the same count gives the same weights)")
    args = parser.parse_args(argv)
    logs.configure("info", "console")
    spec = dataclasses.replace(SPEC, tokenizer=args.tokenizer, image_size=args.image_size, patch_size=args.patch_size,
                               n_embd=args.embd, n_layer=args.layers, n_ff=args.embd * 8 // 3 // 32 * 32 or 64,
                               v_embd=args.v_embd, v_layer=args.v_layers, v_ff=args.v_embd * 2)
    train(args.out, args.steps, args.photos, args.seed, args.lr, args.batch, spec, args.probe, args.device,
          args.save_every, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
