"""The replies of photos generated together, continuously: one sequence each, one `llama_decode` per step.

A photo joins the running batch between two decode steps (its image and the text after it are
evaluated into a free sequence, it samples its first token, and steps along with the others), and
leaves it as soon as its own reply is complete: the caller gets each result when it is known.

Invariants: each reply is sampled under its own grammar sampler exactly as if it were alone
(same tokens for the same choices: the batch only shares the forward pass); text the schema
fixes is appended without sampling (jump-forward, `jump.py`) but only after the grammar accepted
it; a reply that fails (its context is full) costs that photo, never the others in the batch;
a photo joins only beside photos of the same prompt (they share the cached prefix), and a retry
after a crash (`Job.alone`) only joins an empty batch and lets nothing join beside it.

A reply does not run past `max_output_tokens` unfinished: once the budget left only holds what
closes it (`Cursor.closing`: the open string, list and object, the fields not written left empty)
and the answers the model must still choose, bbsd writes that (the model choosing each answer),
and the reply's last member becomes `"cut": [fields]` (the grammar never lets a model write that
key; `labels.parse_reply` reads it), so the photo keeps its names and says what was cut instead
of failing as invalid JSON.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from bbsd.engine.confidence import Step
from bbsd.engine.labeler import Inference, Job
from bbsd.errors import AbandonedError, PhotoError

# The next job the predicate accepts (the caller decides the order: newest first), or None.
Admit = Callable[[Callable[[Job], bool]], "Job | None"]
# A job's result, as soon as it is known.
Finish = Callable[[Job, "Inference | PhotoError"], None]
# Evaluate a job's prompt into sequence `seq` (`alone`: no other reply is running) → its Reply.
Start = Callable[[Job, int, bool], "Reply"]

NAMES_END = b'"caption"'  # the key after the characters and props lists (prompt.reply_schema's order)
# Tokens kept beyond what closes the reply when deciding to close it: the next sampled token may
# make the closing longer (an escape begun) or impossible for a step (a name begun after a comma).
CLOSE_MARGIN = 6


class Reply:
    """One photo's reply in sequence `seq`, from position `n_past` on."""

    def __init__(self, ctx, seq: int, n_past: int, sampler, cursor, max_tokens: int, *, prompt_tokens: int,
                 evaluated: int, encode_ms: float, jump: bool = True) -> None:
        """`cursor`: the reply schema's `Cursor`, which closes a reply at the output cap, and with `jump`
        also appends the text the schema fixes (jump-forward); None: neither."""
        self._ctx, self.seq, self.n_past = ctx, seq, n_past
        self._sampler, self._max = sampler, max_tokens
        self._cursor, self._closer = cursor if jump else None, cursor
        self.raw = bytearray()
        self.n_out = self.n_sampled = 0
        self.steps: list[Step] = []
        self.row = -1  # the logits row of this sequence's last evaluated token
        self.error: PhotoError | None = None
        self.prompt_tokens = prompt_tokens  # tokens, not positions (an M-RoPE image has fewer positions)
        self.evaluated = evaluated  # prompt tokens evaluated for this photo (the rest was cached)
        self.encode_ms = encode_ms
        self._room: int | None = None  # `_closer_room`
        self._reserve = 0  # tokens of the answers the model must choose after a closing (`Cursor.reserve`)
        self.cut: tuple[str, ...] = ()  # the fields a closing cut short, written into `text`
        self._t0 = time.perf_counter()

    def inference(self) -> Inference | PhotoError:
        """The finished reply (or its failure); its generate time runs from its first step to now."""
        if self.error is not None:
            return self.error
        return Inference(text=self.text, prompt_tokens=self.prompt_tokens, output_tokens=self.n_out,
                         encode_ms=self.encode_ms, generate_ms=(time.perf_counter() - self._t0) * 1000,
                         evaluated_tokens=self.evaluated, sampled_tokens=self.n_sampled, steps=tuple(self.steps))

    def close(self) -> None:
        self._sampler.close()

    def advance(self, budget: int) -> list[int] | None:
        """The tokens this sequence appends next (forced text, or one sampled token); None when
        the reply is complete. At most `budget` tokens (one batch is shared by every sequence)."""
        if self.n_out >= self._max:
            return None
        if self._closer is not None:
            closed = self._close_at_cap(budget)
            if closed is not None:
                return closed or None
        forced = self._cursor.forced(self.raw.decode("utf-8", "ignore")) if self._cursor else None
        if forced is not None and forced.text:
            tokens = self._ctx.tokens(forced.text)
            if tokens is None:  # no tokens spell exactly that text: this one is sampled, the cursor stays
                return self._sample()
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

    def _close_at_cap(self, budget: int) -> list[int] | None:
        """Close the reply when the budget left only holds what closes it, the answers the model must
        still choose and a margin: [] when it is now complete (nothing to evaluate: nothing is sampled
        after it), the tokens to evaluate when the closing stops at an answer, None when not due."""
        left = self._max - self.n_out
        if left > self._closer_room:
            return None  # far from the cap: the reply is not parsed for it
        closing = self._closer.closing(self.raw.decode("utf-8", "ignore"))
        tokens = self._ctx.tokens(closing.text) if closing is not None and closing.text else None
        if tokens is None or len(tokens) + (0 if closing.complete else self._reserve) + CLOSE_MARGIN < left:
            return None
        if (not closing.complete and len(tokens) > budget) or not self._sampler.allows(tokens):
            return None  # a partial UTF-8 character the grammar waits on ends next step
        self._sampler.force(tokens)
        self.n_out += len(tokens)
        self.raw += closing.text.encode()
        self.cut += tuple(f for f in closing.cut if f not in self.cut)
        if closing.complete:
            self._closer = None
            return []
        return tokens

    @property
    def _closer_room(self) -> int:
        """The most tokens a closing can take: that of an empty reply, computed once (an upper bound on
        any later one, give or take a string's close), the answers to choose and the margin."""
        if self._room is None:
            empty, answers = self._closer.closing(""), self._closer.reserve()
            tokens = self._ctx.tokens(empty.text) if empty is not None and empty.text else None
            self._reserve = len(self._ctx.tokens(answers) or answers) if answers else 0  # tokens, else characters
            self._room = (len(tokens) if tokens else 0) + self._reserve + 2 * CLOSE_MARGIN
        return self._room

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
        """The reply; one bbsd closed ends with `"cut": [fields]` (a key the grammar gives no model)."""
        text = self.raw.decode("utf-8", errors="replace")
        whole = text.rstrip()
        if not self.cut or not whole.endswith("}"):
            return text
        return whole[:-1] + ',"cut":' + json.dumps(self.cut, separators=(",", ":")) + "}"


