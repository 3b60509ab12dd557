"""Real tokenizers under jump-forward and at the output cap: a SentencePiece-style vocabulary (llama.cpp's
`llama` tokenizer: `▁` for a space, byte fallback, a word-start piece before plain text, as InternLM2 and
Gemma have) and a byte-level BPE one (GPT-2, Qwen2), each a tiny random model run by the real engine."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from bbsd import config
from bbsd.engine import labels, prompt
from bbsd.engine.llama import native as llama_native
from bbsd.engine.registry import open_in_process
from bbsd.models import tiny as tiny_model
from bbsd.models.tiny import TinySpec
from bbsd.sidecars import record as sidecar
from tests.conftest import make_photo, run_bbsd, write_config

# `spaces=False`: like a real model, these never write the optional whitespace of JSON, so a reply
# sampled token by token is the reply jump-forward writes (the random default pair likes " :").
SPECS = {"spm": TinySpec(tokenizer="spm", spaces=False), "bpe": TinySpec(spaces=False)}
SKELETON = '{"characters":[],"props":[],"caption":"","scene":"","visible_text":[]}'  # keys and punctuation


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("vocabularies")
    return {kind: tiny_model.write_pair(root / kind, spec) for kind, spec in SPECS.items()}


def _context(pair: tuple[Path, Path]) -> llama_native.Context:
    return llama_native.Context(pair[0], pair[1], n_ctx=256, n_batch=64, threads=1, gpu_layers=0,
                                flash_attention=False)


@pytest.mark.parametrize("kind", SPECS)
def test_forced_text_becomes_exactly_the_tokens_that_spell_it(pairs, kind):
    """On the SPM vocabulary `llama_tokenize` puts a word-start piece (a space) before plain text; the
    forced tokens must spell the text and nothing else, on both kinds."""
    ctx = _context(pairs[kind])
    try:
        texts = ['{"characters":[', 'aba Yaga"', '],"props":["', '","caption":"', ' the cat', 'x', '"}']
        for text in texts:
            tokens = ctx.tokens(text)
            assert tokens and b"".join(map(ctx.piece, tokens)) == text.encode(), (text, tokens)
        if kind == "spm":  # the vocabulary's word pieces are used, not one token per letter
            assert [ctx.piece(t) for t in ctx.tokens('{"characters":[')] == [b"{", b'"', b"characters", b'":[']
    finally:
        ctx.close()


def _outside_strings(text: str) -> str:
    """The characters of a JSON text that are not inside a string."""
    out, in_string, escaped = [], False, False
    for ch in text:
        if in_string:
            in_string = escaped or ch != '"'
            escaped = not escaped and ch == "\\"
        elif ch == '"':
            in_string = True
        else:
            out.append(ch)
    return "".join(out)


def _photo(i: int) -> Image.Image:
    return Image.new("RGB", (256, 192), (60 * i % 256, 90, 200 - 40 * i % 200))


@pytest.mark.parametrize("kind", SPECS)
def test_replies_are_byte_identical_with_jump_forward_on_and_off(pairs, kind, tmp_path):
    """Jump-forward only saves the sampling of what the schema fixes: the reply is the one sampling every
    token under the grammar gives, with no space before forced text (the SPM word-start piece)."""
    replies = {}
    for jump in (True, False):
        settings = config.load(write_config(tmp_path, [tmp_path], pairs[kind]),
                               environ={"BBSD_ENGINE_JUMP_FORWARD": str(jump).lower()})
        labeler = open_in_process(settings)
        try:
            replies[jump] = [labeler.infer(_photo(i), prompt.build(settings.catalog), attempt=0,
                                           cancelled=lambda: False) for i in range(2)]
        finally:
            labeler.close()
    for on, off in zip(replies[True], replies[False], strict=True):
        assert on.text == off.text
        assert off.sampled_tokens == off.output_tokens and on.sampled_tokens < on.output_tokens / 2
        assert not any(ch.isspace() for ch in _outside_strings(on.text)), on.text
        labels.parse_reply(on.text, settings.catalog)


def _label(inbox: Path, cfg: Path, env: dict[str, str]) -> dict[str, dict]:
    r = run_bbsd("label", str(inbox), "--config", str(cfg), env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    return {p.name: json.loads(sidecar.path_for(p).read_text()) for p in sorted(inbox.glob("*.jpg"))}


def _inboxes(tmp_path: Path, names: tuple[str, ...], n: int = 2) -> dict[str, Path]:
    first = tmp_path / names[0]
    for i in range(n):
        make_photo(first / f"p{i}.jpg", color=(40 + 70 * i, 90, 160))
    for name in names[1:]:  # the same photos: a relabel of a current sidecar would be skipped
        shutil.copytree(first, tmp_path / name)
    return {name: tmp_path / name for name in names}


@pytest.mark.parametrize("kind", SPECS)
def test_bbsd_label_appends_the_keys_and_punctuation(pairs, kind, tmp_path):
    """Through `bbsd label`: at least the reply's keys and punctuation are appended, not sampled
    (tokens.output - tokens.sampled; before, on the SPM vocabulary, every token was sampled), and the
    labels are those of the reply sampled token by token."""
    inboxes = _inboxes(tmp_path, ("on", "off"))
    cfg = write_config(tmp_path, list(inboxes.values()), pairs[kind])
    docs = {name: _label(inbox, cfg, {"BBSD_ENGINE_JUMP_FORWARD": str(name == "on").lower()})
            for name, inbox in inboxes.items()}
    ctx = _context(pairs[kind])
    try:
        skeleton = len(ctx.tokens(SKELETON))
    finally:
        ctx.close()
    for name, on in docs["on"].items():
        off = docs["off"][name]
        assert on["status"] == off["status"] == "labeled" and on["labels"] == off["labels"]
        appended = on["tokens"]["output"] - on["tokens"]["sampled"]
        print(f"{kind} {name}: tokens.output {on['tokens']['output']} sampled {on['tokens']['sampled']} "
              f"appended {appended} (keys and punctuation: {skeleton} tokens)")
        assert appended >= skeleton
        assert off["tokens"]["sampled"] == off["tokens"]["output"]


def test_control_and_unknown_tokens_leave_no_text_in_the_reply(tmp_path):
    """A model that writes `<unk>` inside strings (the grammar reads it as its five letters): the reply's
    text has none of it, while the chat template still gets the special tokens' names."""
    pair = tiny_model.write_pair(tmp_path / "unk", TinySpec(tokenizer="spm", spaces=False, unknown_bias=1.0))
    settings = config.load(write_config(tmp_path, [tmp_path], pair), environ={})
    labeler = open_in_process(settings)
    try:
        reply = labeler.infer(_photo(0), prompt.build(settings.catalog), attempt=0, cancelled=lambda: False)
    finally:
        labeler.close()
    assert "<unk>" not in reply.text and "<|" not in reply.text and "<s>" not in reply.text
    assert reply.output_tokens > len(reply.text)  # dozens of <unk> were written, and left no text
    labels.parse_reply(reply.text, settings.catalog)
    ctx = _context(pair)
    try:
        assert ctx.piece(0) == b"" and ctx.bos_eos() == ("<s>", "<|im_end|>")
    finally:
        ctx.close()


