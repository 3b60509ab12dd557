"""The `openai` backend's protocol corners a real server will not produce on demand: an in-test HTTP
server answers malformed JSON, 500s and slow replies. Real llama-server instances are in test_openai.py.
"""

import json
import shutil
import socket
import ssl
import struct
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bbsd import config
from bbsd.engine import prompt
from bbsd.engine.registry import open_labeler
from bbsd.errors import ConfigError
from bbsd.pipeline import Pipeline, Status
from bbsd.sidecars import record as sidecar
from tests.conftest import make_photo, wait_until, write_config

GOOD = {"characters": ["Baba Yaga"], "props": [], "caption": "a witch", "scene": "stage", "visible_text": []}
SECRET = "sk-test-never-written-anywhere"


class _Handler(BaseHTTPRequestHandler):
    def setup(self):
        super().setup()
        self.outer = self.server.outer
        self.outer.connected += 1
        self.protocol_version = "HTTP/1.0" if self.outer.connections == "close" else "HTTP/1.1"

    def handle(self):
        if self.outer.connections not in ("close-idle", "reset-idle"):
            return super().handle()
        self.handle_one_request()
        self.wfile.flush()
        if self.outer.connections == "reset-idle":  # closed with a reset: a write on it fails at once
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close(), self.wfile.close(), self.connection.close()
        else:
            self.connection.shutdown(socket.SHUT_RDWR)  # the FIN goes out now, not when the thread ends
        self.outer.closed += 1

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._send(200, b'{"data": []}')

    def do_POST(self):
        outer = self.outer
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        outer.seen.append(body)
        outer.auth.append(self.headers.get("Authorization"))
        step = outer.script.pop(0) if outer.script else "ok"
        if step == "drop":
            self.close_connection = True
            return
        if step == "500":
            return self._send(500, b"overloaded")
        if step == "slow":
            outer.release.wait(10)
        content = {"garbage": None, "text": "Sure! The witch is there."}.get(step, json.dumps(GOOD))
        if step == "garbage":
            return self._send(200, b"<html>not json")
        reply = {"model": "fake-served", "choices": [{"message": {"content": content}}],
                 "usage": {"prompt_tokens": 7, "completion_tokens": 5},
                 "timings": {"prompt_ms": 1.5, "predicted_ms": 2.5}}
        self._send(200, json.dumps(reply).encode())

    def _send(self, code, data):
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FakeServer:
    """Answers /v1/chat/completions from a script: each entry is 'ok', 'garbage', '500', 'slow', 'text'
    or 'drop' (the request is read, then the connection closed without a reply: a server that died on
    it). `connections`: "close" (HTTP/1.0, one request each), "keep" (HTTP/1.1 keep-alive) or
    "close-idle" (HTTP/1.1 without "Connection: close", yet each socket is closed after its reply, as
    a server does to an idle kept-alive connection: its timeout, or a restart) or "reset-idle" (the
    same, closed with a TCP reset)."""

    def __init__(self, script: list[str], connections: str = "close", tls: ssl.SSLContext | None = None) -> None:
        self.script, self.seen, self.auth = list(script), [], []
        self.connections = connections
        self.closed = 0  # connections closed after a reply ("close-idle", "reset-idle")
        self.connected = 0  # connections accepted
        self.release = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.outer = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        if tls is not None:  # HTTPS, with the context's certificate
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
            self.url = self.url.replace("http:", "https:")
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()


@pytest.fixture
def servers():
    made = []

    def make(script, **opts):
        made.append(FakeServer(script, **opts))
        return made[-1]
    yield make
    for s in made:
        s.close()


def _settings(tmp_path, urls, extra="", env=None, **opts):
    inbox = tmp_path / "in"
    inbox.mkdir(exist_ok=True)
    ends = "".join(f'[[openai.endpoints]]\nurl = "{u}"\nmodel = "m"\nin_flight = 2\napi_key_env = "BBSD_T_KEY"\n'
                   for u in urls)
    table = {"timeout_seconds": 2, "backoff_seconds": 0.05, "probe_seconds": 0.3, **opts}
    body = "[openai]\n" + "".join(f"{k} = {v}\n" for k, v in table.items()) + f"{ends}{extra}"
    cfg = write_config(tmp_path, [inbox], backend="openai", extra=body)
    return inbox, config.load(cfg, environ={"BBSD_T_KEY": SECRET, **(env or {})})


def _label(tmp_path, settings, inbox, name="p.jpg"):
    photo = make_photo(inbox / name)
    pipeline = Pipeline(open_labeler(settings), settings, prompt.build(settings.catalog))
    try:
        return photo, pipeline.process(photo), pipeline
    finally:
        pipeline.close()


