"""Catalog names as people type them: every name the config accepts gives a grammar that the real
llama.cpp parses and that admits exactly that name; names that cannot work are refused by the config."""

from __future__ import annotations

import ctypes
import json
import math

import llama_cpp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bbsd import config
from bbsd.engine import labels, prompt
from bbsd.engine.llama.sampler import check_grammar
from bbsd.errors import ConfigError, PhotoError

MINIMAL = '[watch]\nfolders = ["in"]\n[model]\nbackend = "fake"\n'


@pytest.fixture(scope="module")
def vocab_model(tiny_models):
    """The tiny model's tokenizer: llama.cpp's grammar sampler needs a vocabulary."""
    llm = llama_cpp.Llama(str(tiny_models[0]), vocab_only=True, verbose=False)
    yield llm
    llm.close()


def toml_string(text: str) -> str:
    """A TOML basic string for any text (TOML escapes quotes, backslashes and control characters)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def load_catalog(tmp_path, characters, props):
    body = "".join(f"[[characters]]\nname = {toml_string(n)}\n" for n in characters)
    body += "".join(f"[[props]]\nname = {toml_string(n)}\n" for n in props)
    path = tmp_path / "bbsd.toml"
    path.write_text(MINIMAL + body, encoding="utf-8")
    return config.load(path, environ={})


def allowed_tokens(sampler, n_vocab: int) -> set[int]:
    data = (llama_cpp.llama_token_data * n_vocab)(*[llama_cpp.llama_token_data(i, 0.0, 0.0) for i in range(n_vocab)])
    array = llama_cpp.llama_token_data_array(data, n_vocab, -1, False)
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
    return {data[i].id for i in range(array.size) if data[i].logit != -math.inf}


def grammar_accepts(llm, grammar: str, reply: str) -> bool:
    """Feed `reply` token by token through llama.cpp's grammar sampler; True if all of it, then the end, is allowed."""
    vocab = llm._model.vocab
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    assert sampler, "llama.cpp could not parse the grammar"
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    try:
        for token in llm.tokenize(reply.encode(), add_bos=False, special=False):
            if token not in allowed_tokens(sampler, n_vocab):
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return llm.token_eos() in allowed_tokens(sampler, n_vocab)
    finally:
        llama_cpp.llama_sampler_free(sampler)


def reply_naming(characters, props) -> str:
    return json.dumps({"characters": list(characters), "props": list(props), "caption": "c", "scene": "s",
                       "visible_text": []}, ensure_ascii=False)


names = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=24)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(characters=st.lists(names, min_size=1, max_size=3), props=st.lists(names, max_size=2))
def test_every_accepted_name_parses_in_llama_cpp_and_comes_back_intact(tmp_path, vocab_model, characters, props):
    try:
        settings_ = load_catalog(tmp_path, characters, props)
    except ConfigError as e:  # refused: one line that names the entry
        assert "].name]" in e.one_line() and "\n" not in e.message
        return
    catalog = settings_.catalog
    p = prompt.build(catalog)
    reply = reply_naming(catalog.character_names(), catalog.prop_names())
    assert grammar_accepts(vocab_model, p.grammar, reply)
    parsed = labels.parse_reply(reply, catalog)
    assert parsed.characters == catalog.character_names() and parsed.props == catalog.prop_names()


def test_names_that_broke_the_engine_now_work_and_others_are_refused(tmp_path, vocab_model):
    settings_ = load_catalog(tmp_path, ['Mr. "Moon"', "Баба Яга", "back\\slash", "O'Brien"], ["lantern"])
    p = prompt.build(settings_.catalog)
    assert grammar_accepts(vocab_model, p.grammar, reply_naming(['Mr. "Moon"', "Баба Яга"], []))
    assert not grammar_accepts(vocab_model, p.grammar, reply_naming(["Mr. "], []))  # the literal does not end early
    assert not grammar_accepts(vocab_model, p.grammar, reply_naming(["Koschei"], []))  # only catalog names
    with pytest.raises(ConfigError, match=r"\[characters\[1\]\.name\] 'Fox\|Wolf' contains '\|'"):
        load_catalog(tmp_path, ["Mr. \"Moon\"", "Fox|Wolf", "Баба Яга"], [])


def test_a_grammar_llama_cpp_cannot_parse_is_refused_not_crashed_on(vocab_model):
    # What llama-cpp-python's json_schema_to_gbnf wrote for the name Mr. "Moon": the literal ends early.
    broken = 'root ::= "\\"Mr. \\\\"Moon\\\\"\\""\n'
    with pytest.raises(PhotoError) as e:
        check_grammar(llama_cpp.llama_model_get_vocab(vocab_model.model), broken)
    assert e.value.code == "grammar_invalid"
