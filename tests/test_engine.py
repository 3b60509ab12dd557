"""The real llama.cpp engine on tiny generated models: loading, image encoding, grammar, logs."""

import pytest
from PIL import Image

from bbsd import config, labels, prompt, tiny_model
from bbsd.errors import ModelError
from bbsd.labeler import open_in_process as open_labeler  # the engine itself, not its worker
from tests.conftest import write_config


@pytest.fixture(scope="module")
def engine(tiny_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine")
    settings = config.load(write_config(folder, [folder], tiny_models), environ={})
    labeler = open_labeler(settings)
    yield labeler, settings
    labeler.close()


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
    with pytest.raises(AbandonedError):
        labeler.infer(Image.new("RGB", (64, 64)), prompt.build(settings.catalog), attempt=0, cancelled=lambda: True)


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
