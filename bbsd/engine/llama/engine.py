"""`llama` backend: a GGUF text model and its mmproj, in-process through llama.cpp + libmtmd.

Invariants: one thread owns the model (the worker's); pixels reach libmtmd as an RGB bitmap,
never as a re-encoded file; the reply is sampled under a grammar that bbsd writes itself
(`grammar.py`) and that llama.cpp's own parser accepted (a grammar it rejects is refused as
`grammar_invalid`, never handed to the sampler); the chat template is the one inside the GGUF;
the prompt prefix (system text, catalog, the reference gallery: everything before the photo's
image) is evaluated once per prompt and kept in the KV cache, keyed by its text tokens and its
images' ids (a reference's content digest), so a photo costs its image, the short text after it
and the reply. Reference photos are decoded here, in the worker (`references.Images`), never in
the daemon. llama.cpp itself is reached only through `llama_native`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from PIL import Image

from bbsd.engine.jump import Cursor
from bbsd.engine.labeler import UNNAMED, Inference, Job, ModelInfo, PhotoRef
from bbsd.engine.llama import families
from bbsd.engine.llama import log as llama_log
from bbsd.engine.llama import replies as replies_mod
from bbsd.engine.prompt import Prompt
from bbsd.errors import ModelError, PhotoError
from bbsd.show import references

log = structlog.get_logger("bbsd.engine")

# Used only when a GGUF carries no chat template; ChatML is what most VLM GGUFs use.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for p in m['content'] %}{{ p['text'] }}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
RETRY_TEMPERATURE = 0.7
PHOTO_ID = "photo"  # the photo's image id; a reference image's id is its content digest


def _check_file(path: Path | None, what: str) -> Path:
    if path is None or not path.is_file():
        raise ModelError(f"{what} {path} not found",
                         "put the GGUF pair in gguf_models/ and set [model] path and mmproj (gguf_models/README.md)")
    if not os.access(path, os.R_OK):
        raise ModelError(f"{what} {path} is not readable", "check its permissions for the bbsd user")
    return path


def resolve_threads(configured: int) -> int:
    if configured > 0:
        return configured
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


class LlamaLabeler:
    """Holds the loaded model; `infer` labels one image, reusing the cached prompt prefix."""

    concurrency = 1  # one thread drives the context; `serve` labels up to `parallel` photos at once

    def __init__(self, model_path: Path, mmproj_path: Path, engine) -> None:
        llama_log.install()
        from bbsd.engine.llama import compute as backends
        from bbsd.engine.llama import native as llama_native
        from bbsd.models import registry as models

        backends.load()
        self._engine = engine
        self.info = ModelInfo(backend="llama", file=model_path.name, mmproj=mmproj_path.name,
                              lora=engine.lora.name if engine.lora else None)
        self.gpu = engine.gpu_layers != 0
        self._family = families.for_projector(models.inspect(mmproj_path).projector)
        self.fit = families.fitter(self._family, mmproj_path)  # InternVL: its own tile grid (tiling.py)
        layers = backends.gpu_layers(engine.gpu_layers, model_path, mmproj_path, engine.context_size)
        self.parallel = resolve_parallel(engine.parallel, layers)
        self._ctx = llama_native.Context(
            model_path, mmproj_path, n_ctx=engine.context_size, n_batch=batch_size(engine.context_size),
            threads=resolve_threads(engine.threads), gpu_layers=layers,
            flash_attention=flash_attention(engine.flash_attention, layers), n_seq=self.parallel)
        if engine.lora:
            self._ctx.apply_lora(_check_file(engine.lora, "LoRA adapter"), engine.lora_scale)
        self._template = self._compile_template()
        self._prefix = Prefix()
        # reference photos fitted once, when decoded (an InternVL 4:3 resize is ~35 ms: not again every photo)
        self._references = references.Images(lambda path, side: self.fit(_decode_reference(path, side)))

    def _compile_template(self):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        text = self._ctx.meta("tokenizer.chat_template")
        if not text:
            text = self._family.fallback_template or FALLBACK_TEMPLATE
            log.warning("engine.no_chat_template", model=self.info.file,
                        using="family" if self._family.fallback_template else "chatml")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(text)

    def _render(self, prompt: Prompt, marker: str) -> str:
        """The chat: system text, then the reference gallery (each image, then its caption line), then the
        photo and the instruction in the family's order. Without references, exactly the chat of before."""
        image, ask = {"type": "text", "text": marker + "\n"}, {"type": "text", "text": prompt.user}
        parts = [image, ask] if self._family.image_first else [ask, image]
        if prompt.references:
            gallery = [{"type": "text", "text": f"{marker}\n{item.line()}\n"} for item in prompt.references]
            parts = [{"type": "text", "text": references.INTRO + "\n"}, *gallery, *parts]
        if self._family.system_role:
            messages = [{"role": "system", "content": prompt.system}, {"role": "user", "content": parts}]
        else:
            messages = [{"role": "user", "content": [{"type": "text", "text": prompt.system + "\n\n"}, *parts]}]

        def raise_exception(message: str):
            raise ModelError(f"chat template refused the prompt: {message}", "report this model to the bbsd team")

        bos, eos = self._ctx.bos_eos()
        specials = {"bos_token": bos, "eos_token": eos}
        try:
            return self._template.render(messages=messages, add_generation_prompt=True,
                                         raise_exception=raise_exception, **specials)
        except TypeError:
            # Older templates (InternVL2's InternLM2 ChatML: `'<|im_start|>' + message['content']`) take content
            # only as a string, not as a list of parts.
            flat = [{**m, "content": m["content"] if isinstance(m["content"], str)
                     else "".join(p["text"] for p in m["content"])} for m in messages]
            return self._template.render(messages=flat, add_generation_prompt=True,
                                         raise_exception=raise_exception, **specials)

    def _grammar(self, prompt: Prompt) -> str:
        """The reply grammar bbsd wrote for this catalog; `llama_sampler.Sampler` has llama.cpp check it."""
        return prompt.grammar

    def infer(self, image: Image.Image, prompt: Prompt, *, attempt: int, cancelled: Callable[[], bool],
              alone: bool = False, photo: PhotoRef = UNNAMED) -> Inference:  # one photo a call: alone
        (result,) = self.infer_many([(image, prompt, attempt)], cancelled)
        if isinstance(result, PhotoError):
            raise result
        return result

    def infer_many(self, items: list[tuple[Image.Image, Prompt, int]],
                   cancelled: Callable[[], bool]) -> list[Inference | PhotoError]:
        """Label these photos together (`serve`, in this order); a photo's own failure is its result."""
        waiting = [Job(image, prompt, attempt, i) for i, (image, prompt, attempt) in enumerate(items)]
        results: list[Inference | PhotoError | None] = [None] * len(items)

        def admit(accepts: Callable[[Job], bool]) -> Job | None:
            job = next((j for j in waiting if accepts(j)), None)
            if job is not None:
                waiting.remove(job)
            return job

        self.serve(admit, lambda job, result: results.__setitem__(job.tag, result), cancelled)
        return results

    def serve(self, admit: replies_mod.Admit, finish: replies_mod.Finish, cancelled: Callable[[], bool]) -> None:
        """Continuous batching (`replies.serve`): up to `parallel` photos, each in its own sequence after
        the shared cached prefix, their replies generated in one decode per step; a photo joins
        between two steps and its result goes to `finish` as soon as its own reply is complete."""
        replies_mod.serve(self._ctx, self._start, admit, finish, cancelled)

    def _start(self, job: Job, seq: int, alone: bool) -> replies_mod.Reply:
        """Evaluate a photo's prompt into sequence `seq`: its Reply, ready to sample its first token."""
        t0 = time.perf_counter()
        with self._tokenize(job.prompt, job.image) as chunks:
            n_past, evaluated = self._evaluate(chunks.items, seq, alone)
            # Tokens, not n_past: an M-RoPE image (Qwen2-VL) takes fewer positions than it has tokens.
            prompt_tokens = sum(c.n_tokens for c in chunks.items)
        temperature = self._engine.temperature if job.attempt == 0 else RETRY_TEMPERATURE
        sampler = self._ctx.sampler(self._grammar(job.prompt), temperature, self._engine.seed + job.attempt)
        return replies_mod.Reply(self._ctx, seq, n_past, sampler, Cursor(job.prompt.schema),
                                 self._engine.max_output_tokens, prompt_tokens=prompt_tokens,
                                 evaluated=evaluated, encode_ms=(time.perf_counter() - t0) * 1000,
                                 jump=self._engine.jump_forward)

    def _tokenize(self, prompt: Prompt, image: Image.Image):
        """The chat and its images: the reference photos (decoded here, once), then the photo."""
        shown = self._references.load(prompt.references, self._engine.image_max_side)
        # the photo sized as the family tiles (families.fitter: InternVL's own grid); references were when decoded
        images = [*((item.sha256, ref) for item, ref in zip(prompt.references, shown, strict=True)),
                  (PHOTO_ID, self.fit(image))]
        return self._ctx.tokenize(self._render(prompt, self._ctx.marker), images)

    def layout(self, prompt: Prompt, image: Image.Image) -> dict[str, int]:
        """Tokens of this prompt and image: the cacheable prefix (reference images included), the photo's
        image, the text after it."""
        with self._tokenize(prompt, image) as chunks:
            items = chunks.items
        start = photo_start(items)
        return {"prefix": sum(c.n_tokens for c in items[:start]),
                "image": sum(c.n_tokens for c in items[start:] if not c.is_text),
                "suffix": sum(c.n_tokens for c in items[start:] if c.is_text)}

    def health(self) -> list[dict]:
        return []

    def _evaluate(self, chunks: list, seq: int = 0, alone: bool = True) -> tuple[int, int]:
        """Fill sequence `seq` of the KV cache for this photo; return (next position, prompt tokens
        evaluated now). `alone`: no other sequence holds a reply in progress.

        Everything before the photo's image (system text, catalog, reference gallery) is the same for
        every photo of a prompt: it stays in the KV cache (sequence 0; the other sequences share its
        cells) and only the image and the text after it are evaluated. The cache's key is the
        prefix's text tokens and its images' ids (content digests). It is (re)built only when no other
        reply is in progress: that clears every sequence.
        """
        start = photo_start(chunks)
        head, tail = chunks[:start], chunks[start:]
        self._gallery_fits(head, tail)
        key = tuple(c.tokens if c.is_text else ("image", c.image_id, c.n_tokens) for c in head)
        evaluated = 0
        if self._prefix.tokens != key or not (self._engine.prefix_cache or not alone):
            if not alone:  # `replies` admits only photos of the running prompt beside others
                raise PhotoError("engine_error", "a photo of another prompt joined a running batch",
                                 "report this to the bbsd team")
            self._ctx.forget_from(0)
            self._prefix = Prefix()  # invalid until it is whole again
            n_past = 0
            for c in head:
                n_past = self._ctx.eval_chunk(c, n_past, logits_last=False)
                evaluated += c.n_tokens
            self._prefix = Prefix(key, n_past)
            log.info("engine.prefix_cached", tokens=sum(c.n_tokens for c in head), positions=n_past,
                     reference_images=sum(not c.is_text for c in head))
        if seq == 0:
            self._ctx.forget_from(self._prefix.n_past)  # the previous photo's image and reply
        else:
            self._ctx.share_prefix(seq, self._prefix.n_past)
        n_past = self._prefix.n_past
        for i, c in enumerate(tail):
            n_past = self._ctx.eval_chunk(c, n_past, logits_last=i == len(tail) - 1, seq=seq)
            evaluated += c.n_tokens
        return n_past, evaluated

    def _gallery_fits(self, head: list, tail: list) -> None:
        """A prompt whose reference gallery leaves the photo no room is refused before anything is evaluated."""
        n_refs = sum(not c.is_text for c in head)
        total = sum(c.n_tokens for c in (*head, *tail))
        if n_refs and total > self._ctx.n_ctx:
            gallery = sum(c.n_tokens for c in head)
            raise PhotoError("context_overflow", f"the prompt with its {n_refs} reference photos needs {total} tokens "
                             f"({gallery} before the photo), the context has {self._ctx.n_ctx}",
                             f"raise [engine] context_size to at least {total + self._engine.max_output_tokens} "
                             "(room for the reply too), or show fewer reference photos")

    def close(self) -> None:
        self._ctx.close()


