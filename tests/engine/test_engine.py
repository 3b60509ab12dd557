"""The real llama.cpp engine on tiny generated models: loading, image encoding, grammar, logs."""

import pytest
from PIL import Image

from bbsd import config
from bbsd.engine import labels, prompt
from bbsd.engine.registry import open_in_process as open_labeler  # the engine itself, not its worker
from bbsd.errors import ModelError
from bbsd.models import tiny as tiny_model
from tests.conftest import REPO, write_config


def test_real_engine_returns_a_valid_reply_of_catalog_names(engine):
    labeler, settings = engine
    p = prompt.build(settings.catalog)
    image = Image.new("RGB", (256, 192), (200, 30, 30))
    result = labeler.infer(image, p, attempt=0, cancelled=lambda: False)
    parsed = labels.parse_reply(result.text, settings.catalog)  # grammar-constrained: must parse
    assert set(parsed.characters) <= set(settings.catalog.character_names())
    assert result.prompt_tokens > 16  # text tokens + the 16 image tokens of the tiny projector
    assert result.output_tokens > 0 and result.encode_ms > 0 and result.generate_ms > 0
    assert labeler.info.file == tiny_model.TEXT_FILE and labeler.info.mmproj == tiny_model.MMPROJ_FILE


def test_cancel_abandons_the_generation(engine):
    from bbsd.errors import AbandonedError

    labeler, settings = engine
    p, image = prompt.build(settings.catalog), Image.new("RGB", (64, 64))
    calls = []

    def later() -> bool:  # false for the first checks: the stop comes in the middle of the reply
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(AbandonedError):
        labeler.infer(image, p, attempt=0, cancelled=later)
    assert len(calls) == 4  # checked at every step of the generation, not only before it
    labels.parse_reply(labeler.infer(image, p, attempt=0, cancelled=lambda: False).text, settings.catalog)


def test_mmproj_of_another_model_is_refused_with_a_hint(tmp_path, tiny_models):
    wrong = tiny_model.write_mmproj(tmp_path / "wrong.gguf", tiny_model.TinySpec(n_embd=96))
    settings = config.load(write_config(tmp_path, [tmp_path], (tiny_models[0], wrong)), environ={})
    with pytest.raises(ModelError) as e:
        open_labeler(settings)
    assert "cannot load mmproj wrong.gguf" in e.value.message and "belong to the text model" in e.value.hint


def test_corrupt_model_file_is_a_model_error(tmp_path, tiny_models):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 100)
    settings = config.load(write_config(tmp_path, [tmp_path], (bad, tiny_models[1])), environ={})
    with pytest.raises(ModelError, match="cannot load text model bad.gguf"):
        open_labeler(settings)


def _photo(i: int) -> Image.Image:
    return Image.new("RGB", (256, 192), (40 * i % 256, 90, 200 - 30 * i % 200))


def test_prefix_is_evaluated_once_per_catalog_then_only_image_and_suffix(tiny_models, tmp_path):
    settings = config.load(write_config(tmp_path, [tmp_path], tiny_models), environ={})
    labeler = open_labeler(settings)
    try:
        p = prompt.build(settings.catalog)
        layout = labeler.layout(p, _photo(0))
        assert layout["image"] == 16 and layout["prefix"] > layout["suffix"] > 0
        runs = [labeler.infer(_photo(i), p, attempt=0, cancelled=lambda: False) for i in range(3)]
        assert runs[0].evaluated_tokens == layout["prefix"] + layout["image"] + layout["suffix"]
        assert [r.evaluated_tokens for r in runs[1:]] == [layout["image"] + layout["suffix"]] * 2
        assert all(r.prompt_tokens == runs[0].evaluated_tokens for r in runs)  # same positions each time

        bigger = prompt.build(config.load(_with_character(tmp_path, "Kikimora"), environ={}).catalog)  # SIGHUP
        new_layout = labeler.layout(bigger, _photo(0))
        assert new_layout["prefix"] > layout["prefix"]
        changed = [labeler.infer(_photo(i), bigger, attempt=0, cancelled=lambda: False) for i in range(2)]
        assert changed[0].evaluated_tokens == sum(new_layout.values())  # the new prefix, evaluated once
        assert changed[1].evaluated_tokens == new_layout["image"] + new_layout["suffix"]
    finally:
        labeler.close()


def test_a_cached_prefix_gives_the_same_reply_as_a_fresh_engine(tiny_models, tmp_path):
    settings = config.load(write_config(tmp_path, [tmp_path], tiny_models), environ={})
    p = prompt.build(settings.catalog)
    fresh = open_labeler(settings)
    try:
        expected = fresh.infer(_photo(7), p, attempt=0, cancelled=lambda: False)
    finally:
        fresh.close()
    warm = open_labeler(settings)
    try:
        for i in range(3):  # other photos first: their image and reply must be forgotten
            warm.infer(_photo(i), p, attempt=0, cancelled=lambda: False)
        again = warm.infer(_photo(7), p, attempt=0, cancelled=lambda: False)
    finally:
        warm.close()
    assert again.evaluated_tokens < expected.evaluated_tokens  # the prefix really came from the cache
    assert again.text == expected.text and again.output_tokens == expected.output_tokens


def _with_character(folder, name: str):
    cfg = folder / "config.toml"
    cfg.write_text(cfg.read_text() + f'\n[[characters]]\nname = "{name}"\ndescription = "swamp spirit"\n')
    return cfg


