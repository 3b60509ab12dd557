"""The toy show's trained tokenizers: llama.cpp tokenizes as the trainer does, and the prompt gets short.

Both kinds (byte-level BPE and SentencePiece-style) are trained on bbsd's prompt for the toy cast and a few
replies (train/toktrain.py), written into the text GGUF by bbsd.models.gguf_pair, and read back by bbsd's
llama Context: its tokens for the rendered chat and for a reply must be the trainer's own (`encoder`), id
for id. Skips without the `convert` extra (tokenizers, torch).
"""

from __future__ import annotations

import dataclasses

import pytest

from bbsd.models import gguf_pair, tiny
from bbsd.models.gguf_pair import TinySpec


@pytest.fixture(scope="module", params=["bpe", "spm"])
def trained(request, tmp_path_factory):
    """(kind, the trainer's tokenizer, bbsd's llama Context on a pair with that vocabulary, chat, replies)."""
    pytest.importorskip("tokenizers")
    pytest.importorskip("torch")
    from bbsd.engine.llama.native import Context
    from bbsd.study import toyshow
    from train import toktrain, toyvlm

    p = toyvlm.toy_prompt()
    truths = []
    for i in range(40):
        photo = toyshow.render_photo(3, i, (64, 48))
        names = [item.name for item in photo.items]
        kinds = {c.name: c.kind for c in toyshow.CAST}
        truths.append({"characters": [n for n in names if kinds[n] == "character"],
                       "props": [n for n in names if kinds[n] == "prop"],
                       "caption": photo.caption, "scene": photo.scene})
    spec = dataclasses.replace(TinySpec(), tokenizer=request.param,
                               merges=toktrain.train_merges(request.param, toyvlm.corpus(p, truths[:30])))
    folder = tmp_path_factory.mktemp(request.param)
    text, mmproj = tiny.write_pair(folder, spec)
    ctx = Context(text, mmproj, n_ctx=4096, n_batch=512, threads=2, gpu_layers=0, flash_attention=False)
    yield request.param, toktrain.encoder(spec), ctx, toyvlm.chat_text(p, ctx.marker), \
        [toyvlm.reply_text(t) for t in truths]
    ctx.close()


def _llama(ctx, text: str) -> list[int]:
    with ctx.tokenize(text, []) as chunks:
        return [t for c in chunks.items for t in c.tokens]


def test_llama_cpp_tokenizes_the_prompt_as_the_trainer_does(trained):
    kind, enc, ctx, chat, _ = trained
    before, after = chat.split(ctx.marker)
    for text in (before, after):
        assert _llama(ctx, text) == enc.encode(text).ids
    # the prompt's words are whole tokens: a few hundred for 1,500 bytes (was about a token a byte)
    assert len(enc.encode(before).ids) < len(before) / 3


def test_llama_cpp_tokenizes_replies_as_the_trainer_does(trained):
    kind, enc, ctx, _, replies = trained
    for reply in replies:  # the last ten were not in the tokenizer's corpus
        ids = enc.encode(reply).ids
        assert _llama(ctx, reply) == ids
        assert "".join(ctx.piece(t).decode() for t in ids).replace(gguf_pair.SPM_SPACE, " ").strip() == reply


def test_a_trained_vocabulary_is_written_with_its_merges_and_the_default_one_is_unchanged():
    pytest.importorskip("tokenizers")
    from train import toktrain

    merges = toktrain.train_merges("bpe", ["the stage, the stage, the puppet"] * 3)
    spec = TinySpec(merges=merges)
    tokens = gguf_pair.vocabulary(spec)
    assert "Ġstage" in tokens and tokens[:256] == gguf_pair.byte_level_alphabet()
    assert gguf_pair.bpe_vocab(TinySpec())[0][256:264] == ["".join(m.split(" ")) for m in gguf_pair.MERGES]
    assert toktrain.train_merges("bpe", ["the stage, the stage, the puppet"] * 3) == merges  # deterministic
