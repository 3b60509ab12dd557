"""M-RoPE (Qwen2-VL / Qwen2.5-VL): an image takes fewer positions than it has tokens.

The prefix cache and the batching must follow libmtmd's positions, never a token count; the
context check counts llama.cpp's cells (one per token), never positions. Proven on a tiny
random-weight Qwen2-VL pair whose vision tower has the real patch size (14) and 2x2 merge, so its
image token counts are the real ones.
"""

import ctypes

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bbsd import config
from bbsd.engine import prompt
from bbsd.engine.llama import backend as llama_backend
from bbsd.engine.llama import engine as llama_engine
from bbsd.engine.llama import native as llama_native
from bbsd.engine.registry import open_in_process as open_labeler
from bbsd.errors import PhotoError
from bbsd.models import tiny as tiny_model
from tests.conftest import write_config

TEMPLATE = "<|im_start|>system\nLabel the puppets.<|im_end|>\n<|im_start|>user\n{marker}\nWho?<|im_end|>\n" \
           "<|im_start|>assistant\n"


# Blocks five times the default spread: a text token placed one position off moves the logits by
# tenths (by ten-thousandths at the default), so a wrong position cannot hide in rounding.
SPEC = tiny_model.TinySpec(projector="qwen2vl", block_scale=0.1)


@pytest.fixture(scope="module")
def qwen_models(tmp_path_factory):
    return tiny_model.write_pair(tmp_path_factory.mktemp("qwen2vl"), SPEC)