def test_reply_schema_image_and_key_go_to_the_server_and_the_sidecar_names_who_served(tmp_path, servers, monkeypatch):
    monkeypatch.setenv("BBSD_T_KEY", SECRET)
    s = servers(["ok"])
    inbox, settings = _settings(tmp_path, [s.url])
    photo, outcome, _ = _label(tmp_path, settings, inbox)
    assert outcome.status is Status.LABELED
    body = s.seen[0]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["properties"]["characters"]
    image = body["messages"][1]["content"][0]["image_url"]["url"]
    assert image.startswith("data:image/jpeg;base64,")
    assert s.auth[0] == f"Bearer {SECRET}"
    doc = sidecar.read(photo)
    assert doc["served"]["endpoint"] == s.url and doc["served"]["model"] == "fake-served"
    assert doc["served"]["server_timings"] == {"prompt_ms": 1.5, "predicted_ms": 2.5}
    assert doc["model"] == {"backend": "openai", "file": "m", "mmproj": None}
    assert SECRET not in sidecar.path_for(photo).read_text()


def test_malformed_json_and_500s_are_retried_on_the_other_endpoint(tmp_path, servers, monkeypatch):
    monkeypatch.setenv("BBSD_T_KEY", SECRET)
    bad, good = servers(["garbage", "500", "500"]), servers([])
    inbox, settings = _settings(tmp_path, [bad.url, good.url])
    pipeline = Pipeline(open_labeler(settings), settings, prompt.build(settings.catalog))
    try:
        outcomes = [pipeline.process(make_photo(inbox / f"p{i}.jpg", color=(i, 0, 0))) for i in range(6)]
        health = {h["url"]: h for h in pipeline.labeler.health()}
    finally:
        pipeline.close()
    assert all(o.status is Status.LABELED for o in outcomes)
    assert health[bad.url]["failed"] == 3 and health[good.url]["done"] >= 3


def test_an_endpoint_down_after_repeated_failures_is_probed_and_rejoins(tmp_path, servers, monkeypatch):
    monkeypatch.setenv("BBSD_T_KEY", SECRET)
    flaky = servers(["500", "500", "500"])
    inbox, settings = _settings(tmp_path, [flaky.url], down_after_failures=2, retries=4)
    pipeline = Pipeline(open_labeler(settings), settings, prompt.build(settings.catalog))
    try:
        outcome = pipeline.process(make_photo(inbox / "p.jpg"))  # waits out the down time, then succeeds
        (h,) = pipeline.labeler.health()
    finally:
        pipeline.close()
    assert outcome.status is Status.LABELED
    assert h["state"] == "up" and h["done"] == 1 and h["failed"] == 3


def test_a_slow_reply_times_out_and_goes_elsewhere(tmp_path, servers, monkeypatch):
    monkeypatch.setenv("BBSD_T_KEY", SECRET)
    slow, fast = servers(["slow"]), servers([])
    inbox, settings = _settings(tmp_path, [slow.url, fast.url], timeout_seconds=1)
    photo, outcome, _ = _label(tmp_path, settings, inbox)
    assert outcome.status is Status.LABELED
    assert sidecar.read(photo)["served"]["endpoint"] == fast.url


def test_unconstrained_text_gets_the_same_validation_and_retry_as_the_local_engine(tmp_path, servers, monkeypatch):
    monkeypatch.setenv("BBSD_T_KEY", SECRET)
    s = servers(["text", "ok"])  # llama-server answers 200 with free text when its grammar fails
    inbox, settings = _settings(tmp_path, [s.url])
    photo, outcome, _ = _label(tmp_path, settings, inbox)
    assert outcome.status is Status.LABELED and len(s.seen) == 2
    assert s.seen[1]["temperature"] == 0.7  # the varied retry


def _three_photos(tmp_path, s, closing: str) -> tuple[list, dict]:
    """Three photos labelled one after the other through one endpoint that closes each connection after
    its reply (`closing` says how): their statuses and the endpoint's health."""
    inbox, settings = _settings(tmp_path, [s.url], down_after_failures=1, retries=0)
    pipeline = Pipeline(open_labeler(settings), settings, prompt.build(settings.catalog))
    outcomes = []
    try:
        for i in range(3):
            outcomes.append(pipeline.process(make_photo(inbox / f"p{i}.jpg", color=(i, 0, 0))))
            wait_until(lambda i=i: s.closed > i, 10, closing)
        (h,) = pipeline.labeler.health()
    finally:
        pipeline.close()
    return [o.status for o in outcomes], h


def test_a_kept_alive_connection_the_server_closed_while_idle_is_no_failure(tmp_path, servers, monkeypatch):
    # llama-server closes an idle connection after 5 s and forgets all of them when it restarts; the
    # next request on it must go out on a new connection, not count against the endpoint and its photo.
    monkeypatch.setenv("BBSD_T_KEY", SECRET)
    s = servers([], connections="close-idle")
    statuses, h = _three_photos(tmp_path, s, "the server closed the connection")
    assert statuses == [Status.LABELED] * 3
    assert h["failed"] == 0 and h["done"] == 3 and h["state"] == "up" and len(s.seen) == 3