@dataclass(frozen=True)
class Prefix:
    """The prompt prefix held in the KV cache: its key (text tokens, image ids) and the position after it."""

    tokens: tuple | None = None
    n_past: int = 0


# Photos labelled together on a GPU when [engine] parallel is 0: on an H200 with the 2B-class shape
# a burst's throughput was 1.25 x one photo at a time at 2, 1.94 x at 4, 2.54 x at 8
# (docs/benchmarks.md, "speed-gpu-parallel"). On a CPU the forward pass is compute-bound already:
# sequences side by side gain little there, and the newest photo would wait longer.
GPU_PARALLEL = 8


def resolve_parallel(configured: int, gpu_layers: int | str) -> int:
    if configured > 0:
        return configured
    return GPU_PARALLEL if gpu_layers not in (0, "0") else 1


def photo_start(chunks: list) -> int:
    """Where the photo begins: its first image chunk (reference images before it belong to the prefix)."""
    return next((i for i, c in enumerate(chunks) if not c.is_text and c.image_id == PHOTO_ID), len(chunks))


def _decode_reference(path: Path, max_side: int) -> Image.Image:
    """A reference photo decoded and downscaled as photos are (in this, the contained worker process)."""
    from bbsd.photo import decode as imaging

    return imaging.decode(path, max_side).image


