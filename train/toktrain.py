"""Tokenizers trained for the toy show: a byte-level BPE one and a SentencePiece-style one (byte fallback,
`▁` word starts), whose vocabularies hold bbsd's prompt and reply words as whole tokens.

Invariants: deterministic (the `tokenizers` package's BPE trainer on a fixed corpus: the same corpus gives
the same merges); the result is a `TinySpec.merges` tuple, written into the text GGUF by
`bbsd.models.gguf_pair`, so llama.cpp tokenizes as `encoder` (the trainer's own tokenizer, built from the
GGUF's vocabulary) does: tests/models/test_toy_tokenizers.py holds that for the prompt and a reply.
Training-only (the `tokenizers` package, from the `convert` extra).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from bbsd.models import gguf_pair
from bbsd.models.gguf_pair import SPECIAL_TOKENS, SPM_SPACE, TinySpec

VOCAB_SIZE = 1024  # pieces the trainer may make (alphabet included): every prompt and reply word fits
# The merges kept: a word, with or without its leading space. No piece holds punctuation, so the reply's JSON
# is one token a mark however it is cut: bbsd's engine writes the parts the grammar forces (`{"characters":[`,
# the rest of a name) by tokenizing them alone (jump-forward), and a model trained on `":["` as one token
# would meet `":[` then `"` and answer `]` (measured: every list empty on the held-out show).
WORDLIKE = re.compile(f"^[Ġ{SPM_SPACE}]?[A-Za-z0-9]+$")


def train_merges(kind: str, corpus: Iterable[str], vocab_size: int = VOCAB_SIZE) -> tuple[str, ...]:
    """BPE merges learnt from `corpus` for `kind` ("bpe": byte-level, GPT-2's pre-tokenizer; "spm": `▁` for
    a space, words split at spaces), in rank order, as `TinySpec.merges` wants them."""
    tok = Tokenizer(models.BPE(byte_fallback=kind == "spm"))
    _pre(tok, kind)
    alphabet = pre_tokenizers.ByteLevel.alphabet() if kind == "bpe" else []
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=alphabet, special_tokens=list(SPECIAL_TOKENS))
    tok.train_from_iterator(list(corpus), trainer)
    merges = (m if isinstance(m, str) else " ".join(m) for m in json.loads(tok.to_str())["model"]["merges"])
    return tuple(m for m in merges if WORDLIKE.match(m.replace(" ", "")))


def _pre(tok: Tokenizer, kind: str) -> None:
    if kind == "bpe":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:  # llama.cpp's `llama` tokenizer: a space before each text fragment, spaces as `▁`
        tok.normalizer = normalizers.Replace(" ", SPM_SPACE)
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPM_SPACE, prepend_scheme="always", split=True)


def encoder(spec: TinySpec) -> Tokenizer:
    """The trainer's tokenizer for `spec`'s trained vocabulary, with the GGUF's token ids (specials parsed)."""
    vocab = {t: i for i, t in enumerate(gguf_pair.vocabulary(spec))}
    merges = [tuple(m.split(" ")) for m in spec.merges]
    if spec.tokenizer == "bpe":
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    else:
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token=gguf_pair.SPM_UNKNOWN))
    _pre(tok, spec.tokenizer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok
