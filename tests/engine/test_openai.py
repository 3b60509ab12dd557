"""The `openai` backend against real llama-server instances on loopback, running the tiny test model.

llama-server is built once from the llama.cpp vendored in the pinned llama-cpp-python sdist
(build/llama-server.sh, cached). Two servers, a real daemon as a subprocess: a burst is split
between them and labelled exactly once; one server killed mid-burst costs nothing and rejoins.
"""

import collections
import json
import subprocess
import time
from pathlib import Path

import pytest

from bbsd.metrics import percentile
from bbsd.sidecars import record as sidecar
from tests.conftest import REPO, SLACK, BbsdRun, make_photo, write_config
from tests.fakes.servers import LlamaServer

BUILD_S = 3600  # a cold build on 2 busy cores; cached afterwards


@pytest.fixture(scope="session")
def llama_server() -> Path:
    r = subprocess.run([str(REPO / "build" / "llama-server.sh")], capture_output=True, text=True, timeout=BUILD_S)
    assert r.returncode == 0, r.stderr[-2000:]
    return Path(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def two_servers(llama_server, tiny_models, tmp_path):
    servers = [LlamaServer(llama_server, tiny_models, tmp_path / f"server{i}.log", start_timeout_s=120 * SLACK)
               for i in range(2)]
    yield servers
    for s in servers:
        s.stop()


def _daemon(tmp_path, servers, inbox) -> BbsdRun:
    ends = "".join(f'[[openai.endpoints]]\nurl = "{s.url}"\nmodel = "tiny"\nin_flight = 2\n' for s in servers)
    extra = ("[openai]\ntimeout_seconds = 60\nbackoff_seconds = 0.2\ndown_after_failures = 2\n"
             f"probe_seconds = 1\n{ends}")
    cfg = write_config(tmp_path, [inbox], backend="openai", extra=extra)
    return BbsdRun(cfg, tmp_path / "daemon.log")


def _served(photos) -> dict[str, list[float]]:
    by = collections.defaultdict(list)
    for p in photos:
        doc = sidecar.read(p)
        assert doc and doc["status"] == "labeled", (p, doc and doc.get("error"))
        by[doc["served"]["endpoint"]].append(doc["served"]["latency_ms"])
    return by


def _once_each(run: BbsdRun, photos) -> None:
    counts = collections.Counter(e["path"] for e in run.events("photo.labeled"))
    assert {str(p) for p in photos} == set(counts) and set(counts.values()) == {1}


@pytest.mark.slow
def test_a_burst_of_100_is_split_between_two_servers_and_labelled_once(tmp_path, two_servers, summary):
    inbox = tmp_path / "in"
    inbox.mkdir()
    run = _daemon(tmp_path, two_servers, inbox)
    try:
        run.wait_for("daemon.ready", timeout=120)
        photos = [make_photo(inbox / f"b{i:03d}.jpg", color=(i, 255 - i, 0)) for i in range(100)]
        run.wait_for("photo.labeled", timeout=900, count=100)
        status = json.loads((tmp_path / "state" / "status.json").read_text())
    finally:
        assert run.stop() == 0
    _once_each(run, photos)
    by = _served(photos)
    assert set(by) == {s.url for s in two_servers} and min(len(v) for v in by.values()) >= 20
    assert {e["url"] for e in status["endpoints"]} == set(by)
    summary("openai burst, 100 photos on two llama-server (tiny model, 2 slots each, 127.0.0.1): " + ", ".join(
        f"{url.rsplit(':', 1)[1]}: {len(v)} photos p50 {percentile(v, 0.5):.0f} ms" for url, v in by.items()))


@pytest.mark.slow
def test_a_server_killed_mid_burst_costs_nothing_and_rejoins(tmp_path, two_servers, summary):
    inbox = tmp_path / "in"
    inbox.mkdir()
    a, b = two_servers
    run = _daemon(tmp_path, two_servers, inbox)
    try:
        run.wait_for("daemon.ready", timeout=120)
        photos = [make_photo(inbox / f"k{i:03d}.jpg", color=(i, 0, 255 - i)) for i in range(60)]
        run.wait_for("photo.labeled", timeout=600, count=10)
        b.kill()
        t_kill = time.monotonic()
        run.wait_for("photo.labeled", timeout=900, count=60)
        down = run.wait_for("endpoint.down", timeout=60)
        b.start()
        run.wait_for("endpoint.up", timeout=60)
        retries_before = len(run.events("request.retry"))
        later = [make_photo(inbox / f"l{i:03d}.jpg", color=(0, i, 9)) for i in range(20)]
        run.wait_for("photo.labeled", timeout=600, count=80)
    finally:
        assert run.stop() == 0
    _once_each(run, photos + later)
    assert down[0]["url"] == b.url
    # Kept-alive connections to the killed server, and to the survivor idle past llama-server's 5 s,
    # were closed under the daemon: sending on new ones is no failure, so nothing is retried.
    assert run.events("request.retry")[retries_before:] == []
    assert len(run.events("endpoint.down")) == 1
    assert b.url in _served(later)  # it rejoined
    summary(f"openai failover: server killed after 10 of 60 photos; all 60 labelled once, the rest on the "
            f"survivor ({time.monotonic() - t_kill:.0f} s incl. restart); it served "
            f"{len(_served(later)[b.url])} of 20 later photos after rejoining")
