"""The module that drives llama.cpp: llama-cpp-python's documented low-level bindings.

Invariants: every call into llama.cpp and libmtmd goes through here (and its sampler half,
`llama_sampler`), on the documented C API (`llama_model_load_from_file`, `llama_decode` with
explicit positions, `llama_memory_seq_rm`/`seq_cp`, sampler chains with the grammar sampler,
`mtmd_tokenize` and `mtmd_helper_eval_chunk_single`),
never through private attributes of the high-level `Llama` class; one thread owns a `Context`;
positions are whatever libmtmd says they are (M-RoPE images use fewer positions than tokens),
never a token count kept on the side; the KV cache's room is counted in cells (one per token),
never in positions.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bbsd.engine.llama import cpu
from bbsd.engine.llama.sampler import Sampler
from bbsd.errors import ModelError, PhotoError


@dataclass(frozen=True)
class Chunk:
    """One piece of a tokenized prompt: text tokens, or an image (`n_tokens` embeddings)."""

    handle: object  # the mtmd chunk, valid while its `Chunks` lives
    is_text: bool
    tokens: tuple[int, ...]  # the text's tokens; empty for an image
    n_tokens: int
    n_pos: int  # positions it takes (libmtmd's count): fewer than n_tokens for an M-RoPE image
    image_id: str = ""  # an image's id, as given to `tokenize` with its bitmap; "" for text


def _flash_type(ll, on: bool | None) -> int:
    if on is None:
        return ll.LLAMA_FLASH_ATTN_TYPE_AUTO
    return ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if on else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED


class Context:
    """A loaded text model, its llama context and its mmproj (libmtmd) context."""

    def __init__(self, model: Path, mmproj: Path, *, n_ctx: int, n_batch: int, threads: int, gpu_layers: int,
                 flash_attention: tuple[bool | None, bool | None] | bool, n_seq: int = 1) -> None:
        from bbsd import llama_binding

        ll, mtmd_cpp = llama_binding.import_llama(), llama_binding.mtmd()
        self._ll, self._m = ll, mtmd_cpp
        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = gpu_layers
        mparams.use_extra_bufts = not cpu.amx()
        self.model = ll.llama_model_load_from_file(str(model).encode(), mparams)
        if not self.model:
            raise ModelError(f"cannot load text model {model.name}",
                             "is it a complete llama.cpp GGUF? re-download it or check `bbsd check`")
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.n_vocab = ll.llama_vocab_n_tokens(self.vocab)
        self._pieces: dict[int, bytes] = {}  # token → its text: a reply asks for the same few tokens again and again
        cparams = ll.llama_context_default_params()
        # `n_seq` photos at once, each in its own sequence with up to `n_ctx` positions. One unified
        # KV cache: the prompt prefix is stored once and shared by every sequence (`share_prefix`).
        cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx * n_seq, n_batch, n_batch
        cparams.n_seq_max, cparams.kv_unified = n_seq, n_seq > 1
        cparams.n_threads = cparams.n_threads_batch = threads
        # (text model, vision encoder): True on, False off, None llama.cpp's auto (`llama_engine.flash_attention`)
        text_fa, vision_fa = flash_attention if isinstance(flash_attention, tuple) else (flash_attention,) * 2
        cparams.flash_attn_type = _flash_type(ll, text_fa)
        cparams.no_perf = True
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            ll.llama_model_free(self.model)
            raise ModelError(f"cannot create a context of {n_ctx} tokens for {model.name}",
                             "lower [engine] context_size, or free memory")
        self.n_ctx, self.n_batch, self.n_seq = n_ctx, n_batch, n_seq  # n_ctx: per sequence
        self._mtmd = self._open_mtmd(mmproj, threads, gpu_layers, vision_fa)
        self.marker = mtmd_cpp.mtmd_default_marker().decode()
        self._batch = ll.llama_batch_init(max(n_batch, n_seq), 0, 1)
        # KV cells each sequence holds, and sequence 0's after each position an evaluation ended at.
        # Cells, not positions, fill the cache: a Qwen2-VL image of 63 tokens takes 9 positions but 63 cells.
        self._cells_at: dict[int, int] = {0: 0}
        self._cells: dict[int, int] = {}

    def apply_lora(self, path: Path, scale: float) -> None:
        """Load a LoRA adapter GGUF for the text model and apply it to this context at `scale`."""
        ll = self._ll
        adapter = ll.llama_adapter_lora_init(self.model, str(path).encode())
        if not adapter:
            raise ModelError(f"cannot load LoRA adapter {path.name} for this text model",
                             "it must be a llama.cpp LoRA GGUF made for this base model (docs/producer/dataset.md); "
                             "see the llama.log event above")
        adapters = (ll.llama_adapter_lora_p_ctypes * 1)(adapter)
        if ll.llama_set_adapters_lora(self.ctx, adapters, 1, (ctypes.c_float * 1)(scale)) != 0:
            raise ModelError(f"cannot apply LoRA adapter {path.name}", "see the llama.log event above")
        self._lora = adapter  # freed with the model (llama.cpp frees a model's adapters with it)

    def _open_mtmd(self, mmproj: Path, threads: int, gpu_layers: int, flash_attention: bool | None):
        ll, m = self._ll, self._m
        params = m.mtmd_context_params_default()
        params.use_gpu = gpu_layers != 0
        params.n_threads = threads
        params.print_timings = False
        params.flash_attn_type = _flash_type(ll, flash_attention)
        ctx = m.mtmd_init_from_file(str(mmproj).encode(), self.model, params)
        if not ctx:
            self.close()
            raise ModelError(f"cannot load mmproj {mmproj.name} with this text model",
                             "the projector must belong to the text model (same family and size); see llama.log")
        if not m.mtmd_support_vision(ctx):
            m.mtmd_free(ctx)
            self.close()
            raise ModelError(f"{mmproj.name} has no vision encoder", "use the model's vision mmproj GGUF")
        return ctx

    # --- metadata and tokens --------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        size = 1 << 14
        while True:  # the call returns the full length, like snprintf: grow until it fits
            buf = ctypes.create_string_buffer(size)
            n = self._ll.llama_model_meta_val_str(self.model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.raw[:n].decode("utf-8", "replace")
            size = n + 1

    def piece(self, token: int) -> bytes:
        """`token`'s text as it belongs in a reply: a control or unknown token (`<unk>`, `<|im_start|>`)
        has none. llama.cpp's grammar reads such a token as its literal name, which it admits inside a
        free string; rendered with special=True it reached captions as the text `<unk>`."""
        cached = self._pieces.get(token)
        if cached is None:
            cached = self._pieces[token] = self._piece(token, special=False)
        return cached

    def _piece(self, token: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:  # a longer piece: -n is the size it needs
            buf = ctypes.create_string_buffer(-n)
            n = self._ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n] if n > 0 else b""

    def bos_eos(self) -> tuple[str, str]:
        """The BOS and EOS tokens' names (for the chat template), which `piece` leaves out of replies."""
        ll = self._ll
        return (self._piece(ll.llama_vocab_bos(self.vocab), special=True).decode(errors="ignore"),
                self._piece(ll.llama_vocab_eos(self.vocab), special=True).decode(errors="ignore"))

    def is_end(self, token: int) -> bool:
        return bool(self._ll.llama_vocab_is_eog(self.vocab, token))

    # Text put before forced text when tokenizing it, then dropped with its own tokens: a SentencePiece
    # vocabulary (llama.cpp's `llama` tokenizer with `tokenizer.ggml.add_space_prefix`, as InternLM2 and
    # Gemma have) starts plain text with a word-start piece (`▁`), which the anchor takes instead of the
    # reply's text. A newline and a letter: whichever merges with the text in some vocabulary, the other does not.
    ANCHORS = ("\n", "a")

    def tokens(self, text: str) -> list[int] | None:
        """Tokens whose pieces are exactly `text` (plain text, no special tokens, no BOS), to append to a
        reply; None when the tokenizer gives no such tokens (the caller samples instead).

        Tokenized alone first (byte-level BPE: exact), else behind each of `ANCHORS`, whose own tokens
        must come back unchanged in front: a word-start piece before forced text was refused by the
        grammar (jump-forward ended) or taken as a space the reply did not need."""
        raw = text.encode("utf-8")
        alone = self._tokenize(raw)
        if self._spells(alone, raw):
            return alone
        for anchor in self.ANCHORS:
            head, both = self._tokenize(anchor.encode()), self._tokenize(anchor.encode() + raw)
            rest = both[len(head):]
            if both[:len(head)] == head and self._spells(rest, raw):
                return rest
        return None

    def _spells(self, tokens: list[int], raw: bytes) -> bool:
        return bool(tokens) and b"".join(map(self.piece, tokens)) == raw

    def _tokenize(self, raw: bytes) -> list[int]:
        out = (self._ll.llama_token * (len(raw) + 8))()
        n = self._ll.llama_tokenize(self.vocab, raw, len(raw), out, len(out), False, False)
        if n < 0:
            raise PhotoError("engine_error", "tokenizing the forced reply text failed", "see the llama.log events")
        return list(out[:n])

    def tokenize(self, text: str, images: Sequence[tuple[str, Image.Image]]) -> Chunks:
        """Text with one image marker per image + the (id, image) pairs in marker order → chunks
        (text, image, text …); each image chunk carries its image's id."""
        return Chunks(self._m, self._mtmd, text, images)

    # --- evaluation -----------------------------------------------------------------------------

    def forget_from(self, pos: int) -> None:
        """Drop sequence 0's positions `pos`… from the KV cache (pos 0: everything, every sequence).

        `pos` is 0 or a position an evaluation returned: where the cache's cell count is known.
        """
        pos, mem = max(pos, 0), self._ll.llama_get_memory(self.ctx)
        if pos not in self._cells_at:
            raise ValueError(f"position {pos} is not where an evaluation ended")
        if pos == 0:
            self._ll.llama_memory_clear(mem, True)
            self._cells = {}
        elif not self._ll.llama_memory_seq_rm(mem, 0, pos, -1):
            raise PhotoError("engine_error", "the KV cache refused to drop the previous photo",
                             "the worker is restarted for the next photo")
        self._cells[0] = self._cells_at[pos]
        self._cells_at = {p: c for p, c in self._cells_at.items() if p <= pos}

    def share_prefix(self, seq: int, n_past: int) -> None:
        """Make sequence `seq` start with sequence 0's first `n_past` positions (the cached prompt
        prefix; `n_past` where an evaluation ended): in a unified KV cache the cells are shared,
        not copied."""
        mem = self._ll.llama_get_memory(self.ctx)
        self._ll.llama_memory_seq_rm(mem, seq, -1, -1)
        self._ll.llama_memory_seq_cp(mem, 0, seq, 0, n_past)
        self._cells[seq] = self._cells_at[n_past]

    @property
    def cells(self) -> int:
        """KV cells sequence 0 holds."""
        return self._cells.get(0, 0)

    def next_position(self) -> int:
        """The position after the last one sequence 0 holds (0 when empty), as llama.cpp records it."""
        return self._ll.llama_memory_seq_pos_max(self._ll.llama_get_memory(self.ctx), 0) + 1

    def _filled(self, pos: int, n_cells: int, seq: int) -> int:
        """Record that an evaluation of sequence `seq` ending at `pos` (returned) filled `n_cells` more cells."""
        self._cells[seq] = self._cells.get(seq, 0) + n_cells
        if seq == 0:
            self._cells_at[pos] = self._cells[0]
        return pos

    def eval_chunk(self, chunk: Chunk, n_past: int, logits_last: bool, seq: int = 0) -> int:
        """Evaluate one chunk at `n_past`; return the next position (libmtmd's, M-RoPE aware).

        Text goes through our own batches with explicit positions: libmtmd's helper placed a
        text chunk at position 0 whatever `n_past` it was given (llama-cpp-python 0.3.36).
        """
        if chunk.is_text:
            return self.eval_tokens(list(chunk.tokens), n_past, logits_last, seq)
        self._fits(chunk.n_tokens, seq)
        new_n_past = self._ll.llama_pos(0)
        rc = self._m.mtmd_helper_eval_chunk_single(
            self._mtmd, self.ctx, chunk.handle, self._ll.llama_pos(n_past), self._ll.llama_seq_id(seq),
            self.n_batch, logits_last, ctypes.byref(new_n_past))
        if rc != 0:
            raise PhotoError("engine_error", f"{'text' if chunk.is_text else 'image'} evaluation failed "
                             f"(mtmd code {rc})", "see the llama.log events")
        return self._filled(new_n_past.value, chunk.n_tokens, seq)

    def eval_tokens(self, tokens: list[int], n_past: int, logits_last: bool = True, seq: int = 0) -> int:
        """Append tokens to sequence `seq` at positions `n_past`…; logits for the last one when asked."""
        self._fits(len(tokens), seq)
        for start in range(0, len(tokens), self.n_batch):
            part = tokens[start:start + self.n_batch]
            self._decode([(seq, n_past + start, part, logits_last and start + len(part) == len(tokens))])
        return self._filled(n_past + len(tokens), len(tokens), seq)

    def room(self, seq: int = 0) -> int:
        """Tokens sequence `seq` may still add within its share of the context."""
        return self.n_ctx - self._cells.get(seq, 0)

    def eval_parallel(self, parts: list[tuple[int, int, list[int]]]) -> list[int]:
        """One `llama_decode` for several sequences: `(seq, n_past, tokens)` each, logits for each
        part's last token; all of it must fit one batch (`per_sequence_budget`) and each part its
        sequence's `room`, which the caller checks per photo (a full one costs that photo alone).
        Returns each part's logits row for `sample`/`choice`."""
        rows = self._decode([(seq, n_past, tokens, True) for seq, n_past, tokens in parts])
        for seq, n_past, tokens in parts:
            self._filled(n_past + len(tokens), len(tokens), seq)
        return rows

    @property
    def per_sequence_budget(self) -> int:
        """Most tokens one sequence may append in an `eval_parallel` step."""
        return self.n_batch // self.n_seq

    def _decode(self, parts: list[tuple[int, int, list[int], bool]]) -> list[int]:
        """Fill the batch with `(seq, first position, tokens, logits for the last)` parts and decode it."""
        batch, i, last = self._batch, 0, []
        for seq, n_past, tokens, logits in parts:
            for k, tok in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, n_past + k, 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = logits and k == len(tokens) - 1
                i += 1
            last.append(i - 1)
        batch.n_tokens = i
        if self._ll.llama_decode(self.ctx, batch) != 0:
            raise PhotoError("engine_error", "llama_decode failed while generating", "see the llama.log events")
        return last

    def _fits(self, n: int, seq: int) -> None:
        """Room for `n` more tokens in sequence `seq`. Counted in cells: with M-RoPE the next position
        understates the cache's use by an image's tokens less its positions, and a full cache failed
        as `engine_error`."""
        if n > self.room(seq):
            raise PhotoError("context_overflow", f"prompt needs {self.n_ctx - self.room(seq) + n} tokens, "
                             f"context has {self.n_ctx}",
                             "raise [engine] context_size or lower image_max_side")

    def sampler(self, grammar: str, temperature: float, seed: int) -> Sampler:
        return Sampler(self._ll, self.vocab, grammar, temperature, seed)

    def sample(self, sampler: Sampler, idx: int = -1) -> int:
        """Sample the next token from the logits of batch row `idx` (the last: -1) under the sampler's
        grammar (and accept it). Greedy first tries the unconstrained best token (`Sampler.greedy_pick`)."""
        if sampler.greedy:
            token = sampler.greedy_pick(self.logits(idx))
            if token is not None:
                return token
        return self._ll.llama_sampler_sample(sampler.chain, self.ctx, idx)

    def choice(self, sampler: Sampler, token: int, idx: int = -1) -> tuple[float, int | None, float]:
        """How the model weighed `token`, just sampled from the last logits: its probability among the
        tokens the grammar allowed (temperature 1), and the most probable other allowed token with its
        probability. Call before `sampler.sampled(token)`: the grammar must be where it was."""
        return sampler.choice(self.logits(idx), token)

    def logits(self, idx: int = -1):
        """Batch row `idx`'s logits over the vocabulary (the last: -1): a numpy view, valid until the
        next evaluation."""
        import numpy as np

        return np.ctypeslib.as_array(self._ll.llama_get_logits_ith(self.ctx, idx), shape=(self.n_vocab,))

    def close(self) -> None:
        ll = self._ll
        if getattr(self, "_batch", None) is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_mtmd", None):
            self._m.mtmd_free(self._mtmd)
            self._mtmd = None
        if getattr(self, "ctx", None):
            ll.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            ll.llama_model_free(self.model)
            self.model = None


