"""`openai` backend: photos labelled by inference servers that speak the OpenAI chat API.

llama.cpp's llama-server, vLLM, LMDeploy and OpenVINO Model Server take the reply schema as
`response_format` {"type": "json_schema"}; Ollama takes it as `format` on its /api/chat
(`api = "ollama"`). Invariants: the daemon sends pixels it already decoded in its contained
decoder, re-encoded as a JPEG data URI (it never reads the photo file for this), and the
catalog's reference photos, decoded once in a decoder process of their own, as image parts
before the photo (the same bytes every time, so a server's prompt cache can reuse them); replies are
returned raw and validated by the pipeline exactly as the local engine's; a photo is never
lost to a failing endpoint — connection errors, timeouts, 5xx and malformed bodies are
retried (with backoff, on another endpoint when there is one), and while every endpoint is
down the photo waits in hand rather than getting an error sidecar; API keys come from an
environment variable or a file and go nowhere but the Authorization header.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from bbsd import references
from bbsd.config import Key, Validator, section
from bbsd.engines import Backend, UnitNeeds
from bbsd.errors import ModelError, PhotoError
from bbsd.labeler import Inference, ModelInfo
from bbsd.openai_pool import Endpoint, EndpointConfig, Pool, RejectedError, TransientError

log = structlog.get_logger("bbsd.openai")
RETRY_TEMPERATURE = 0.7  # the same varied retry as the local engine
TABLES = {"openai": {
    "endpoints": Key("endpoints", None, "[[openai.endpoints]] tables: url, model, in_flight, api, api_key_env, "
                     "api_key_file (see below)"),
    "timeout_seconds": Key("float", 120.0, "per request: no answer this long counts as a failure", 1, 3600),
    "retries": Key("int", 3, "failed requests retried per photo (another endpoint when there is one)", 0, 20),
    "backoff_seconds": Key("float", 1.0, "wait before a retry, doubled each time", 0, 60),
    "down_after_failures": Key("int", 3, "failures in a row that mark an endpoint down", 1, 100),
    "probe_seconds": Key("float", 15.0, "how often a down endpoint is probed again", 0.2, 3600),
    "jpeg_quality": Key("int", 90, "quality of the JPEG sent (the image is already downscaled)", 50, 100),
}}
ENDPOINT_KEYS = {
    "url": Key("str", None, "server URL, e.g. http://10.0.0.5:8080 (the API root /v1 is added unless the URL "
               "names one, like OpenVINO Model Server's http://host:8000/v3)"),
    "model": Key("str", None, "the model name the server knows (llama-server: any; vLLM: the served name)"),
    "in_flight": Key("int", 2, "requests open at once on this endpoint (match the server's parallel slots)", 1, 256),
    "api": Key("choice", "openai", "openai = /v1/chat/completions with response_format json_schema; "
               "ollama = /api/chat with format", choices=("openai", "ollama")),
    "api_key_env": Key("str", None, "name of the environment variable holding the API key"),
    "api_key_file": Key("path", None, "file holding the API key (e.g. a systemd credential)"),
}


@dataclass(frozen=True)
class OpenAISettings:
    endpoints: tuple[EndpointConfig, ...]
    timeout_seconds: float
    retries: int
    backoff_seconds: float
    down_after_failures: int
    probe_seconds: float
    jpeg_quality: int
    max_output_tokens: int
    temperature: float
    seed: int


def configure(raw: dict[str, Any], v: Validator, env: Mapping[str, str], engine) -> OpenAISettings:
    body = raw.get("openai", {})
    scalar = {k: key for k, key in TABLES["openai"].items() if k != "endpoints"}
    values = section(body, "openai", scalar, v, env)
    items = body.get("endpoints")
    if not isinstance(items, list) or not items:
        raise v.fail("openai.endpoints", "needs at least one endpoint",
                     'add [[openai.endpoints]] with url = "http://host:8080" and model = "..."')
    endpoints = tuple(_endpoint(item, f"openai.endpoints[{i}]", v, env) for i, item in enumerate(items))
    if len({e.url for e in endpoints}) < len(endpoints):
        raise v.fail("openai.endpoints", "lists one url twice", "raise its in_flight instead")
    return OpenAISettings(endpoints=endpoints, **values, max_output_tokens=engine.max_output_tokens,
                          temperature=engine.temperature, seed=engine.seed)


def _endpoint(item: Any, where: str, v: Validator, env: Mapping[str, str]) -> EndpointConfig:
    if not isinstance(item, dict):
        raise v.fail(where, "must be a table", "write it as [[openai.endpoints]]")
    unknown = set(item) - set(ENDPOINT_KEYS)
    if unknown:
        raise v.fail(f"{where}.{sorted(unknown)[0]}", "is not a known key", f"known: {', '.join(ENDPOINT_KEYS)}")
    e = section(item, where, ENDPOINT_KEYS, v, {})
    for required in ("url", "model"):
        if e[required] is None:
            raise v.fail(f"{where}.{required}", "is required", ENDPOINT_KEYS[required].help)
    parts = urlsplit(e["url"])
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise v.fail(f"{where}.url", f"is {e['url']!r}", "use http://host:port or https://host")
    if parts.username or parts.password:
        raise v.fail(f"{where}.url", "carries credentials", "put the key in api_key_env or api_key_file")
    if e["api_key_env"] and e["api_key_env"] not in env:
        raise v.fail(f"{where}.api_key_env", f"names ${e['api_key_env']}, which is not set",
                     "set it in the service's environment (systemctl edit bbsd: Environment=...)")
    if e["api_key_file"] and not os.access(e["api_key_file"], os.R_OK):
        raise v.fail(f"{where}.api_key_file", f"{e['api_key_file']} is not readable", "check the path and rights")
    return EndpointConfig(url=e["url"].rstrip("/"), model=e["model"], in_flight=e["in_flight"],
                          api=e["api"], key_env=e["api_key_env"],
                          key_file=str(e["api_key_file"]) if e["api_key_file"] else None)


def _info(s: OpenAISettings) -> ModelInfo:
    return ModelInfo(backend="openai", file="+".join(sorted({c.model for c in s.endpoints})), mmproj=None)


def info(settings) -> ModelInfo:
    return _info(settings.backend)


def _key(cfg: EndpointConfig) -> str | None:
    if cfg.key_env:
        return os.environ.get(cfg.key_env)
    if cfg.key_file:
        return Path(cfg.key_file).read_text().strip()
    return None


class OpenAILabeler:
    gpu = False  # the GPU is the server's

    def __init__(self, s: OpenAISettings, gallery: Gallery | None = None) -> None:
        self._s = s
        self._gallery = gallery
        self.pool = Pool([Endpoint(c, _key(c)) for c in s.endpoints], s.down_after_failures, s.probe_seconds)
        self.concurrency = sum(c.in_flight for c in s.endpoints)
        self.info = _info(s)
        self._local = threading.local()  # this worker thread's keep-alive connections

    def health(self) -> list[dict[str, Any]]:
        return [e.health() for e in self.pool.endpoints]

    def infer(self, image, prompt, *, attempt: int, cancelled: Callable[[], bool], alone: bool = False) -> Inference:
        # `alone` asks nothing of us: each request is a photo of its own, and a server's crash is the server's
        data_uri = _jpeg(image, self._s.jpeg_quality)
        shown = self._gallery.uris(prompt.references) if prompt.references and self._gallery else []
        conns = self._local.__dict__.setdefault("conns", {})
        last: Endpoint | None = None
        for tries in range(self._s.retries + 1):
            e = self.pool.acquire(cancelled, avoid=last)
            t0 = time.perf_counter()
            try:
                doc = e.post(*_request(e.cfg, prompt, data_uri, self._s, attempt, shown), self._s.timeout_seconds,
                             conns)
                text, timings, usage = _reply(e.cfg, doc)
            except RejectedError as err:
                self.pool.release(e, False, error=str(err))
                raise PhotoError("server_rejected", f"{e.cfg.url} refused the request ({err})",
                                 "check the endpoint's model name and limits (image size, context)") from None
            except TransientError as err:
                self.pool.release(e, False, error=str(err))
                log.warning("request.retry", url=e.cfg.url, error=str(err), attempt=tries + 1)
                last = e
                time.sleep(min(30.0, self._s.backoff_seconds * 2**tries) if tries < self._s.retries else 0)
                continue
            latency = (time.perf_counter() - t0) * 1000
            self.pool.release(e, True, latency)
            return _inference(e.cfg, doc, text, timings, usage, latency, tries + 1)
        raise PhotoError("server_error", f"the inference servers failed {self._s.retries + 1} times on this photo",
                         "see the endpoint.down / request.retry events; the photo is not retried until it changes")

    def close(self) -> None:
        self.pool.close()
        if self._gallery is not None:
            self._gallery.close()
        for conn in self._local.__dict__.get("conns", {}).values():
            conn.close()


class Gallery:
    """The prompt's reference photos as JPEG data URIs, decoded once in a decoder process of their own
    (the daemon, where this backend runs, never parses image bytes) and downscaled like photos."""

    def __init__(self, settings) -> None:
        self._settings = settings
        self._decoder = None
        self._lock = threading.Lock()  # several photos in flight ask at once; one decodes, the rest wait
        self._images: references.Images[str] = references.Images(self._decode)

    def uris(self, items: tuple[references.Item, ...]) -> list[str]:
        with self._lock:
            return self._images.load(items, self._settings.engine.image_max_side)

    def _decode(self, path: Path, max_side: int) -> str:
        from bbsd.decoder import Decoder

        if self._decoder is None:
            self._decoder = Decoder(self._settings, role="references")
        return _jpeg(self._decoder.decode(path, max_side).image, self._settings.backend.jpeg_quality)

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None


def _jpeg(image, quality: int) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _request(cfg: EndpointConfig, prompt, data_uri: str, s: OpenAISettings, attempt: int,
             shown: Sequence[str] = ()) -> tuple[str, dict]:
    """The request body; `shown` are the reference photos' data URIs, in the order of `prompt.references`."""
    temperature = s.temperature if attempt == 0 else RETRY_TEMPERATURE
    if cfg.api == "ollama":  # one user message per reference (its image, its caption line), then the photo's
        gallery = [{"role": "user", "content": item.line(), "images": [uri.split(",", 1)[1]]}
                   for item, uri in zip(prompt.references, shown, strict=True)]
        return "/api/chat", {
            "model": cfg.model, "stream": False, "format": prompt.schema,
            "messages": [{"role": "system", "content": prompt.system}, *gallery,
                         {"role": "user", "content": prompt.user, "images": [data_uri.split(",", 1)[1]]}],
            "options": {"temperature": temperature, "seed": s.seed + attempt, "num_predict": s.max_output_tokens}}
    gallery = [part for item, uri in zip(prompt.references, shown, strict=True)
               for part in ({"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": item.line()})]
    intro = [{"type": "text", "text": references.INTRO}] if gallery else []
    photo = {"type": "image_url", "image_url": {"url": data_uri}}
    return "/chat/completions", {
        "model": cfg.model, "max_tokens": s.max_output_tokens, "temperature": temperature, "seed": s.seed + attempt,
        "messages": [{"role": "system", "content": prompt.system},
                     {"role": "user", "content": [*intro, *gallery, photo, {"type": "text", "text": prompt.user}]}],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "bbsd_labels", "strict": True, "schema": prompt.schema}}}