def test_a_request_the_server_dropped_after_reading_it_is_not_sent_again_on_that_connection(
        tmp_path, servers, monkeypatch):
    # A server that closes the connection once it has the request may have worked on it, or died of
    # it: that is a failure of the endpoint (retried with backoff, elsewhere where there is another),
    # not a stale connection to send the same request down again at once.
    monkeypatch.setenv("BBSD_T_KEY", SECRET)
    s = servers(["ok", "drop"], connections="keep")
    inbox, settings = _settings(tmp_path, [s.url], retries=0)
    pipeline = Pipeline(open_labeler(settings), settings, prompt.build(settings.catalog))
    try:
        first = pipeline.process(make_photo(inbox / "p0.jpg"))
        second = pipeline.process(make_photo(inbox / "p1.jpg", color=(9, 0, 0)))
        (h,) = pipeline.labeler.health()
    finally:
        pipeline.close()
    assert first.status is Status.LABELED and second.status is Status.FAILED
    assert len(s.seen) == 2 and h["failed"] == 1 and "RemoteDisconnected" in h["last_error"]


def test_requests_to_a_keep_alive_server_share_one_connection(tmp_path, servers, monkeypatch):
    monkeypatch.setenv("BBSD_T_KEY", SECRET)
    s = servers([], connections="keep")
    inbox, settings = _settings(tmp_path, [s.url])
    pipeline = Pipeline(open_labeler(settings), settings, prompt.build(settings.catalog))
    try:
        outcomes = [pipeline.process(make_photo(inbox / f"p{i}.jpg", color=(i, 0, 0))) for i in range(3)]
    finally:
        pipeline.close()
    assert [o.status for o in outcomes] == [Status.LABELED] * 3
    assert len(s.seen) == 3 and s.connected == 1


def test_a_request_whose_write_failed_on_a_kept_connection_goes_again_once_and_is_no_failure(
        tmp_path, servers, monkeypatch):
    # The server closed the kept connection just after the check before the request (a race the
    # check cannot see, made certain here by skipping it): writing the request fails, so the server
    # cannot have it, and it goes again on a new connection without counting against the endpoint.
    import urllib3.connectionpool

    monkeypatch.setenv("BBSD_T_KEY", SECRET)
    monkeypatch.setattr(urllib3.connectionpool, "is_connection_dropped", lambda conn: False)
    s = servers([], connections="reset-idle")
    statuses, h = _three_photos(tmp_path, s, "the server reset the connection")
    assert statuses == [Status.LABELED] * 3
    assert h["failed"] == 0 and h["done"] == 3 and len(s.seen) == 3 and s.connected == 3


def test_an_https_endpoint_is_used_when_its_certificate_is_trusted_and_refused_when_not(tmp_path, servers,
                                                                                       monkeypatch):
    # TLS with the system's trust (SSL_CERT_FILE stands in for it here): the certificate must chain to
    # a trusted one and name the host; a server whose certificate does not is never sent the photo.
    openssl = shutil.which("openssl") or pytest.skip("no openssl to make a certificate with")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert], check=True,
                   capture_output=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    monkeypatch.setenv("BBSD_T_KEY", SECRET)
    s = servers([], connections="keep", tls=tls)
    inbox, settings = _settings(tmp_path, [s.url], retries=0)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    photo, trusted, _ = _label(tmp_path, settings, inbox)
    monkeypatch.delenv("SSL_CERT_FILE")
    other, untrusted, _ = _label(tmp_path, settings, inbox, name="q.jpg")  # a new labeler: a new handshake
    assert s.url.startswith("https://") and trusted.status is Status.LABELED
    assert sidecar.read(photo)["served"]["endpoint"] == s.url and s.auth == [f"Bearer {SECRET}"]
    assert untrusted.status is Status.FAILED and len(s.seen) == 1
    assert "CERTIFICATE_VERIFY_FAILED" in sidecar.read(other)["error"]["message"]


def test_config_refuses_credentials_in_urls_and_missing_key_variables(tmp_path):
    with pytest.raises(ConfigError, match=r"carries credentials"):
        _settings(tmp_path, ["http://user:pw@10.0.0.5:8080"])
    with pytest.raises(ConfigError, match=r"names \$BBSD_T_KEY, which is not set"):
        cfg = write_config(tmp_path, [tmp_path], backend="openai", extra='[openai]\n[[openai.endpoints]]\n'
                           'url = "http://10.0.0.5:8080"\nmodel = "m"\napi_key_env = "BBSD_T_KEY"\n')
        config.load(cfg, environ={})
    with pytest.raises(ConfigError, match=r"belongs to the llama backend"):
        _settings(tmp_path, ["http://10.0.0.5:8080"], extra='[model]\npath = "x.gguf"\n')
