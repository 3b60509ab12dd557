"""The reply grammar's samplers on llama.cpp's sampler API (split from `llama_native`, which uses them).

Invariants: a grammar llama.cpp's own parser refuses is `GrammarError`, never a NULL sampler that
would crash at the first token; a `Sampler`'s judge follows every accepted token, so text can be
checked against the grammar before anything accepts it.
"""

from __future__ import annotations

import ctypes

from bbsd.errors import PhotoError


class GrammarError(PhotoError):
    def __init__(self) -> None:
        super().__init__("grammar_invalid", "llama.cpp cannot parse the reply grammar built from the catalog",
                         "see the llama.log event above; rename the catalog entry it names, and report it")


def check_grammar(vocab, text: str) -> None:
    """Raise `GrammarError` unless llama.cpp's own parser accepts the GBNF `text`."""
    from bbsd.backends import import_llama

    ll = import_llama()

    sampler = ll.llama_sampler_init_grammar(vocab, text.encode(), b"root")
    if not sampler:
        raise GrammarError()
    ll.llama_sampler_free(sampler)


class Sampler:
    """A sampler chain: the reply grammar, then greedy (temperature 0) or temperature + seeded draw.

    A second instance of the grammar (`_judge`) follows every accepted token, so that text the
    caller wants to append without sampling can be checked before anything accepts it.
    """

    def __init__(self, ll, vocab, grammar: str, temperature: float, seed: int) -> None:
        self._ll = ll
        self.chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        g = ll.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        self._judge = ll.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        if not g or not self._judge:  # llama.cpp's parser refused it: a NULL sampler would crash at the first token
            ll.llama_sampler_free(self.chain)
            raise GrammarError()
        ll.llama_sampler_chain_add(self.chain, g)
        if temperature > 0:
            ll.llama_sampler_chain_add(self.chain, ll.llama_sampler_init_temp(temperature))
            ll.llama_sampler_chain_add(self.chain, ll.llama_sampler_init_dist(seed))
        else:
            ll.llama_sampler_chain_add(self.chain, ll.llama_sampler_init_greedy())

    def sampled(self, token: int) -> None:
        """The chain accepted `token` while sampling it; the judge follows."""
        self._ll.llama_sampler_accept(self._judge, token)

    def allows(self, tokens: list[int]) -> bool:
        """Whether the grammar accepts these tokens next (checked on a copy: nothing is accepted)."""
        ll = self._ll
        probe = ll.llama_sampler_clone(self._judge)
        try:
            one = ll.llama_token_data(0, 0.0, 0.0)
            arr = ll.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
            for token in tokens:
                one.id, one.logit = token, 0.0
                ll.llama_sampler_apply(probe, ctypes.byref(arr))
                if one.logit == float("-inf"):
                    return False
                ll.llama_sampler_accept(probe, token)
            return True
        finally:
            ll.llama_sampler_free(probe)

    # Only the strongest raw logits go through the grammar: applying it to a 150k vocabulary costs
    # milliseconds, and the mass beyond the top 256 is negligible for a softmax over what is allowed.
    CHOICE_TOP = 256

    def choice(self, logits, token: int) -> tuple[float, int | None, float]:
        """`token`'s probability among the allowed tokens of the top logits, and the best other allowed one."""
        import numpy as np

        ll = self._ll
        k = min(self.CHOICE_TOP, len(logits))
        ids = np.argpartition(logits, -k)[-k:] if k < len(logits) else np.arange(len(logits))
        if token not in ids:
            ids = np.append(ids, token)
        data = (ll.llama_token_data * len(ids))()
        for j, t in enumerate(ids.tolist()):
            data[j].id, data[j].logit, data[j].p = t, float(logits[t]), 0.0
        arr = ll.llama_token_data_array(data, len(ids), -1, False)
        ll.llama_sampler_apply(self._judge, ctypes.byref(arr))  # masks what the grammar forbids now
        allowed = [(d.id, d.logit) for d in data[:arr.size] if d.logit != float("-inf")]
        if not allowed:
            return 1.0, None, 0.0
        top = max(lg for _, lg in allowed)
        weights = {t: float(np.exp(lg - top)) for t, lg in allowed}
        total = sum(weights.values())
        others = [(w, t) for t, w in weights.items() if t != token]
        best = max(others) if others else None
        return (weights.get(token, 0.0) / total, best[1] if best else None, best[0] / total if best else 0.0)

    def force(self, tokens: list[int]) -> None:
        """Accept tokens that were appended without sampling (after `allows`)."""
        for token in tokens:
            self._ll.llama_sampler_accept(self.chain, token)
            self._ll.llama_sampler_accept(self._judge, token)

    def close(self) -> None:
        if self.chain is not None:
            self._ll.llama_sampler_free(self.chain)
            self._ll.llama_sampler_free(self._judge)
            self.chain = None
