"""The reply grammar's samplers on llama.cpp's sampler API (split from `llama_native`, which uses them).

Invariants: a grammar llama.cpp's own parser refuses is `GrammarError`, never a NULL sampler that
would crash at the first token; a `Sampler`'s judge follows every accepted token, so text can be
checked against the grammar before anything accepts it.
"""

from __future__ import annotations

import ctypes
import functools

from bbsd.errors import PhotoError


@functools.cache
def _token_data():
    import numpy as np  # imported with the first photo, not with this module (the CLI starts faster)

    return np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # struct llama_token_data


class GrammarError(PhotoError):
    def __init__(self) -> None:
        super().__init__("grammar_invalid", "llama.cpp cannot parse the reply grammar built from the catalog",
                         "see the llama.log event above; rename the catalog entry it names, and report it")


def check_grammar(vocab, text: str) -> None:
    """Raise `GrammarError` unless llama.cpp's own parser accepts the GBNF `text`."""
    from bbsd.llama_binding import import_llama

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
        self.greedy = temperature <= 0
        self.fast = 0  # tokens taken by `greedy_pick` without applying the grammar to the whole vocabulary
        self.masked = 0  # tokens for which `greedy_pick` gave up: the caller masked the whole vocabulary
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

    def greedy_pick(self, logits) -> int | None:
        """The greedy choice under the grammar, found among the strongest logits only, and accepted by
        the chain; None when it cannot be decided there (the caller masks the whole vocabulary).

        Masking a 150k vocabulary through the grammar costs milliseconds a token (about 12 ms on an
        H200's host); llama.cpp's own common sampler first checks the best token alone. Here, when the
        grammar refuses it, the strongest logits go through the grammar in widening tiers
        (`PICK_TIERS`): the best allowed one in a tier is the best allowed one overall, as every token
        outside has a lower logit (a tie with the cut goes on to the next tier, and past the last to
        the full mask, so the cut never decides). Ties inside take the lowest id, as llama.cpp's
        greedy sampler does. Where the grammar allows only a few tokens (a quote, a bracket) and the
        model favours others (a random model often does), the wider tiers find them for a fraction of
        the full mask.
        """
        import numpy as np

        token = int(logits.argmax())
        if not self._allowed(np.array([token]), logits).size:
            token = self._best_allowed(logits, float(logits[token]))
            if token is None:
                self.masked += 1
                return None
        self._ll.llama_sampler_accept(self.chain, token)
        self.fast += 1
        return token

    def _best_allowed(self, logits, best: float) -> int | None:
        """The allowed token of the highest logit (lowest id on a tie) among the strongest `PICK_TIERS`,
        or None when no tier decides it. A tier is the `top` strongest logits at any distance from the best."""
        spread = 0.0  # the first tier within CHOICE_MARGIN (found in fewer passes); the others at any distance
        for i, top in enumerate(self.PICK_TIERS):
            if i == 1:  # only a token the first tier could not decide pays for the spread
                spread = self._spread(logits, best)
            ids = self._band(logits, best, float("inf"), top, spread, whole_tier=i > 0)
            allowed = self._allowed(ids, logits)
            whole = len(ids) >= len(logits)
            if allowed.size:
                high = allowed["logit"].max()
                if whole or high > logits[ids].min():
                    return int(allowed["id"][allowed["logit"] == high].min())
            if whole:
                return None
        return None

    @staticmethod
    def _spread(logits, best: float) -> float:
        """A margin that holds every finite logit (a -inf one, a banned token, must not make it infinite)."""
        import numpy as np

        finite = logits[np.isfinite(logits)]
        return best - float(finite.min()) + 1.0 if finite.size else 1.0

    def _candidates(self, logits, best: int):
        """The ids of the strongest logits: within CHOICE_MARGIN of the best, at most CHOICE_TOP of them."""
        return self._band(logits, float(logits[best]), float("inf"))

    def _band(self, logits, ref: float, high: float, top: int = 0, margin: float = 0.0, whole_tier: bool = False):
        """The ids of at most `top` (CHOICE_TOP) of the strongest logits in [ref - margin, high] (margin:
        CHOICE_MARGIN). The margin halves while the band holds far more than `top`: a model whose logits lie
        close together would otherwise put the whole vocabulary in it, and then picking from it costs more
        than the grammar saves. `whole_tier`: never halve below `top` (a greedy tier must hold its size;
        the first band may be smaller, which is cheaper and still exact)."""
        import numpy as np

        top = top or self.CHOICE_TOP
        margin = margin or self.CHOICE_MARGIN
        mask = (logits >= ref - margin) & (logits <= high)
        n = int(np.count_nonzero(mask))
        while n > 4 * top and margin >= 1.0:
            narrower = (logits >= ref - margin / 2) & (logits <= high)
            m = int(np.count_nonzero(narrower))
            if whole_tier and m < top:
                break
            mask, n, margin = narrower, m, margin / 2
        ids = np.flatnonzero(mask)
        if n > top:
            ids = ids[np.argpartition(logits[ids], -top)[-top:]]
        return ids

    def _allowed(self, ids, logits):
        """The (id, logit) records of `ids` the grammar allows next (checked by the judge, which is where
        the chain's grammar is; nothing is accepted)."""
        import numpy as np

        ll = self._ll
        data = np.zeros(len(ids), dtype=_token_data())  # llama_token_data's layout, filled without a Python loop
        data["id"], data["logit"] = ids, logits[ids]
        arr = ll.llama_token_data_array(data.ctypes.data_as(ctypes.POINTER(ll.llama_token_data)), len(ids), -1, False)
        ll.llama_sampler_apply(self._judge, ctypes.byref(arr))
        return data[:arr.size][np.isfinite(data["logit"][:arr.size])]

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
    # milliseconds, and a token 30 below the best weighs e^-30 of it in a softmax over what is allowed.
    # Found by comparisons (`_band`), not a sort of the whole vocabulary: a partial sort of 150k logits
    # costs up to a millisecond, which every sequence of a batch would pay on every step.
    CHOICE_TOP = 256
    CHOICE_MARGIN = 30.0
    # Greedy's tiers: the grammar costs about 0.08 us a candidate, so the widest tier costs ~1.3 ms
    # where the full mask costs ~12 ms.
    PICK_TIERS = (256, 2048, 16384)

    def choice(self, logits, token: int) -> tuple[float, int | None, float]:
        """`token`'s probability among the allowed tokens of the top logits, and the best other allowed one."""
        import numpy as np

        # The allowed tokens that matter are those near `token`'s own logit: a greedy token is the best
        # allowed one, so everything above it is refused (the band stops there); a drawn one may have
        # allowed tokens above it too.
        ref = float(logits[token])
        ids = self._band(logits, ref, ref if self.greedy else ref + self.CHOICE_MARGIN)
        if token not in ids:
            ids = np.append(ids, token)
        allowed = self._allowed(ids, logits)
        if not len(allowed):
            return 1.0, None, 0.0
        weights = np.exp(allowed["logit"].astype(np.float64) - allowed["logit"].max())
        total = float(weights.sum())
        mine = allowed["id"] == token
        p = float(weights[mine].sum()) / total
        weights[mine] = -1.0
        if not (~mine).any():
            return p, None, 0.0
        best = int(weights.argmax())
        return p, int(allowed["id"][best]), float(weights[best]) / total

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
