"""What bbsd adds to llama.cpp's converter for InternVL checkpoints (imported only in the child process).

llama.cpp's `InternVisionModel` converts the vision side of every InternVL checkpoint as it is, and its
TextModel base already drops `vision_model.*` and `mlp1.*` from the text side. Two things stop the text
side of the published checkpoints, and each gets the smallest subclass that fixes it:

* InternLM2 backbones (InternVL2-2B/8B/26B, InternVL2.5-2B/8B/26B): `config.json` counts InternVL's nine
  image tokens (<img>, <IMG_CONTEXT>, ...) in `vocab_size`, but they live in `added_tokens.json`, not in
  `tokenizer.model`; `InternLM2Model.set_vocab` asks SentencePiece for every id up to `vocab_size` and
  fails with "piece id is out of range". The subclass walks SentencePiece's own ids and lets the stock
  code append the added tokens after them (and checks that the result has `vocab_size` entries).
  Its special tokens (bos, eos) are in `llm_config`, where llama.cpp's SpecialVocab does not look
  (it reads `text_config`), so the subclass points it there too.
* Vision side: checkpoints without `preprocessor_config.json` get InternVL's own normalisation
  (ImageNet mean and std, what InternVL's `build_transform` uses) instead of a KeyError.
* Qwen2 backbones (InternVL2-1B, InternVL2.5-1B/4B, InternVL3): llama.cpp names a BPE pre-tokenizer by a
  hash of how the whole vocabulary splits a test string, so any tokenizer it has not seen (a fine-tune
  that added tokens, a pruned vocabulary) is refused. When the hash is unknown, the subclass names the
  pre-tokenizer by what `tokenizer.json` declares: Qwen2's split regex means "qwen2".
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gguf
import torch
from conversion.internlm import InternLM2Model
from conversion.internvl import InternVisionModel
from conversion.qwen import Qwen2Model

log = logging.getLogger("bbsd.convert")

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


class InternVLInternLM2Model(InternLM2Model):
    """InternLM2 text side of an InternVL checkpoint: SentencePiece ids first, then the added image tokens."""

    model_arch = InternLM2Model.model_arch  # llama.cpp's base class wants it spelled out in each subclass

    def set_vocab(self) -> None:
        from sentencepiece import SentencePieceProcessor

        declared = self.hparams["vocab_size"]
        n_sp = SentencePieceProcessor(model_file=str(self.dir_model / "tokenizer.model")).vocab_size()
        self.hparams["vocab_size"] = min(declared, n_sp)  # the stock loop then stays inside tokenizer.model
        stock = gguf.SpecialVocab
        gguf.SpecialVocab = LlmConfigSpecialVocab  # InternLM2Model.set_vocab builds it by this module attribute
        try:
            super().set_vocab()
        finally:
            self.hparams["vocab_size"], gguf.SpecialVocab = declared, stock
        n_tokens = len(self.gguf_writer.kv_data[0]["tokenizer.ggml.tokens"].value)
        if n_tokens != declared:
            raise ValueError(f"vocabulary has {n_tokens} tokens (tokenizer.model {n_sp} + added_tokens.json), "
                             f"config.json says vocab_size {declared}")


class LlmConfigSpecialVocab(gguf.SpecialVocab):
    """Special token ids from config.json's `llm_config` when neither the root nor `text_config` has them."""

    def _try_load_from_config_json(self, path: Path) -> bool:
        found = super()._try_load_from_config_json(path)
        if found:
            llm = json.loads((path / "config.json").read_text(encoding="utf-8")).get("llm_config", {})
            for typ in self.special_token_types:
                if typ not in self.special_token_ids:
                    self._set_special_token(typ, llm.get(f"{typ}_token_id"))
        return found


class InternVLVisionModel(InternVisionModel):
    """InternViT + mlp1; InternVL's own image normalisation when the checkpoint does not state it."""

    model_arch = InternVisionModel.model_arch

    def set_gguf_parameters(self) -> None:
        self.preprocessor_config.setdefault("image_mean", IMAGENET_MEAN)
        self.preprocessor_config.setdefault("image_std", IMAGENET_STD)
        super().set_gguf_parameters()


class InternVLQwen2Model(Qwen2Model):
    """Qwen2 text side of an InternVL checkpoint: an unknown tokenizer hash falls back to its declared split."""

    model_arch = Qwen2Model.model_arch

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return super().get_vocab_base_pre(tokenizer)
        except NotImplementedError:
            if declared_split(self.dir_model) == QWEN2_SPLIT:
                log.warning("tokenizer hash unknown to llama.cpp; tokenizer.json declares Qwen2's split: qwen2")
                return "qwen2"
            raise


def declared_split(folder: Path) -> str | None:
    """The regex of tokenizer.json's Split pre-tokenizer, if it has one."""
    pre = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    for step in pre.get("pretokenizers", [pre]):
        if step.get("type") == "Split":
            return step.get("pattern", {}).get("Regex")
    return None


TEXT_CLASSES = {"InternLM2ForCausalLM": InternVLInternLM2Model, "Qwen2ForCausalLM": InternVLQwen2Model}
OUTTYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
            "f32": gguf.LlamaFileType.ALL_F32, "auto": gguf.LlamaFileType.GUESSED}


def convert(kind: str, src: Path, out: Path, outtype: str, name: str | None) -> None:
    """Write one GGUF: the text model (`kind="text"`) or the vision projector (`kind="mmproj"`)."""
    from conversion import ModelBase

    hparams = ModelBase.load_hparams(src, False)
    cls = InternVLVisionModel if kind == "mmproj" else TEXT_CLASSES[hparams["llm_config"]["architectures"][0]]
    with torch.inference_mode():
        model = cls(src, OUTTYPES[outtype], out, model_name=name)
        model.write()
