"""A toy model trained in PyTorch runs in llama.cpp as it ran in training.

The twin (train/twin.py) and llama.cpp, given the same weights (exported through bbsd.models.twin to the
GGUF pair), the same tokens and the same image (preprocessed by `twin.pixels` and by libmtmd), give the
same image embeddings and the same next-token logits. The torch-free half (the .npz and the GGUF writer)
is tested without torch; the rest skips without the `convert` extra.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image, ImageFilter

from bbsd.errors import ModelError
from bbsd.models import gguf_pair, registry, tiny
from bbsd.models import twin as toy
from bbsd.models.gguf_pair import TinySpec
from tests.conftest import sha256_of

# 8x8-pixel patches on a 64-px image (64 image tokens), three ViT blocks of which llama.cpp runs two
SPEC = TinySpec(n_embd=64, n_head=4, n_layer=2, n_ff=128, v_embd=32, v_head=2, v_layer=3, v_ff=64,
                image_size=64, patch_size=8)
# Measured (llama-cpp-python 0.3.36, CPU): image embeddings within 4e-4 of the twin's (ggml's GELU is an f16
# table), logits within 4e-5; both spread about 0.2-0.6. A textbook CLIP (class token first, every block)
# is off by about the spread itself.
TOLERANCE = 0.01  # image embeddings: of the spread (standard deviation) of the twin's values
# Logits: of their spread. Measured 5e-5 on a short prompt (spread 0.5), up to 3e-4 on the 1,500-token
# training prompt after 30 steps: nearly all of it is llama.cpp's f16 KV cache (bbsd's default); with an f32
# cache it is 4e-6. Another photo moves the logits by about 0.15 of their spread.
LOGIT_TOLERANCE = 0.001


def test_a_saved_toy_model_writes_the_bytes_of_the_arrays_it_came_from(tmp_path):
    """Arrays → .npz → GGUF pair is the random pair's writer: the same arrays give the same files, but for
    the mark that says which weights they hold (a toy's, the random pair's)."""
    text, mmproj = tiny.text_tensors(SPEC), tiny.mmproj_tensors(SPEC)
    npz = toy.save(tmp_path / "toy.npz", SPEC, dict(reversed(text.items())), mmproj)  # order does not matter
    got = toy.write_pair_from(npz, tmp_path / "from-npz")
    want = (gguf_pair.write_text(tmp_path / "text.gguf", SPEC, text, weights=gguf_pair.TOY),
            gguf_pair.write_mmproj(tmp_path / "mmproj.gguf", SPEC, mmproj, weights=gguf_pair.TOY))
    assert [sha256_of(p) for p in got] == [sha256_of(p) for p in want]
    random = tiny.write_pair(tmp_path / "random", SPEC)
    assert [registry.inspect(p).weights for p in (*got, *random)] == ["toy", "toy", "random", "random"]


@pytest.mark.parametrize("broken", ["missing", "shape"])
def test_a_toy_model_that_does_not_fit_its_spec_is_refused(tmp_path, broken):
    text, mmproj = tiny.text_tensors(SPEC), tiny.mmproj_tensors(SPEC)
    if broken == "missing":
        del mmproj["v.class_embd"]
    else:
        text["blk.1.ffn_up.weight"] = text["blk.1.ffn_up.weight"][:, :-1]
    with pytest.raises(ModelError, match="do not fit its spec"):
        toy.write_pair(tmp_path, SPEC, text, mmproj)
    assert not list(tmp_path.iterdir())


def test_a_square_image_of_the_model_size_is_only_normalised():
    img = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
    x = toy.pixels(img, SPEC)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 5, 7], (np.asarray(img)[5, 7] / 255.0 - 0.5) / 0.5, rtol=1e-6)


# --- the twin against llama.cpp -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(spec, seeded torch twin, open bbsd llama Context on its exported GGUFs), per tokenizer."""
    pytest.importorskip("torch")
    from bbsd.engine.llama.native import Context
    from train.twin import seeded

    made = {}

    def make(spec: TinySpec):
        if spec not in made:
            model = seeded(spec, len(gguf_pair.vocabulary(spec)), seed=0).eval()
            text, mmproj = toy.write_pair(tmp_path_factory.mktemp("twin"), spec, *model.gguf_tensors())
            ctx = Context(text, mmproj, n_ctx=512, n_batch=512, threads=2, gpu_layers=0, flash_attention=False)
            made[spec] = (model, ctx)
        return made[spec]

    yield make
    for _, ctx in made.values():
        ctx.close()