def test_jump_forward_samples_only_the_choices_and_the_reply_stays_valid(tiny_models, tmp_path):
    """Keys, punctuation and the rest of an unambiguous name are appended; the reply still parses."""
    replies = {}
    for jump in (True, False):
        settings = config.load(write_config(tmp_path, [tmp_path], tiny_models),
                               environ={"BBSD_ENGINE_JUMP_FORWARD": str(jump).lower()})
        labeler = open_labeler(settings)
        try:
            replies[jump] = labeler.infer(_photo(3), prompt.build(settings.catalog), attempt=0,
                                          cancelled=lambda: False)
        finally:
            labeler.close()
        labels.parse_reply(replies[jump].text, settings.catalog)  # schema-valid either way
    on, off = replies[True], replies[False]
    assert off.sampled_tokens == off.output_tokens  # every token sampled
    assert on.sampled_tokens < on.output_tokens / 2  # most of the reply is fixed by the schema
    assert on.text.startswith('{"characters":[')  # written by bbsd, without the optional spaces



def test_the_pinned_import_makes_the_cxx_runtime_global():
    """A CUDA build crashed in the tokenizer when numpy loaded libstdc++ before libllama (H200 run,
    docs/producer/benchmarks.md); `llama_binding.import_llama` pins the C++ runtime first. That no module
    imports llama_cpp another way is an import-linter contract (tests/test_architecture.py); this checks
    that the pin really makes the runtime global."""
    import subprocess
    import sys

    root = REPO
    # A fresh process that imported numpy first (libstdc++ loaded privately): a libstdc++-only
    # symbol is not in the global scope until the pin, and is after it.
    code = ("import ctypes, numpy; g = ctypes.CDLL(None); s = '_ZNSt6locale7classicEv'; before = hasattr(g, s); "
            "from bbsd import llama_binding; llama_binding.pin_cxx_runtime(); print(before, hasattr(g, s))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def test_a_lora_adapter_loads_changes_the_logits_and_the_sidecar_records_it(tiny_models, tmp_path):
    """`[model] lora`: the study's fine-tune hand-off ends in the daemon loading the adapter GGUF."""
    lora = tiny_model.write_lora(tmp_path / "tiny-lora.gguf")
    image = Image.new("RGB", (256, 192), (30, 160, 90))
    weighed = {}
    for name, extra in (("base", ""), ("lora", f'lora = "{lora}"\n'), ("off", f'lora = "{lora}"\nlora_scale = 0.0\n')):
        folder = tmp_path / name
        folder.mkdir()
        cfg = write_config(folder, [folder], tiny_models)
        cfg.write_text(cfg.read_text().replace("[engine]", extra + "[engine]", 1) if extra else cfg.read_text())
        settings = config.load(cfg, environ={})
        labeler = open_labeler(settings)
        try:
            p = prompt.build(settings.catalog)
            result = labeler.infer(image, p, attempt=0, cancelled=lambda: False)
            labels.parse_reply(result.text, settings.catalog)  # still a valid reply under the grammar
            weighed[name] = [round(s.p, 6) for s in result.steps]
            assert labeler.info.lora == (None if name == "base" else "tiny-lora.gguf")
        finally:
            labeler.close()
    assert weighed["lora"] != weighed["base"]  # the adapter moved the model's probabilities
    assert weighed["off"] == weighed["base"]  # at scale 0 it is loaded and does nothing


def test_a_lora_that_does_not_belong_to_the_model_is_one_clear_error(tiny_models, tmp_path):
    bad = tiny_model.write_lora(tmp_path / "other.gguf", tiny_model.TinySpec(n_embd=32, n_head=2))
    cfg = write_config(tmp_path, [tmp_path], tiny_models)
    cfg.write_text(cfg.read_text().replace("[engine]", f'lora = "{bad}"\n[engine]', 1))
    with pytest.raises(ModelError, match="cannot load LoRA adapter other.gguf"):
        open_labeler(config.load(cfg, environ={}))


@pytest.mark.parametrize("n_vocab", [0, 40_000])
def test_greedy_takes_the_best_token_without_masking_the_vocabulary_and_replies_the_same(tiny_models, tmp_path,
                                                                                         monkeypatch, n_vocab):
    """The best token among the strongest logits that the grammar allows is the constrained greedy
    choice: the replies, token counts and confidences match the path that masks every token of the
    vocabulary (the test pair's few hundred tokens, and a real model's tens of thousands)."""
    from bbsd.engine.llama.sampler import Sampler

    models = tiny_models if not n_vocab else tiny_model.write_pair(tmp_path / "big", tiny_model.TinySpec(
        n_vocab=n_vocab))
    settings = config.load(write_config(tmp_path, [tmp_path], models), environ={})
    p = prompt.build(settings.catalog)
    taken = []
    pick = Sampler.greedy_pick

    def counting(self, logits):
        token = pick(self, logits)
        taken.append(token is not None)
        return token

    runs = {}
    for fast in (True, False):
        monkeypatch.setattr(Sampler, "greedy_pick", counting if fast else lambda self, logits: None)
        labeler = open_labeler(settings)
        try:
            runs[fast] = [labeler.infer(_photo(i), p, attempt=0, cancelled=lambda: False) for i in range(3)]
        finally:
            labeler.close()
    assert sum(taken) > len(taken) / 2  # most sampled tokens skipped the grammar mask
    for a, b in zip(runs[True], runs[False], strict=True):
        assert (a.text, a.output_tokens, a.sampled_tokens) == (b.text, b.output_tokens, b.sampled_tokens)
        assert a.steps == b.steps  # confidences: the same probabilities at the same choices