def _reply(cfg: EndpointConfig, doc: dict) -> tuple[str, dict[str, float], dict[str, int]]:
    """The reply text (a thinking model's JSON may sit after <think> or in reasoning_content)."""
    try:
        if cfg.api == "ollama":
            msg = doc["message"]
            ns = {k: doc.get(k) for k in ("prompt_eval_duration", "eval_duration")}
            timings = {"prompt_ms": (ns["prompt_eval_duration"] or 0) / 1e6,
                       "predicted_ms": (ns["eval_duration"] or 0) / 1e6}
            usage = {"prompt": doc.get("prompt_eval_count") or 0, "output": doc.get("eval_count") or 0}
        else:
            msg = doc["choices"][0]["message"]
            timings = {k: v for k, v in (doc.get("timings") or {}).items() if isinstance(v, int | float)}
            u = doc.get("usage") or {}
            usage = {"prompt": u.get("prompt_tokens") or 0, "output": u.get("completion_tokens") or 0}
    except (KeyError, IndexError, TypeError):
        raise TransientError(f"the reply has no message: {str(doc)[:120]}") from None
    text = re.sub(r"<think>.*?</think>", "", msg.get("content") or "", flags=re.S).strip()
    if "{" not in text:
        text = (msg.get("reasoning_content") or msg.get("thinking") or text).strip()
    return text, timings, usage