def _photo(size: tuple[int, int], seed: int) -> Image.Image:
    """Smooth random colours: a resize of noise would be the resampling filters' worst case, not a photo."""
    noise = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(noise).filter(ImageFilter.GaussianBlur(2))


def _llama_logits(ctx, spec: TinySpec, prompt: str, image: Image.Image) -> tuple[np.ndarray, list]:
    """llama.cpp's next-token logits after the prompt (its image at the marker), and the pieces it evaluated."""
    import torch

    ctx.forget_from(0)
    with ctx.tokenize(prompt.replace("<image>", ctx.marker), [("photo", image)]) as chunks:
        n_past = 0
        for i, chunk in enumerate(chunks.items):
            n_past = ctx.eval_chunk(chunk, n_past, logits_last=i == len(chunks.items) - 1)
        pieces = [torch.tensor(c.tokens) if c.is_text else torch.from_numpy(toy.pixels(image, spec))
                  for c in chunks.items]
        return ctx.logits().copy(), pieces


def _twin_logits(model, pieces) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(pieces)[-1].numpy()


PROMPT = "<|im_start|>system\nName the puppets.<|im_end|>\n<|im_start|>user\n<image>\nWho is on stage?<|im_end|>\n" \
         "<|im_start|>assistant\n{\"characters\":[\""


@pytest.mark.parametrize("spec", [SPEC, TinySpec(**{**SPEC.__dict__, "tokenizer": "spm", "n_head_kv": 2})],
                         ids=["bpe", "spm-gqa"])
def test_the_twin_s_next_token_logits_are_llama_cpp_s(pair, spec):
    model, ctx = pair(spec)
    got, pieces = _llama_logits(ctx, spec, PROMPT, _photo((64, 64), 1))
    assert [p.is_floating_point() for p in pieces].count(True) == 1  # text, the image, text
    want = _twin_logits(model, pieces)
    error, spread = float(np.abs(got - want).max()), float(want.std())
    assert error < LOGIT_TOLERANCE * spread, (error, spread)
    assert got.argmax() == want.argmax()
    assert list(np.argsort(-got)[:5]) == list(np.argsort(-want)[:5])
    # the image reaches the logits: another photo moves them by far more than the tolerance
    other, _ = _llama_logits(ctx, spec, PROMPT, _photo((64, 64), 2))
    assert np.abs(other - got).max() > 20 * LOGIT_TOLERANCE * spread


def _mtmd_embeddings(ctx, image: Image.Image, n_embd: int) -> np.ndarray:
    """libmtmd's output for the image alone (the rows the text model receives); through the Context's own
    libmtmd handle, which bbsd does not otherwise expose."""
    with ctx.tokenize(ctx.marker, [("photo", image)]) as chunks:
        chunk = next(c for c in chunks.items if not c.is_text)
        assert ctx._m.mtmd_encode_chunk(ctx._mtmd, chunk.handle) == 0
        out = ctx._m.mtmd_get_output_embd(ctx._mtmd)
        return np.ctypeslib.as_array(out, shape=(chunk.n_tokens * n_embd,)).reshape(chunk.n_tokens, n_embd).copy()


@pytest.mark.parametrize("size", [(64, 64), (100, 60), (60, 100), (300, 200), (33, 47)])
def test_the_twin_s_image_embeddings_are_libmtmd_s_at_any_photo_size(pair, size):
    """Square, letterboxed both ways, larger and smaller: `twin.pixels` prepares it as libmtmd does."""
    import torch

    model, ctx = pair(SPEC)
    image = _photo(size, 3)
    got = _mtmd_embeddings(ctx, image, SPEC.n_embd)
    with torch.no_grad():
        want = model.vision(torch.from_numpy(toy.pixels(image, SPEC))[None])[0].numpy()
    assert got.shape == want.shape == (64, SPEC.n_embd)
    assert np.abs(got - want).max() < TOLERANCE * want.std()