class Chunks:
    """A tokenized prompt (mtmd input chunks); free with `close` (or use as a context manager)."""

    def __init__(self, m, mtmd_ctx, text: str, images: Sequence[tuple[str, Image.Image]]) -> None:
        self._m = m
        self._chunks = None
        self._bitmaps = []
        for image_id, image in images:
            self._bitmaps.append(self._bitmap(image, image_id))
        self._chunks = m.mtmd_input_chunks_init()
        raw = text.encode("utf-8")
        inp = m.mtmd_input_text()
        inp.text, inp.text_len, inp.add_special, inp.parse_special = raw, len(raw), True, True
        bitmaps = (m.mtmd_bitmap_p_ctypes * len(self._bitmaps))(*self._bitmaps)
        rc = m.mtmd_tokenize(mtmd_ctx, self._chunks, ctypes.byref(inp), bitmaps, len(self._bitmaps))
        if rc != 0:
            self.close()
            raise PhotoError("engine_error", f"mtmd_tokenize failed (code {rc})",
                             "the chat template may lack the image marker; see `bbsd check`")
        self.items = [self._chunk(m.mtmd_input_chunks_get(self._chunks, i))
                      for i in range(m.mtmd_input_chunks_size(self._chunks))]

    def _bitmap(self, image: Image.Image, image_id: str):
        m = self._m
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        data = rgb.tobytes()
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        bitmap = m.mtmd_bitmap_init(rgb.width, rgb.height, buf)
        if not bitmap:
            self.close()
            raise PhotoError("engine_error", "libmtmd refused the bitmap", "see the llama.log events")
        m.mtmd_bitmap_set_id(bitmap, image_id.encode())  # copied by libmtmd; comes back on the image's chunks
        return bitmap

    def _chunk(self, handle) -> Chunk:
        m = self._m
        if m.mtmd_input_chunk_get_type(handle) == m.MTMD_INPUT_CHUNK_TYPE_TEXT:
            n = ctypes.c_size_t()
            ptr = m.mtmd_input_chunk_get_tokens_text(handle, ctypes.byref(n))
            tokens = tuple(ptr[j] for j in range(n.value))
            return Chunk(handle, True, tokens, len(tokens), len(tokens))
        image_id = (m.mtmd_input_chunk_get_id(handle) or b"").decode()
        return Chunk(handle, False, (), m.mtmd_input_chunk_get_n_tokens(handle), m.mtmd_input_chunk_get_n_pos(handle),
                     image_id)

    def __enter__(self) -> Chunks:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        if self._chunks is not None:
            self._m.mtmd_input_chunks_free(self._chunks)
            self._chunks = None
        for bitmap in self._bitmaps:
            self._m.mtmd_bitmap_free(bitmap)
        self._bitmaps = []