def _inference(cfg, doc, text, timings, usage, latency: float, attempts: int) -> Inference:
    encode = float(timings.get("prompt_ms") or 0.0)
    served = {"endpoint": cfg.url, "model": str(doc.get("model") or cfg.model), "latency_ms": round(latency, 1),
              "attempts": attempts, **({"server_timings": timings} if timings else {})}
    return Inference(text=text, prompt_tokens=usage["prompt"], output_tokens=usage["output"], encode_ms=encode,
                     generate_ms=max(0.0, latency - encode), served=served)


def open_labeler(settings) -> OpenAILabeler:
    labeler = OpenAILabeler(settings.backend, Gallery(settings) if settings.catalog.reference_count() else None)
    log.info("engine.remote", endpoints=[{"url": c.url, "model": c.model, "in_flight": c.in_flight, "api": c.api}
                                         for c in settings.backend.endpoints], concurrency=labeler.concurrency)
    return labeler


def check(settings) -> list[str]:
    """Each endpoint answers its model list (a down endpoint is a warning line, not a failure)."""
    lines, up = [], 0
    for c in settings.backend.endpoints:
        e = Endpoint(c, _key(c))
        try:
            e.get("/api/tags" if c.api == "ollama" else "/models", 10.0)
            lines.append(f"endpoint {c.url} ({c.model}): ok, {c.in_flight} in flight")
            up += 1
        except (TransientError, RejectedError) as err:
            lines.append(f"endpoint {c.url} ({c.model}): NOT reachable now ({err})")
    if not up:
        raise ModelError("no inference server endpoint answers", "start the servers or fix [[openai.endpoints]] url")
    return lines


def unit(settings) -> UnitNeeds:
    """IP networking, restricted to the endpoints' addresses when they are all IP literals or localhost."""
    hosts = [urlsplit(c.url).hostname or "" for c in settings.backend.endpoints]
    allow = []
    for h in hosts:
        if h == "localhost":
            continue  # the unit always allows localhost
        try:
            allow.append(str(ipaddress.ip_address(h)))
        except ValueError:
            return UnitNeeds(network=True)  # a host name: its addresses are not known when the unit is written
    return UnitNeeds(network=True, ip_allow=tuple(dict.fromkeys(allow)) or ("::1",))  # loopback only


# No warm-up before READY: with every server down it would wait for one forever, and a server's
# prompt cache is warmed by the first photos anyway.
BACKEND = Backend(name="openai", tables=TABLES, configure=configure, open=open_labeler, isolate=False,
                  warm_up=False, info=info, check=check, unit=unit)
