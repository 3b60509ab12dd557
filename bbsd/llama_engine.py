"""`llama` backend: a GGUF text model and its mmproj, in-process through llama-cpp-python + libmtmd.

Invariants: one thread owns the `Llama` object (the pipeline's worker); pixels reach libmtmd
as an RGB bitmap, never as a re-encoded file; the reply is sampled under a grammar compiled
from the prompt's JSON schema (compiled once per prompt); the chat template is the one inside
the GGUF.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from PIL import Image

from bbsd import families, llama_log
from bbsd.errors import AbandonedError, ModelError, PhotoError
from bbsd.labeler import Inference, ModelInfo
from bbsd.prompt import Prompt

log = structlog.get_logger("bbsd.engine")

# Used only when a GGUF carries no chat template; ChatML is what most VLM GGUFs use.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for p in m['content'] %}{{ p['text'] }}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
RETRY_TEMPERATURE = 0.7


def _check_file(path: Path | None, what: str) -> Path:
    if path is None or not path.is_file():
        raise ModelError(f"{what} {path} not found",
                         "put the GGUF pair in gguf_models/ and set [model] path and mmproj (gguf_models/README.md)")
    if not os.access(path, os.R_OK):
        raise ModelError(f"{what} {path} is not readable", "check its permissions for the bbsd user")
    return path


def _threads(configured: int) -> int:
    if configured > 0:
        return configured
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


class LlamaLabeler:
    """Holds the loaded model and the mtmd context; `infer` labels one image."""

    def __init__(self, model_path: Path, mmproj_path: Path, engine) -> None:
        llama_log.install()
        from llama_cpp import Llama

        from bbsd import backends, models

        backends.load()
        self._engine = engine
        self.info = ModelInfo(backend="llama", file=model_path.name, mmproj=mmproj_path.name)
        self._family = families.for_projector(models.inspect(mmproj_path).projector)
        threads = _threads(engine.threads)
        layers = backends.gpu_layers(engine.gpu_layers, model_path, mmproj_path, engine.context_size)
        try:
            self._llm = Llama(
                model_path=str(model_path), n_ctx=engine.context_size, n_threads=threads,
                n_gpu_layers=layers, flash_attn=engine.flash_attention,
                seed=engine.seed, verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"cannot load text model {model_path.name}: {e}",
                             "is it a complete llama.cpp GGUF? re-download it or check `bbsd check`") from None
        self._mtmd = _open_mtmd(mmproj_path, self._llm, engine, threads, layers)
        self._template = self._compile_template()
        self._grammars: dict[str, object] = {}

    def _compile_template(self):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        text = self._llm.metadata.get("tokenizer.chat_template")
        if not text:
            text = self._family.fallback_template or FALLBACK_TEMPLATE
            log.warning("engine.no_chat_template", model=self.info.file,
                        using="family" if self._family.fallback_template else "chatml")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(text)

    def _render(self, prompt: Prompt, marker: str) -> str:
        image, ask = {"type": "text", "text": marker + "\n"}, {"type": "text", "text": prompt.user}
        parts = [image, ask] if self._family.image_first else [ask, image]
        if self._family.system_role:
            messages = [{"role": "system", "content": prompt.system}, {"role": "user", "content": parts}]
        else:
            messages = [{"role": "user", "content": [{"type": "text", "text": prompt.system + "\n\n"}, *parts]}]

        def raise_exception(message: str):
            raise ModelError(f"chat template refused the prompt: {message}", "report this model to the bbsd team")

        piece = self._llm.detokenize
        return self._template.render(
            messages=messages, add_generation_prompt=True, raise_exception=raise_exception,
            bos_token=piece([self._llm.token_bos()]).decode(errors="ignore"),
            eos_token=piece([self._llm.token_eos()]).decode(errors="ignore"),
        )

    def _grammar(self, prompt: Prompt):
        from llama_cpp.llama_grammar import LlamaGrammar

        key = prompt.schema_json()
        if key not in self._grammars:
            self._grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
        return self._grammars[key]

    def infer(self, image: Image.Image, prompt: Prompt, *, attempt: int,
              cancelled: Callable[[], bool]) -> Inference:
        t0 = time.perf_counter()
        n_prompt = self._mtmd.evaluate(self._llm, self._render(prompt, self._mtmd.marker), image)
        t1 = time.perf_counter()
        from llama_cpp import StoppingCriteriaList

        out = self._llm.create_completion(
            prompt=self._llm.input_ids[: self._llm.n_tokens].tolist(),
            grammar=self._grammar(prompt), max_tokens=self._engine.max_output_tokens,
            temperature=self._engine.temperature if attempt == 0 else RETRY_TEMPERATURE,
            seed=self._engine.seed + attempt, repeat_penalty=1.0,
            stopping_criteria=StoppingCriteriaList([lambda _ids, _logits: cancelled()]),
        )
        if cancelled():
            raise AbandonedError("labelling abandoned at shutdown", "the photo stays pending and is redone at start")
        t2 = time.perf_counter()
        return Inference(text=out["choices"][0]["text"], prompt_tokens=n_prompt,
                         output_tokens=out["usage"]["completion_tokens"],
                         encode_ms=(t1 - t0) * 1000, generate_ms=(t2 - t1) * 1000)

    def close(self) -> None:
        self._mtmd.close()
        self._llm.close()


class _Mtmd:
    """The libmtmd context: tokenizes text + bitmap into chunks and evaluates them into the KV cache."""

    def __init__(self, ctx, mtmd_cpp) -> None:
        self._ctx = ctx
        self._m = mtmd_cpp
        self.marker = mtmd_cpp.mtmd_default_marker().decode()

    def evaluate(self, llm, text: str, image: Image.Image) -> int:
        """Fill llm's KV cache with the prompt and the image; return the number of positions used."""
        m = self._m
        bitmap = _bitmap(m, image)
        chunks = m.mtmd_input_chunks_init()
        try:
            _tokenize(m, self._ctx, chunks, text, bitmap)
            llm.reset()
            llm._ctx.kv_cache_clear()
            for i in range(m.mtmd_input_chunks_size(chunks)):
                self._eval_chunk(llm, m.mtmd_input_chunks_get(chunks, i))
            return llm.n_tokens
        finally:
            m.mtmd_input_chunks_free(chunks)
            m.mtmd_bitmap_free(bitmap)

    def _eval_chunk(self, llm, chunk) -> None:
        import llama_cpp

        m = self._m
        if m.mtmd_input_chunk_get_type(chunk) == m.MTMD_INPUT_CHUNK_TYPE_TEXT:
            n = ctypes.c_size_t()
            ptr = m.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
            tokens = [ptr[j] for j in range(n.value)]
            _fits(llm, len(tokens))
            llm.eval(tokens)
            return
        _fits(llm, m.mtmd_input_chunk_get_n_tokens(chunk))
        n_past = llama_cpp.llama_pos(0)
        rc = m.mtmd_helper_eval_chunk_single(
            self._ctx, llm._ctx.ctx, chunk, llama_cpp.llama_pos(llm.n_tokens), llama_cpp.llama_seq_id(0),
            llm.n_batch, False, ctypes.byref(n_past))
        if rc != 0:
            raise PhotoError("engine_error", f"image encoding failed (mtmd code {rc})", "see the llama.log events")
        llm.n_tokens = n_past.value

    def close(self) -> None:
        if self._ctx is not None:
            self._m.mtmd_free(self._ctx)
            self._ctx = None


def _fits(llm, n: int) -> None:
    if llm.n_tokens + n > llm.n_ctx():
        raise PhotoError("context_overflow", f"prompt needs {llm.n_tokens + n} tokens, context has {llm.n_ctx()}",
                         "raise [engine] context_size or lower image_max_side")


def _bitmap(m, image: Image.Image):
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    data = rgb.tobytes()
    buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    bitmap = m.mtmd_bitmap_init(rgb.width, rgb.height, buf)
    if not bitmap:
        raise PhotoError("engine_error", "libmtmd refused the bitmap", "see the llama.log events")
    return bitmap


def _tokenize(m, ctx, chunks, text: str, bitmap) -> None:
    raw = text.encode("utf-8")
    inp = m.mtmd_input_text()
    inp.text, inp.text_len, inp.add_special, inp.parse_special = raw, len(raw), True, True
    bitmaps = (m.mtmd_bitmap_p_ctypes * 1)(bitmap)
    rc = m.mtmd_tokenize(ctx, chunks, ctypes.byref(inp), bitmaps, 1)
    if rc != 0:
        raise PhotoError("engine_error", f"mtmd_tokenize failed (code {rc})",
                         "the chat template may lack the image marker; see `bbsd check`")


def _open_mtmd(mmproj: Path, llm, engine, threads: int, layers: int) -> _Mtmd:
    import llama_cpp
    from llama_cpp import mtmd_cpp

    params = mtmd_cpp.mtmd_context_params_default()
    params.use_gpu = layers != 0
    params.n_threads = threads
    params.print_timings = False
    params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if engine.flash_attention
                              else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode(), llm.model, params)
    if not ctx:
        llm.close()
        raise ModelError(f"cannot load mmproj {mmproj.name} with this text model",
                         "the projector must belong to the text model (same family and size); see llama.log")
    if not mtmd_cpp.mtmd_support_vision(ctx):
        mtmd_cpp.mtmd_free(ctx)
        llm.close()
        raise ModelError(f"{mmproj.name} has no vision encoder", "use the model's vision mmproj GGUF")
    return _Mtmd(ctx, mtmd_cpp)


def open_labeler(settings) -> LlamaLabeler:
    model = _check_file(settings.model.path, "text model")
    mmproj = _check_file(settings.model.mmproj, "mmproj")
    log.info("engine.loading", model=str(model), mmproj=str(mmproj))
    t0 = time.perf_counter()
    labeler = LlamaLabeler(model, mmproj, settings.engine)
    log.info("engine.loaded", model=model.name, mmproj=mmproj.name, load_ms=round((time.perf_counter() - t0) * 1000))
    return labeler
