"""Greedy under the grammar without masking the whole vocabulary: the widening tiers of the strongest
logits find the token the full mask would choose, or give up (never a different token)."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest

from bbsd.engine.llama.sampler import Sampler
from bbsd.llama_binding import import_llama
from bbsd.models import tiny as tiny_model

N_VOCAB = 40_000


@pytest.fixture(scope="module")
def sampler(tmp_path_factory):
    """A greedy sampler whose grammar allows a handful of tokens next (a letter a-e), over a vocabulary
    of a real model's size."""
    models = tiny_model.write_pair(tmp_path_factory.mktemp("vocab"), tiny_model.TinySpec(n_vocab=N_VOCAB))
    llm = llama_cpp.Llama(str(models[0]), vocab_only=True, verbose=False)
    s = Sampler(import_llama(), llama_cpp.llama_model_get_vocab(llm.model), "root ::= [a-e] [a-z]*", 0.0, 0)
    yield s
    s.close()
    llm.close()


def _full_mask(sampler: Sampler, logits) -> int:
    """What masking the whole vocabulary chooses: the allowed token of the highest logit, lowest id on a tie."""
    allowed = sampler._allowed(np.arange(len(logits)), logits)
    high = allowed["logit"].max()
    return int(allowed["id"][allowed["logit"] == high].min())


def _planted(sampler: Sampler, rank: int, seed: int):
    """Random logits where the best allowed token is the `rank`-th strongest of the vocabulary."""
    logits = np.random.default_rng(seed).normal(0.0, 3.0, N_VOCAB).astype(np.float32)
    allowed = sampler._allowed(np.arange(N_VOCAB), np.zeros(N_VOCAB, np.float32))["id"]
    assert 3 <= len(allowed) <= 50  # the grammar allows a handful: the case the tiers are for
    logits[allowed] = logits.min() - 1.0  # all below everything else…
    order = np.argsort(-logits, kind="stable")
    logits[allowed[len(allowed) // 2]] = (logits[order[rank - 1]] + logits[order[rank]]) / 2 if rank else \
        logits.max() + 1.0  # …but one, placed between the (rank-1)-th and the rank-th strongest
    return logits


@pytest.mark.parametrize("rank", [0, 1, 100, 255, 256, 1000, 2047, 2048, 9000, 16382])
def test_the_tiers_choose_what_the_full_mask_chooses(sampler, rank):
    for seed in range(3):
        logits = _planted(sampler, rank, seed)
        assert sampler._best_allowed(logits, float(logits.max())) == _full_mask(sampler, logits)


@pytest.mark.parametrize("rank", [16383, 16384, 30000])
def test_past_the_last_tier_the_caller_masks_the_vocabulary(sampler, rank):
    """(The weakest token of a tier could tie with one outside it: that is left to the full mask too.)"""
    logits = _planted(sampler, rank, 0)
    assert sampler._best_allowed(logits, float(logits.max())) is None


def test_a_tie_takes_the_lowest_id_and_a_tie_with_the_cut_is_never_decided_by_it(sampler):
    logits = _planted(sampler, 500, 0)
    allowed = sampler._allowed(np.arange(N_VOCAB), np.zeros(N_VOCAB, np.float32))["id"]
    logits[allowed[-1]] = logits[allowed[len(allowed) // 2]]  # two allowed tokens tie for the best
    assert sampler._best_allowed(logits, float(logits.max())) == int(min(allowed[-1], allowed[len(allowed) // 2]))
    # every token from the 2048th strongest on shares one logit, the allowed ones among them: each tier
    # cuts through the tie, where a token left outside could have the lower id, so none decides
    logits = np.random.default_rng(1).normal(0.0, 3.0, N_VOCAB).astype(np.float32)
    logits[allowed] = logits.min() - 1.0
    order = np.argsort(-logits, kind="stable")
    logits[order[2047:]] = logits[order[2047]]
    assert sampler._best_allowed(logits, float(logits.max())) is None


def test_banned_tokens_at_minus_infinity_change_nothing(sampler):
    """A -inf logit (a token banned by a bias) once made the tiers' margin infinite and looped forever."""
    logits = _planted(sampler, 5000, 0)
    logits[::7] = -np.inf
    allowed = sampler._allowed(np.arange(N_VOCAB), np.zeros(N_VOCAB, np.float32))["id"]
    logits[allowed[len(allowed) // 2]] = np.sort(logits)[-5001]  # the 5,001st strongest again
    assert sampler._best_allowed(logits, float(logits.max())) == _full_mask(sampler, logits)


@pytest.mark.parametrize("n_vocab", [40_000, 151_936, 262_144])
def test_each_tier_holds_its_size_at_real_vocabulary_sizes(n_vocab):
    """Halving the margin must not shrink a wider tier below its size (at 152k tokens the second and
    third tiers once held the same 1,479 tokens)."""
    s = Sampler.__new__(Sampler)
    logits = np.random.default_rng(0).normal(0.0, 3.0, n_vocab).astype(np.float32)
    best = float(logits.max())
    spread = best - float(logits.min()) + 1.0
    for top in Sampler.PICK_TIERS[1:]:
        assert len(s._band(logits, best, float("inf"), top, spread, whole_tier=True)) == top