def flash_attention(setting: bool | str, gpu_layers: int | str) -> tuple[bool | None, bool | None]:
    """Flash attention for (the text model, the vision encoder): True, False, or None (llama.cpp
    decides: on where the device supports it). "auto": the text model with it (llama.cpp's auto) only
    with layers on a GPU. On a CPU a decode step took 1.9 x as long with it (SmolVLM-256M shape, 2-core VM: 57 against
    30 ms; the tiny pair 0.7 against 0.3 ms), while the vision encoder ran faster with it (916
    against 1,113 ms an image), so the encoder keeps llama.cpp's own auto, which also falls back
    cleanly where a GPU lacks the kernel (forced on, the unsupported op would run on the CPU)."""
    if setting != "auto":
        return bool(setting), bool(setting)
    return (None if gpu_layers != 0 else False), None


def batch_size(context_size: int) -> int:
    """Batch = ubatch, large enough for one image in one ubatch (decoders that attend to an image
    non-causally, Gemma 3's 256 tokens, need that) and never larger than the context.

    Qwen2-VL/2.5-VL images grow with the photo: one token per 28x28 pixels after libmtmd rounds
    each side to a multiple of 28, at most 4096. At the default image_max_side of 768 that is at most
    27 x 27 = 729 tokens; up to 1273 px (45 x 45 = 2025) an image fits one batch of 2048. A larger
    one is split across batches, which this llama.cpp evaluates exactly like one batch for these
    causal M-RoPE decoders (test_mrope proves both).
    """
    return min(context_size, 2048)


def open_labeler(settings, files: tuple[tuple[str, int, str], ...]) -> LlamaLabeler:
    """The model of `settings.backend` (a `LlamaSettings`) loaded; `files` are its files' digests."""
    llama = settings.backend
    model = _check_file(llama.path, "text model")
    mmproj = _check_file(llama.mmproj, "mmproj")
    log.info("engine.loading", model=str(model), mmproj=str(mmproj),
             sha256=next((h for role, _, h in files if role == "file"), None))
    t0 = time.perf_counter()
    labeler = LlamaLabeler(model, mmproj, llama)
    labeler.info = dataclasses.replace(labeler.info, files=files)
    log.info("engine.loaded", model=model.name, mmproj=mmproj.name, load_ms=round((time.perf_counter() - t0) * 1000))
    return labeler
