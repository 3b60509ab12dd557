"""The replies of a batch of photos, generated together: one sequence each, one `llama_decode` per step.

Invariants: each reply is sampled under its own grammar sampler exactly as if it were alone
(same tokens for the same choices: the batch only shares the forward pass); text the schema
fixes is appended without sampling (jump-forward, `jump.py`) but only after the grammar accepted
it; a reply that fails (its context is full) costs that photo, never the others in the batch.
"""

from __future__ import annotations

from collections.abc import Callable

from bbsd.confidence import Step
from bbsd.errors import AbandonedError, PhotoError

NAMES_END = b'"caption"'  # the key after the characters and props lists (prompt.reply_schema's order)


class Reply:
    """One photo's reply in sequence `seq`, from position `n_past` on."""

    def __init__(self, ctx, seq: int, n_past: int, sampler, cursor, max_tokens: int, *, prompt_tokens: int,
                 evaluated: int, encode_ms: float) -> None:
        self._ctx, self.seq, self.n_past = ctx, seq, n_past
        self._sampler, self._cursor, self._max = sampler, cursor, max_tokens
        self.raw = bytearray()
        self.n_out = self.n_sampled = 0
        self.steps: list[Step] = []
        self.row = -1  # the logits row of this sequence's last evaluated token
        self.error: PhotoError | None = None
        self.prompt_tokens = prompt_tokens  # tokens, not positions (an M-RoPE image has fewer positions)
        self.evaluated = evaluated  # prompt tokens evaluated for this photo (the rest was cached)
        self.encode_ms = encode_ms

    def close(self) -> None:
        self._sampler.close()

    def advance(self, budget: int) -> list[int] | None:
        """The tokens this sequence appends next (forced text, or one sampled token); None when
        the reply is complete. At most `budget` tokens (one batch is shared by every sequence)."""
        if self.n_out >= self._max:
            return None
        forced = self._cursor.forced(self.raw.decode("utf-8", "ignore")) if self._cursor else None
        if forced is not None and forced.text:
            tokens = self._ctx.tokens(forced.text)
            if self._sampler.allows(tokens) and self.n_out + len(tokens) <= self._max:
                part = tokens if len(tokens) <= budget else tokens[:budget]
                self._sampler.force(part)
                self.raw += forced.text.encode() if part is tokens else b"".join(map(self._ctx.piece, part))
                self.n_out += len(part)
                # the last forced text needs no evaluation: nothing is sampled after it
                return None if forced.complete and part is tokens else part
            self._cursor = None  # the grammar disagrees: plain sampling from here on
        elif forced is not None and forced.complete:
            return None
        elif forced is None:
            self._cursor = None
        return self._sample()

    def _sample(self) -> list[int] | None:
        ctx, sampler = self._ctx, self._sampler
        token = ctx.sample(sampler, self.row)
        if ctx.is_end(token):
            return None
        piece = ctx.piece(token)
        if NAMES_END not in self.raw:  # the names come first in the reply: only their choices are weighed
            p, alt, alt_p = ctx.choice(sampler, token, self.row)
            start = len(self.raw.decode("utf-8", "ignore"))
            alt_text = ctx.piece(alt).decode("utf-8", "replace") if alt is not None else None
            self.steps.append(Step(start, start + len(piece.decode("utf-8", "ignore")), p, alt_text, alt_p))
        sampler.sampled(token)
        self.raw += piece
        self.n_out, self.n_sampled = self.n_out + 1, self.n_sampled + 1
        return [token]

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", errors="replace")


def generate(ctx, replies: list[Reply], cancelled: Callable[[], bool]) -> None:
    """Run every reply to its end, all active sequences in one decode per step."""
    active = list(replies)
    budget = ctx.per_sequence_budget
    while active:
        if cancelled():
            raise AbandonedError("labelling abandoned at shutdown", "the photo stays pending and is redone at start")
        parts, stepping = [], []
        for r in active:
            tokens = r.advance(budget)
            if tokens is None:
                continue
            if len(tokens) > ctx.room(r.seq):
                r.error = PhotoError("context_overflow", f"the reply needs more than the {ctx.n_ctx} tokens of "
                                     "context", "raise [engine] context_size or lower max_output_tokens")
                continue
            parts.append((r.seq, r.n_past, tokens))
            stepping.append(r)
        if not parts:
            return
        for r, row, (_, _, tokens) in zip(stepping, ctx.eval_parallel(parts), parts, strict=True):
            r.row, r.n_past = row, r.n_past + len(tokens)
        active = stepping