@pytest.mark.parametrize("textbook", ["class token first", "every block runs"])
def test_the_check_catches_a_twin_that_computes_a_textbook_clip(pair, textbook):
    """The two places where llama.cpp's LLaVA graph is not CLIP's: a twin that 'fixes' either one is caught."""
    import torch

    model, ctx = pair(SPEC)
    image = _photo((64, 64), 4)
    got = _mtmd_embeddings(ctx, image, SPEC.n_embd)
    v = model.vision
    with torch.no_grad():
        x = v.patch(torch.from_numpy(toy.pixels(image, SPEC))[None]).flatten(2).transpose(1, 2)
        if textbook == "class token first":
            x = v.pre_ln(torch.cat([v.cls.expand(1, 1, -1), x], 1) + v.pos)
            blocks = v.blocks[:-1]
        else:
            x = v.pre_ln(torch.cat([x, v.cls.expand(1, 1, -1)], 1) + v.pos)
            blocks = v.blocks
        for block in blocks:
            x = block(x)
        wrong = v.mm2(torch.nn.functional.gelu(v.mm0(x[:, 1:]), approximate="tanh"))[0].numpy()
    assert np.abs(got - wrong).max() > 10 * TOLERANCE * wrong.std()


def test_every_twin_parameter_has_one_llama_cpp_name_and_comes_back_from_it():
    pytest.importorskip("torch")
    import torch

    from train.twin import from_gguf_tensors, seeded

    model = seeded(SPEC, len(gguf_pair.vocabulary(SPEC)), seed=5)
    text, mmproj = model.gguf_tensors()
    assert len(text) + len(mmproj) == len(list(model.parameters()))
    back = from_gguf_tensors(SPEC, text, mmproj)
    for (name, p), q in zip(model.named_parameters(), back.parameters(), strict=True):
        assert torch.equal(p, q), name


# --- the training script --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """train/toyvlm.py for a few steps on a few toy-show photos: (npz, losses)."""
    pytest.importorskip("torch")
    from train import toyvlm

    npz = tmp_path_factory.mktemp("trained") / "toy.npz"
    return npz, toyvlm.train(npz, steps=4, photos=3, seed=0, lr=3e-3, batch=2)


def test_training_lowers_the_reply_loss_and_saves_weights_that_fit_the_spec(trained):
    from train import toyvlm

    npz, losses = trained
    assert len(losses) == 4 and losses[-1] < losses[0]
    spec, text, mmproj = toy.load(npz)
    assert spec.merges and npz.stat().st_size < 5_000_000  # the tokenizer trained for it travels in the spec
    assert dataclasses.replace(spec, merges=()) == toyvlm.SPEC