def _photo(size: tuple[int, int], seed: int) -> Image.Image:
    """A photo with structure, so that every patch (and its position) differs."""
    img = Image.new("RGB", size, (30 * seed % 256, 90, 200))
    draw = ImageDraw.Draw(img)
    for i in range(6):
        x, y = (37 * (i + seed)) % size[0], (53 * (i + 2 * seed)) % size[1]
        draw.rectangle((x, y, x + size[0] // 4, y + size[1] // 5), fill=(250 - 40 * i, 20 * i, 60 * seed % 256))
    return img


def _native(models, n_batch: int = 2048, n_ctx: int = 4096, flash_attention: bool = True) -> llama_native.Context:
    from bbsd.engine.llama import compute
    from bbsd.engine.llama import log as llama_log

    llama_log.install()
    compute.load()
    return llama_native.Context(*models, n_ctx=n_ctx, n_batch=n_batch, threads=2, gpu_layers=0,
                                flash_attention=flash_attention)


def _evaluate(ctx: llama_native.Context, chunks, start: int = 0) -> int:
    n_past = start
    for i, chunk in enumerate(chunks):
        n_past = ctx.eval_chunk(chunk, n_past, logits_last=i == len(chunks) - 1)
    return n_past


def _prompt_logits(models, image: Image.Image, n_batch: int = 2048, flash_attention: bool = True
                   ) -> tuple[np.ndarray, int]:
    """The logits after a whole prompt, evaluated from scratch in a fresh context; and the next position."""
    ctx = _native(models, n_batch, flash_attention=flash_attention)
    try:
        with ctx.tokenize(TEMPLATE.format(marker=ctx.marker), [("photo", image)]) as chunks:
            n_past = _evaluate(ctx, chunks.items)
        return ctx.logits().copy(), n_past
    finally:
        ctx.close()


def test_an_image_takes_fewer_positions_than_tokens_and_evaluation_follows_libmtmd(qwen_models):
    ctx = _native(qwen_models)
    try:
        with ctx.tokenize(TEMPLATE.format(marker=ctx.marker), [("photo", _photo((256, 192), 1))]) as chunks:
            head, image, tail = chunks.items
            assert (image.n_tokens, image.n_pos) == (9 * 7, 9)  # a 9 x 7 grid of merged patches: max(9, 7) positions
            assert (head.n_pos, tail.n_pos) == (head.n_tokens, tail.n_tokens)
            after_image = ctx.eval_chunk(image, _evaluate(ctx, [head]), logits_last=False)
            assert after_image == head.n_tokens + 9
            assert _evaluate(ctx, [tail], after_image) == head.n_tokens + 9 + tail.n_tokens == ctx.next_position()
            assert ctx.cells == head.n_tokens + 63 + tail.n_tokens  # the cache holds every token
            ours = ctx.logits().copy()

            # libmtmd's own evaluation of the same chunks (its helper, text included) is the reference;
            # it needs the raw handles, which only the adapter holds.
            ctx.forget_from(0)
            end = ctx._ll.llama_pos(0)
            assert ctx._m.mtmd_helper_eval_chunks(ctx._mtmd, ctx.ctx, chunks._chunks, 0, 0, ctx.n_batch, True,
                                                  ctypes.byref(end)) == 0
            assert end.value == after_image + tail.n_tokens
            assert np.array_equal(ctx.logits(), ours)

            # The model does see positions: the text after the image placed by token count reads differently.
            ctx.forget_from(0)
            _evaluate(ctx, [head, image])
            ctx.eval_tokens(list(tail.tokens), head.n_tokens + image.n_tokens)
            assert np.abs(ctx.logits() - ours).max() > 0.1
    finally:
        ctx.close()


def test_a_cached_prefix_then_another_image_gives_the_logits_of_a_fresh_context(qwen_models):
    """The engine's sequence: prefix once; photo A and its reply; forget back to the prefix; photo B."""
    a, b = _photo((320, 240), 2), _photo((256, 192), 3)  # grids 11 x 9 and 9 x 7: different positions
    fresh, fresh_end = _prompt_logits(qwen_models, b)
    ctx = _native(qwen_models)
    try:
        with ctx.tokenize(TEMPLATE.format(marker=ctx.marker), [("photo", a)]) as chunks:
            prefix_end = _evaluate(ctx, chunks.items[:1])
            end = _evaluate(ctx, chunks.items[1:], prefix_end)
            ctx.eval_tokens([101, 102, 103, 104], end)  # A's reply
        ctx.forget_from(prefix_end)
        assert ctx.next_position() == prefix_end and ctx.cells == prefix_end
        with ctx.tokenize(TEMPLATE.format(marker=ctx.marker), [("photo", b)]) as chunks:
            assert _evaluate(ctx, chunks.items[1:], prefix_end) == fresh_end
        assert np.array_equal(ctx.logits(), fresh)
        assert np.abs(_prompt_logits(qwen_models, a)[0] - fresh).max() > 0.1  # the image matters
    finally:
        ctx.close()


# CPU kernels round some batch shapes differently, whatever the model, in plain text too: flash
# attention (a LLaVA prompt of 1.4k tokens moved a logit by 7e-6 at batch 16, this Qwen2-VL one by 7e-4)
# and a run of 17 tokens vs 16 + 1 (jump-forward appends such runs: 1e-8 on a probability). With both
# off, a batch size changes no bit, so the comparisons across batch sizes below turn them off: any
# difference left would be the image split's.
EXACT = {"flash_attention": False}


def test_an_image_larger_than_a_batch_is_evaluated_exactly_as_in_one_batch(qwen_models):
    """llama.cpp #16876: M-RoPE images spanning batches failed ("inconsistent sequence positions").
    This llama.cpp accepts an image's overlapping positions across batches and masks inside the image
    by (row, column), so a split changes nothing: the logits are bit-identical."""
    photo = _photo((256, 192), 4)  # 63 image tokens
    whole, end = _prompt_logits(qwen_models, photo, n_batch=2048, **EXACT)
    for n_batch in (16, 7):  # 4 and 9 batches for the image
        split, split_end = _prompt_logits(qwen_models, photo, n_batch=n_batch, **EXACT)
        assert split_end == end and np.array_equal(split, whole)


def _open(tmp_path, models, name: str, environ: dict[str, str] | None = None):
    folder = tmp_path / name
    folder.mkdir()
    settings = config.load(write_config(folder, [folder], models), environ=environ or {})
    return open_labeler(settings), prompt.build(settings.catalog)


def _label(labeler, p, image):
    return labeler.infer(image, p, attempt=0, cancelled=lambda: False)


def test_labelling_after_another_photo_reuses_the_prefix_and_replies_as_a_fresh_engine(qwen_models, tmp_path):
    a, b = _photo((320, 240), 5), _photo((256, 192), 6)
    # Every reply token sampled and evaluated (jump-forward leaves the last forced text unevaluated),
    # so the cache's last position tells where the reply started.
    sampled = {"BBSD_ENGINE_JUMP_FORWARD": "false"}
    fresh, p = _open(tmp_path, qwen_models, "fresh", sampled)
    try:
        expected = _label(fresh, p, b)
    finally:
        fresh.close()
    warm, p = _open(tmp_path, qwen_models, "warm", sampled)
    try:
        layout = warm.layout(p, b)
        assert layout["image"] == 63
        first = _label(warm, p, a)
        again = _label(warm, p, b)
        assert first.evaluated_tokens == sum(warm.layout(p, a).values())
        assert again.evaluated_tokens == layout["image"] + layout["suffix"]  # the prefix came from the cache
        assert again.prompt_tokens == sum(layout.values())  # tokens, not the 54 fewer positions
        # The reply went on from libmtmd's position after the prompt: 9 positions for the image
        # (read from the engine's context: llama.cpp's record of the cache, not the engine's own count).
        assert warm._ctx.next_position() == layout["prefix"] + 9 + layout["suffix"] + again.output_tokens
    finally:
        warm.close()
    assert again.text == expected.text and again.output_tokens == expected.output_tokens
    assert again.steps and [s.p for s in again.steps] == [s.p for s in expected.steps]  # the same probabilities


def test_the_engine_splits_an_image_across_batches_without_changing_the_reply(qwen_models, tmp_path, monkeypatch):
    photo, exact = _photo((256, 192), 7), {"BBSD_ENGINE_FLASH_ATTENTION": "false", "BBSD_ENGINE_JUMP_FORWARD": "false"}
    whole, p = _open(tmp_path, qwen_models, "whole", exact)
    try:
        expected = _label(whole, p, photo)
    finally:
        whole.close()
    monkeypatch.setattr(llama_engine, "batch_size", lambda context_size: 32)  # 63 image tokens: 2 batches
    split, p = _open(tmp_path, qwen_models, "split", exact)
    try:
        got = _label(split, p, photo)
    finally:
        split.close()
    assert got.text == expected.text and len(got.steps) > 20  # every token of the names sampled and weighed
    assert [s.p for s in got.steps] == [s.p for s in expected.steps]


def test_the_batch_holds_the_largest_qwen_image_at_the_default_image_max_side(qwen_models, tmp_path):
    """A square photo has the most tokens for its longest side; libmtmd counts them as for the real model."""
    labeler, p = _open(tmp_path, qwen_models, "sizes")
    try:
        def tokens(side: int) -> int:
            return labeler.layout(p, Image.new("RGB", (side, side)))["image"]

        side = config.SCHEMA["engine"]["image_max_side"].default
        batch = llama_engine.batch_size(llama_backend.TABLES["engine"]["context_size"].default)
        assert (side, batch) == (768, 2048)
        assert tokens(side) == 27 * 27  # sides rounded to multiples of 28 pixels: 756 x 756
        assert tokens(1273) == 45 * 45 <= batch < tokens(1274) == 46 * 46  # beyond 1273 px: split, as tested above
    finally:
        labeler.close()


def test_a_full_cache_is_a_context_overflow_counted_in_cells_not_positions(qwen_models):
    """An image of 400 tokens takes 20 positions: counting positions, the check passed and the full
    cache failed as an engine_error with no hint."""
    ctx = _native(qwen_models, n_batch=512, n_ctx=512)
    try:
        with ctx.tokenize(TEMPLATE.format(marker=ctx.marker), [("photo", _photo((560, 560), 8))]) as chunks:
            n_past = _evaluate(ctx, chunks.items)
            assert chunks.items[1].n_tokens == 400
        with pytest.raises(PhotoError) as e:
            while True:
                n_past = ctx.eval_tokens([101], n_past)
        assert e.value.code == "context_overflow" and "context_size" in e.value.hint
        assert ctx.cells == 512 and n_past == ctx.next_position() < 512 - 300
    finally:
        ctx.close()


# CPU flash attention rounds differently at other batch shapes (about 7e-4 in a logit on this pair,
# enough to flip a near-tie late in a random reply); without it the comparison is exact.
NO_FLASH = {"BBSD_ENGINE_FLASH_ATTENTION": "false"}


def test_a_batch_of_photos_replies_as_each_alone_with_m_rope_positions(qwen_models, tmp_path):
    """Parallel sequences after the shared prefix: each photo's M-RoPE positions start where the
    prefix ends, whatever the other sequences hold."""
    photos = [_photo((320, 240), 1), _photo((256, 192), 2), _photo((400, 300), 3)]
    alone, p = _open(tmp_path, qwen_models, "alone", {"BBSD_ENGINE_PARALLEL": "1", **NO_FLASH})
    try:
        expected = [_label(alone, p, image) for image in photos]
    finally:
        alone.close()
    together, p = _open(tmp_path, qwen_models, "together", {"BBSD_ENGINE_PARALLEL": "3", **NO_FLASH})
    try:
        got = together.infer_many([(image, p, 0) for image in photos], cancelled=lambda: False)
    finally:
        together.close()
    assert [r.text for r in got] == [r.text for r in expected]
    assert [r.prompt_tokens for r in got] == [r.prompt_tokens for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert [s.p for s in a.steps] == pytest.approx([s.p for s in b.steps], abs=1e-3)
