"""The baselines `bench.speed` holds bbsd against: other ways to run the same model on the same photos.

Each setup gets the same model pair, prompt (system text, user text, bbsd's own reply grammar),
threads, GPU layers and output limit as bbsd, and returns one row per photo: `ms` (the whole
photo as its user would time it), `prompt` and `out` tokens where the tool reports them, and
`gen_ms` (time spent generating) so a per-photo time can be compared at equal output tokens.

- `Handler`: llama-cpp-python's own multimodal path (`MTMDChatHandler`), in this process.
- `Server`: `llama-server` (one slot, its prompt cache on) over loopback HTTP, the photo file
  as a JPEG data URI, as any client would send it (timed from the file, like bbsd's row).
- `Cli`: `llama-mtmd-cli` run once per photo, as a shell script would (model load included).
Each is a setup: started once, `one(photo)` per photo (its row), `close()`; `bench.speed` runs
them in turns, photo by photo, so that a machine slowing down during the run weighs on every setup.
Both tools are built from the llama.cpp vendored in the pinned llama-cpp-python (build/llama-server.sh).
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from bbsd.engine.prompt import Prompt


def data_uri(photo: Path) -> str:
    """The photo file as sent by a client: its bytes, base64 (the camera's JPEG, not a pre-shrunk copy)."""
    return "data:image/jpeg;base64," + base64.b64encode(photo.read_bytes()).decode()


def messages(p: Prompt, photo: Path) -> list[dict]:
    return [{"role": "system", "content": p.system},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(photo)}},
                                         {"type": "text", "text": p.user}]}]


class Handler:
    """llama-cpp-python's own multimodal path: `MTMDChatHandler` + `create_chat_completion` per photo.

    `exact_tokens`: no grammar, and exactly that many tokens (end of generation forbidden): the
    tool's cost without any grammar work, the least a trained model that writes valid JSON unaided
    could cost it (a random model's favourite token is often one the grammar refuses, and then
    the whole vocabulary is masked: that would flatter bbsd).
    """

    def __init__(self, models: tuple[Path, Path], p: Prompt, *, max_tokens: int, threads: int, gpu_layers: int,
                 n_ctx: int, flash: bool | None, exact_tokens: int = 0) -> None:
        from bbsd.llama_binding import import_llama

        import_llama()  # the C++ runtime pinned first, as bbsd does
        from llama_cpp import Llama, LlamaGrammar
        from llama_cpp.llama_chat_format import MTMDChatHandler

        self._p = p
        self._llm = llm = Llama(model_path=str(models[0]), n_ctx=n_ctx, n_batch=2048, n_ubatch=2048,
                                n_gpu_layers=gpu_layers, n_threads=threads, verbose=False,
                                flash_attn=flash is not False,
                                chat_handler=MTMDChatHandler(clip_model_path=str(models[1]), verbose=False))
        self._limits = ({"max_tokens": exact_tokens, "logit_bias": {llm.token_eos(): -1e9, llm.token_bos(): -1e9}}
                        if exact_tokens else {"grammar": LlamaGrammar.from_string(p.grammar, verbose=False),
                                              "max_tokens": max_tokens})

    def one(self, photo: Path) -> dict:
        t0 = time.perf_counter()  # from the photo file: reading and decoding it is part of the photo's time
        out = self._llm.create_chat_completion(messages=messages(self._p, photo), temperature=0.0, **self._limits)
        return {"ms": (time.perf_counter() - t0) * 1000, "prompt": out["usage"]["prompt_tokens"],
                "out": out["usage"]["completion_tokens"]}

    def close(self) -> None:
        self._llm.close()


def _ngl(gpu_layers: int) -> int:
    """bbsd's -1 (all layers) in the tools' own words: a number above any model's layer count."""
    return 999 if gpu_layers < 0 else gpu_layers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited: {log.read_text()[-1500:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if json.loads(r.read()).get("status") == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError("llama-server did not become healthy")


class Server:
    """`llama-server` with one slot and its prompt cache, over loopback HTTP; client-side time per photo.
    `exact_tokens`: no grammar and exactly that many tokens, as in `Handler`."""

    def __init__(self, binary: Path, models: tuple[Path, Path], p: Prompt, *, max_tokens: int, threads: int,
                 gpu_layers: int, n_ctx: int, flash: bool | None, log: Path, exact_tokens: int = 0) -> None:
        port = _free_port()
        argv = [str(binary), "-m", str(models[0]), "--mmproj", str(models[1]), "--host", "127.0.0.1",
                "--port", str(port), "-np", "1", "-c", str(n_ctx), "-b", "2048", "-ub", "2048", "-t", str(threads),
                "-ngl", str(_ngl(gpu_layers)), "-fa", _fa(flash), "--no-webui"]
        if gpu_layers == 0:
            argv.append("--no-mmproj-offload")
        self._url, self._p = f"http://127.0.0.1:{port}", p
        self._limits = ({"max_tokens": exact_tokens, "ignore_eos": True} if exact_tokens
                        else {"grammar": p.grammar, "max_tokens": max_tokens})
        with log.open("ab") as out:
            self._proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(self._url, self._proc, log, 300)
        except BaseException:
            self.close()
            raise

    def one(self, photo: Path) -> dict:
        t0 = time.perf_counter()  # from the photo file, as a client would: read, base64, POST, reply
        body = {"messages": messages(self._p, photo), "temperature": 0.0, "cache_prompt": True, **self._limits}
        reply = _post(self._url + "/v1/chat/completions", body, 600)
        ms = (time.perf_counter() - t0) * 1000
        t = reply.get("timings", {})
        return {"ms": ms, "prompt": t.get("prompt_n"), "out": reply["usage"]["completion_tokens"],
                "gen_ms": t.get("predicted_ms")}

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=60)


_EVAL_RUNS = re.compile(r"\beval time =\s*([\d.]+) ms /\s*(\d+) runs")


class Cli:
    """`llama-mtmd-cli` once per photo (loading the model each time), as a script around it would."""

    def __init__(self, binary: Path, models: tuple[Path, Path], p: Prompt, *, max_tokens: int, threads: int,
                 gpu_layers: int, n_ctx: int, flash: bool | None, folder: Path) -> None:
        grammar = folder / "reply.gbnf"
        grammar.write_text(p.grammar)
        self._argv = [str(binary), "-m", str(models[0]), "--mmproj", str(models[1]), "-sys", p.system, "-p", p.user,
                      "--grammar-file", str(grammar), "-n", str(max_tokens), "--temp", "0", "-t", str(threads),
                      "-c", str(n_ctx), "-b", "2048", "-ub", "2048", "-ngl", str(_ngl(gpu_layers)),
                      "-fa", _fa(flash), "--perf", "-v"]  # its timings are logged at debug verbosity only

    def one(self, photo: Path) -> dict:
        t0 = time.perf_counter()
        r = subprocess.run([*self._argv, "--image", str(photo)], capture_output=True, text=True, timeout=600)
        ms = (time.perf_counter() - t0) * 1000
        if r.returncode != 0:
            raise RuntimeError(f"llama-mtmd-cli failed: {r.stderr[-1500:]}")
        runs = _EVAL_RUNS.findall(r.stderr)
        gen_ms, out = (float(runs[-1][0]), int(runs[-1][1])) if runs else (None, None)
        return {"ms": ms, "out": out, "gen_ms": gen_ms}

    def close(self) -> None:
        pass


def _fa(flash: bool | None) -> str:
    """llama.cpp's -fa for bbsd's setting of the text model: True on, False off, None auto."""
    return {True: "on", False: "off", None: "auto"}[flash]