def test_training_is_seeded_the_same_arguments_give_the_same_weights(trained, tmp_path):
    from train import toyvlm

    again = toyvlm.train(tmp_path / "again.npz", steps=4, photos=3, seed=0, lr=3e-3, batch=2)
    assert again == trained[1]
    first, second = toy.load(trained[0]), toy.load(tmp_path / "again.npz")
    for a, b in zip(first[1:], second[1:], strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_batch_s_loss_is_its_examples_own_reply_losses(tmp_path):
    """Examples of different lengths in one batch: the padding changes no example's loss."""
    pytest.importorskip("torch")
    import torch

    from train import prefix, toyvlm
    from train.twin import seeded

    tok = toyvlm.Tokenizer(toyvlm.SPEC, tmp_path / "pair")
    try:
        chat = toyvlm.chat_text(toyvlm.toy_prompt(), tok.marker)
        examples = [tok.example(chat, image, truth) for image, truth in toyvlm.show_photos(tmp_path / "show", 0, 3)]
    finally:
        tok.close()
    assert len({sum(map(len, e.pieces)) + len(e.reply) for e in examples}) > 1  # lengths differ
    model = seeded(toyvlm.SPEC, len(gguf_pair.vocabulary(toyvlm.SPEC)), 0)
    with torch.no_grad():
        together = toyvlm.reply_loss(model, examples)
        alone = [toyvlm.reply_loss(model, [e]) * len(e.reply) for e in examples]
        # the training loop's: the system turn computed once for the batch (train/prefix.py)
        shared = prefix.reply_loss(model, examples[0].pieces[0], [e.pieces[1:] for e in examples],
                                   [e.reply for e in examples])
    assert torch.allclose(together, sum(alone) / sum(len(e.reply) for e in examples), atol=1e-5)
    assert torch.allclose(shared, together, atol=1e-5)


def test_the_training_prompt_is_bbsd_s_prompt_and_chat_for_the_toy_cast(trained, tmp_path):
    """The catalog, system text, instruction and chat the script trains on are the ones bbsd's engine gives
    this model for a configuration whose catalog is the toy show's: the same tokens around the image."""
    from bbsd import config
    from bbsd.engine import prompt
    from bbsd.engine.llama.native import Context
    from bbsd.engine.registry import open_in_process
    from bbsd.study import toyshow
    from tests.conftest import CATALOG, write_config
    from train import toyvlm

    folder = tmp_path / "gguf"
    text, mmproj = toy.write_pair_from(trained[0], folder)
    cfg = write_config(tmp_path, [tmp_path], (text, mmproj))
    cfg.write_text(cfg.read_text().replace(CATALOG, toyshow.catalog_toml()))
    settings = config.load(cfg, environ={})
    asked = prompt.for_settings(settings)
    assert asked == toyvlm.toy_prompt()
    photo = toyshow.render_photo(0, 0, toyvlm.PHOTO_SIZE)
    labeler = open_in_process(settings)
    try:
        engine_counts = labeler.layout(asked, photo.image)
    finally:
        labeler.close()
    ctx = Context(text, mmproj, n_ctx=4096, n_batch=512, threads=2, gpu_layers=0, flash_attention=False)
    try:
        with ctx.tokenize(toyvlm.chat_text(asked, ctx.marker), [("photo", photo.image)]) as chunks:
            counts = [c.n_tokens for c in chunks.items]
    finally:
        ctx.close()
    assert counts == [engine_counts["prefix"], engine_counts["image"], engine_counts["suffix"]]


def test_the_trained_model_labels_a_toy_photo_through_bbsd_and_agrees_with_its_twin(trained, tmp_path):
    """Trained weights → GGUF pair → bbsd's labeler: a reply the grammar admits; and llama.cpp's logits on
    the training prompt are the twin's."""
    import torch

    from bbsd import config
    from bbsd.engine import labels
    from bbsd.engine.llama.native import Context
    from bbsd.engine.registry import open_in_process
    from bbsd.study import toyshow
    from tests.conftest import CATALOG, write_config
    from train import toyvlm
    from train.twin import from_gguf_tensors

    spec, text_t, mmproj_t = toy.load(trained[0])
    text, mmproj = toy.write_pair(tmp_path / "gguf", spec, text_t, mmproj_t)
    cfg = write_config(tmp_path, [tmp_path], (text, mmproj))
    cfg.write_text(cfg.read_text().replace(CATALOG, toyshow.catalog_toml()))
    settings = config.load(cfg, environ={})
    photo = toyshow.render_photo(0, 1, toyvlm.PHOTO_SIZE)
    labeler = open_in_process(settings)
    try:
        reply = labeler.infer(photo.image, toyvlm.toy_prompt(), attempt=0, cancelled=lambda: False)
    finally:
        labeler.close()
    labels.parse_reply(reply.text, settings.catalog)
    model = from_gguf_tensors(spec, text_t, mmproj_t).eval()
    ctx = Context(text, mmproj, n_ctx=4096, n_batch=512, threads=2, gpu_layers=0, flash_attention=False)
    try:
        got, pieces = _llama_logits(ctx, spec, toyvlm.chat_text(toyvlm.toy_prompt(), "<image>"), photo.image)
    finally:
        ctx.close()
    with torch.no_grad():
        want = model(pieces)[-1].numpy()
    assert np.abs(got - want).max() < LOGIT_TOLERANCE * want.std() and got.argmax() == want.argmax()


def test_the_sentencepiece_vocabulary_trains_too_and_runs_in_llama_cpp_as_in_its_twin(tmp_path):
    pytest.importorskip("torch")
    import torch

    from bbsd.engine.llama.native import Context
    from bbsd.study import toyshow
    from train import toyvlm
    from train.twin import from_gguf_tensors

    spec = dataclasses.replace(toyvlm.SPEC, tokenizer="spm")
    losses = toyvlm.train(tmp_path / "spm.npz", steps=3, photos=2, seed=0, lr=3e-3, batch=2, spec=spec)
    assert losses[-1] < losses[0]
    spec, text_t, mmproj_t = toy.load(tmp_path / "spm.npz")
    assert spec.tokenizer == "spm"
    text, mmproj = toy.write_pair(tmp_path / "gguf", spec, text_t, mmproj_t)
    ctx = Context(text, mmproj, n_ctx=4096, n_batch=512, threads=2, gpu_layers=0, flash_attention=False)
    try:
        photo = toyshow.render_photo(0, 0, toyvlm.PHOTO_SIZE)
        got, pieces = _llama_logits(ctx, spec, toyvlm.chat_text(toyvlm.toy_prompt(), "<image>"), photo.image)
    finally:
        ctx.close()
    with torch.no_grad():
        want = from_gguf_tensors(spec, text_t, mmproj_t).eval()(pieces)[-1].numpy()
    assert np.abs(got - want).max() < LOGIT_TOLERANCE * want.std() and got.argmax() == want.argmax()