def serve(ctx, start: Start, admit: Admit, finish: Finish, cancelled: Callable[[], bool]) -> None:
    """Run replies until none is left and `admit` offers nothing: between steps, free sequences
    take the jobs `admit` hands over; each finished reply goes to `finish` at once."""
    batch = _Batch(ctx, start, finish)
    try:
        while True:
            if cancelled():
                raise AbandonedError("labelling abandoned at shutdown",
                                     "the photo stays pending and is redone at start")
            parts = batch.advance()
            # After the running replies sampled from their logits: a new photo's evaluation overwrites them.
            parts += batch.admit(admit)
            if not parts:
                return
            rows = ctx.eval_parallel([(r.seq, r.n_past, tokens) for r, tokens in parts])
            for (r, tokens), row in zip(parts, rows, strict=True):
                r.row, r.n_past = row, r.n_past + len(tokens)
    finally:
        batch.close()


class _Batch:
    """The running replies and the free sequences."""

    def __init__(self, ctx, start: Start, finish: Finish) -> None:
        self._ctx, self._start, self._finish = ctx, start, finish
        self._free = set(range(ctx.n_seq))
        self._running: dict[int, tuple[Job, Reply]] = {}  # by sequence

    def advance(self) -> list[tuple[Reply, list[int]]]:
        """Each running reply's next tokens; a complete (or failed) reply is finished and leaves."""
        parts = []
        for job, reply in list(self._running.values()):
            self._step(job, reply, parts)
        return parts

    def admit(self, admit: Admit) -> list[tuple[Reply, list[int]]]:
        """New replies in the free sequences, each with its first tokens (sampled from its own prompt's logits)."""
        parts = []
        while self._free:
            job = admit(self._accepts)
            if job is None:
                break
            seq = min(self._free)  # sequence 0 holds the prefix: an empty batch starts there
            try:
                reply = self._start(job, seq, not self._running)
            except PhotoError as e:
                self._finish(job, e)
                continue
            self._free.discard(seq)
            self._running[seq] = (job, reply)
            self._step(job, reply, parts)
        return parts

    def _step(self, job: Job, reply: Reply, parts: list[tuple[Reply, list[int]]]) -> None:
        """The reply's next tokens into `parts`; a complete (or failed) reply is finished instead."""
        tokens = self._next(reply)
        if tokens is None:
            self._done(job, reply)
        else:
            parts.append((reply, tokens))

    def _accepts(self, job: Job) -> bool:
        if not self._running:
            return True
        # A retry after a crash goes alone: a photo that crashed the worker must not take others down
        # twice. A varied retry (`attempt` 1, an invalid reply) has its own sampler like any other.
        others = [other for other, _ in self._running.values()]
        return not job.alone and all(not other.alone and job.same_prefix(other) for other in others)

    def _next(self, r: Reply) -> list[int] | None:
        tokens = r.advance(self._ctx.per_sequence_budget)
        if tokens is not None and len(tokens) > self._ctx.room(r.seq):
            r.error = PhotoError("context_overflow", f"the reply needs more than the {self._ctx.n_ctx} tokens of "
                                 "context", "raise [engine] context_size or lower max_output_tokens")
            return None
        return tokens

    def _done(self, job: Job, reply: Reply) -> None:
        del self._running[reply.seq]
        self._free.add(reply.seq)  # its cells are dropped when the sequence is taken again
        reply.close()
        self._finish(job, reply.inference())

    def close(self) -> None:
        for _, reply in self._running.values():
            reply.close()
        self._running = {}
