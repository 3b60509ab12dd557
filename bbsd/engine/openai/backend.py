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
environment variable or a file and go nowhere but the Authorization header. A reply is read
only in the shape it must have (anything else is `InvalidReplyError`, never a bug of ours), its
figures only where they are finite, and every try gives its endpoint's slot back however it
ends, an exception of bbsd's own included.
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

from bbsd.config_keys import Key, Validator, section
from bbsd.engine.labeler import UNNAMED, Inference, ModelInfo, PhotoRef
from bbsd.engine.openai.pool import Endpoint, EndpointConfig, InvalidReplyError, Pool, RejectedError, TransientError
from bbsd.engine.registry import Backend, UnitNeeds
from bbsd.errors import ModelError, PhotoError
from bbsd.show import references
from bbsd.text import printable

log = structlog.get_logger("bbsd.openai")
RETRY_TEMPERATURE = 0.7  # the same varied retry as the local engine
TABLES = {"openai": {
    "endpoints": Key("endpoints", None, "[[openai.endpoints]] tables: url, model, in_flight, api, api_key_env, "
                     "api_key_file (see below)"),
    "timeout_seconds": Key("float", 120.0, "per request, from connecting to the reply's last byte: a request "
                           "not done by then counts as a failure", 1, 3600),
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

    def health(self) -> list[dict[str, Any]]:
        return [e.health() for e in self.pool.endpoints]

    def infer(self, image, prompt, *, attempt: int, cancelled: Callable[[], bool], alone: bool = False,
              photo: PhotoRef = UNNAMED) -> Inference:
        # `alone` asks nothing of us: each request is a photo of its own, and a server's crash is the server's;
        # `photo` neither: the server is told nothing of the photo but its pixels
        data_uri = _jpeg(image, self._s.jpeg_quality)
        shown = self._gallery.uris(prompt.references) if prompt.references and self._gallery else []
        last: Endpoint | None = None
        failure: TransientError | None = None
        for tries in range(self._s.retries + 1):
            with self.pool.slot(cancelled, avoid=last) as held:  # given back however this try ends
                e, t0 = held.endpoint, time.perf_counter()
                try:
                    doc = e.post(*_request(e.cfg, prompt, data_uri, self._s, attempt, shown), self._s.timeout_seconds)
                    text, timings, usage = _reply(e.cfg, doc)
                except RejectedError as err:
                    held.ok, held.error = False, str(err)
                    raise PhotoError("server_rejected", f"{e.cfg.url} refused the request ({err})",
                                     "check the endpoint's model name and limits (image size, context)") from None
                except TransientError as err:
                    held.ok, held.error = False, str(err)
                    failure, last = err, e
                else:
                    held.ok, held.latency_ms = True, (time.perf_counter() - t0) * 1000
                    return _inference(e.cfg, doc, text, timings, usage, held.latency_ms, tries + 1)
            log.warning("request.retry", url=e.cfg.url, error=str(failure), attempt=tries + 1)
            time.sleep(min(30.0, self._s.backoff_seconds * 2**tries) if tries < self._s.retries else 0)
        raise _exhausted(failure, last, self._s.retries + 1)

    def close(self) -> None:
        self.pool.close()  # and the endpoints' kept connections
        if self._gallery is not None:
            self._gallery.close()


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
        from bbsd.photo.decoder import Decoder

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
    """The reply text (a thinking model's JSON may sit after <think> or in reasoning_content) and the
    server's numbers. Any other shape is InvalidReplyError (retried elsewhere, like a 5xx); numbers
    that are not finite, non-negative figures are dropped, never passed on."""
    if doc.get("error") is not None:
        raise _error_reply(doc["error"])
    if cfg.api == "ollama":
        msg = _table(doc.get("message"), "message")
        ns = _numbers({"prompt_ms": doc.get("prompt_eval_duration"), "predicted_ms": doc.get("eval_duration")})
        timings = {k: v / 1e6 for k, v in ns.items()}
        usage = {"prompt": _count(doc.get("prompt_eval_count")), "output": _count(doc.get("eval_count"))}
    else:
        choices = doc.get("choices")
        if not isinstance(choices, list) or not choices:
            raise InvalidReplyError(f"the reply's choices are {_shape(choices)}, not a list of one or more")
        msg = _table(_table(choices[0], "choices[0]").get("message"), "choices[0].message")
        timings = _numbers(doc.get("timings"))
        u = doc.get("usage") if isinstance(doc.get("usage"), dict) else {}
        usage = {"prompt": _count(u.get("prompt_tokens")), "output": _count(u.get("completion_tokens"))}
    text = _without_thinking(_text(msg.get("content"), "content")).strip()
    if "{" not in text:
        text = (_text(msg.get("reasoning_content"), "reasoning_content") or _text(msg.get("thinking"), "thinking")
                or text).strip()
    return text, timings, usage


def _error_reply(error: Any) -> RejectedError | TransientError:
    """A 200 that carries an `error` (some servers send one in place of a status): a refusal when it
    names a 4xx code, else a failure of the endpoint, as its status would have been."""
    detail = error.get("message", error) if isinstance(error, dict) else error
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, int) and 400 <= code < 500 and code not in (408, 429):
        return RejectedError(f"HTTP 200 with error {code}: {detail}")
    return TransientError(f"HTTP 200 with an error: {detail}")


def _shape(value: Any) -> str:
    return "missing" if value is None else f"a JSON {type(value).__name__}"


def _table(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidReplyError(f"the reply's {where} is {_shape(value)}, not an object")
    return value


def _text(value: Any, where: str) -> str:
    """A message's text: a string, or OpenAI's list of parts; lone surrogates (escapes no UTF-8 holds) replaced."""
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        value = "".join(p["text"] for p in value if isinstance(p.get("text"), str))
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidReplyError(f"the reply's {where} is {_shape(value)}, not text")
    return value.encode("utf-8", "replace").decode("utf-8") if _SURROGATE.search(value) else value


_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_TIMINGS = 32  # llama-server reports about ten; more is not timings


def _numbers(table: Any) -> dict[str, float]:
    """A server's figures: keys of it that are finite non-negative numbers (NaN, bools, strings dropped)."""
    if not isinstance(table, dict):
        return {}
    kept = {k: float(v) for k, v in table.items() if isinstance(k, str) and len(k) <= 64 and k.isprintable()
            and type(v) in (int, float) and 0 <= v < 1e15}
    return dict(list(kept.items())[:MAX_TIMINGS])


def _count(value: Any) -> int:
    """A token count, or 0 where the server's is not one."""
    return value if type(value) is int and 0 <= value < 2**31 else 0


def _exhausted(failure: TransientError | None, e: Endpoint | None, tries: int) -> PhotoError:
    where = e.cfg.url if e else "the endpoints"
    if isinstance(failure, InvalidReplyError):
        return PhotoError("server_reply_invalid", f"{where} answered with a reply bbsd cannot read ({failure})",
                          f"check that {where} is an OpenAI-compatible server serving {e.cfg.model if e else 'it'} "
                          '(Ollama: api = "ollama"); the photo is not retried until it changes')
    return PhotoError("server_error", f"the inference servers failed {tries} times on this photo (last: {where}: "
                      f"{failure})", "see the endpoint.down / request.retry events; the photo is not retried until "
                      "it changes")


def _without_thinking(text: str) -> str:
    """`text` without its `<think>…</think>` blocks, in one pass: a lazy regex over a reply of many
    `<think>` and no `</think>` took quadratic time holding the GIL (20 s for 210 kB, the whole daemon
    frozen). An unclosed block is kept, as the regex kept it."""
    out, at = [], 0
    while (start := text.find("<think>", at)) >= 0:
        end = text.find("</think>", start + 7)
        if end < 0:
            break
        out.append(text[at:start])
        at = end + 8
    out.append(text[at:])
    return "".join(out)


def _inference(cfg, doc, text, timings, usage, latency: float, attempts: int) -> Inference:
    encode = min(timings.get("prompt_ms", 0.0), latency)
    served = {"endpoint": cfg.url, "model": _served_model(cfg, doc), "latency_ms": round(latency, 1),
              "attempts": attempts, **({"server_timings": timings} if timings else {})}
    return Inference(text=text, prompt_tokens=usage["prompt"], output_tokens=usage["output"], encode_ms=encode,
                     generate_ms=max(0.0, latency - encode), served=served)


def _served_model(cfg: EndpointConfig, doc: dict) -> str:
    """The model the server says answered, shown as text (escapes, capped), or the configured one."""
    name = doc.get("model")
    return printable(name[:200]) if isinstance(name, str) and name else cfg.model


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
        finally:
            e.close()
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