def test_every_photo_is_labelled_at_a_small_output_cap(tmp_path, validate_sidecar):
    """A model that writes every caption to its 200 characters, `max_output_tokens = 48`: each photo is
    labelled with the names it has (those of the uncapped reply), and the sidecar says what was cut;
    with jump-forward off too (the reply is closed all the same)."""
    pair = tiny_model.write_pair(tmp_path / "long", TinySpec(tokenizer="spm", spaces=False, seed=1))
    inboxes = _inboxes(tmp_path, ("full", "on", "off"))
    cfg = write_config(tmp_path, list(inboxes.values()), pair)
    full = _label(inboxes["full"], cfg, {})
    for name in ("on", "off"):
        capped = _label(inboxes[name], cfg, {"BBSD_ENGINE_MAX_OUTPUT_TOKENS": "48",
                                              "BBSD_ENGINE_JUMP_FORWARD": str(name == "on").lower()})
        for photo, doc in capped.items():
            validate_sidecar(inboxes[name] / photo)
            assert doc["status"] == "labeled", doc.get("error")
            assert doc["labels"]["characters"] == full[photo]["labels"]["characters"]
            assert doc["labels"]["cut"] and "cut" not in full[photo]["labels"]
            assert len(doc["labels"]["caption"]) < len(full[photo]["labels"]["caption"])


QUESTIONS = """
[[questions]]
key = "act"
question = "Which act?"
type = "choice"
choices = ["Act 1", "Act 2", "Act 3"]

[[questions]]
key = "mood"
question = "Mood?"
type = "text"

[[questions]]
key = "puppets"
question = "How many puppets?"
type = "integer"
min = 0
max = 12
"""


def test_at_the_cap_the_model_still_chooses_every_answer(tmp_path, validate_sidecar):
    """With questions, a closing stops at each answer the model must choose (never invented): the photo
    is labelled with its names and every answer, its cut marked; the budget held them all."""
    pair = tiny_model.write_pair(tmp_path / "long", TinySpec(tokenizer="spm", spaces=False, seed=1))
    inboxes = _inboxes(tmp_path, ("full", "capped"))
    cfg = write_config(tmp_path, list(inboxes.values()), pair, extra=QUESTIONS)
    full = _label(inboxes["full"], cfg, {})
    capped = _label(inboxes["capped"], cfg, {"BBSD_ENGINE_MAX_OUTPUT_TOKENS": "96"})
    for photo, doc in capped.items():
        validate_sidecar(inboxes["capped"] / photo)
        assert doc["status"] == "labeled", doc.get("error")
        assert doc["labels"]["characters"] == full[photo]["labels"]["characters"]
        assert set(doc["labels"]["answers"]) == {"act", "mood", "puppets"} and doc["labels"]["cut"]
        assert doc["tokens"]["output"] <= 96


def test_the_converted_internlm2_vocabulary_appends_the_keys_too(tmp_path):
    """The InternVL2-8B-shaped checkpoint (InternLM2: SentencePiece with byte fallback), converted by
    llama.cpp's own converter: through `bbsd label`, the keys and punctuation are appended there too."""
    from tests.models.test_convert import _convert

    _, text, mmproj, _ = _convert(tmp_path, "InternVL2-8B")
    ctx = _context((text, mmproj))
    try:
        assert ctx.meta("tokenizer.ggml.model") == "llama" and ctx.meta("tokenizer.ggml.add_space_prefix") == "true"
        skeleton = len(ctx.tokens(SKELETON))
    finally:
        ctx.close()
    inbox = tmp_path / "in"
    make_photo(inbox / "stage.jpg", size=(320, 240))
    doc = _label(inbox, write_config(tmp_path, [inbox], (text, mmproj)), {})["stage.jpg"]
    print(f"InternLM2 stage.jpg: tokens {doc['tokens']} (keys and punctuation: {skeleton} tokens)")
    assert doc["status"] == "labeled" and doc["tokens"]["output"] - doc["tokens"]["sampled"] >= skeleton


def test_bbsd_check_warns_when_the_output_cap_is_below_the_longest_reply(pairs, tmp_path):
    """The catalog and questions fix the longest reply the grammar allows; a cap below it cuts some replies."""
    from bbsd.engine import jump

    cfg = write_config(tmp_path, [tmp_path], pairs["bpe"], extra=QUESTIONS)
    settings = config.load(cfg, environ={})
    longest = jump.longest(prompt.reply_schema(settings.catalog, settings.questions))
    assert 768 < longest < 8192  # the test catalog and QUESTIONS' text answer of 40 characters
    low = run_bbsd("check", "--config", str(cfg), env={"BBSD_ENGINE_MAX_OUTPUT_TOKENS": "200"}, timeout=300)
    enough = run_bbsd("check", "--config", str(cfg), env={"BBSD_ENGINE_MAX_OUTPUT_TOKENS": str(longest)},
                      timeout=300)
    assert low.returncode == enough.returncode == 0, low.stdout + low.stderr[-2000:]
    assert f"max_output_tokens = 200 is below the longest reply ({longest} characters)" in low.stdout
    assert "max_output_tokens" not in enough.stdout
