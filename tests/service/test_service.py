"""Running backstage: sd_notify, the unit, install, status, SIGHUP reload and the report."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from bbsd import config
from bbsd.service import unit
from bbsd.service.sdnotify import Notifier
from bbsd.sidecars import record as sidecar
from tests.conftest import REPO, make_photo, run_bbsd, wait_until, write_config

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze missing: `make test` installs systemd")


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    yield path, sock
    sock.close()


def drain(sock) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            return out


def test_notifier_speaks_the_protocol_to_a_real_socket(notify_socket):
    path, sock = notify_socket
    n = Notifier(str(path))
    assert n.ready("queue 0") and n.watchdog() and n.stopping("bye") and n.extend_timeout(1.5, "loading")
    assert drain(sock) == ["READY=1\nSTATUS=queue 0", "WATCHDOG=1", "STOPPING=1\nSTATUS=bye",
                           "EXTEND_TIMEOUT_USEC=1500000\nSTATUS=loading"]


def test_notifier_reaches_abstract_sockets():
    name = f"bbsd-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier("@" + name).ready("x")
        assert sock.recv(100) == b"READY=1\nSTATUS=x"
    finally:
        sock.close()


def test_notifier_is_a_no_op_outside_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and n.ready("x") is False


def test_daemon_notifies_ready_after_load_then_status_watchdog_and_stopping(tmp_path, tiny_models, notify_socket,
                                                                            bbsd_run):
    path, sock = notify_socket
    inbox = tmp_path / "in"
    inbox.mkdir()
    cfg = write_config(tmp_path, [inbox], tiny_models, extra=f'[service]\nstate_dir = "{tmp_path / "state"}"\n')
    run = bbsd_run(cfg, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"})
    got: list[str] = []

    def ready_seen() -> bool:
        got.extend(drain(sock))
        return any("READY=1" in m for m in got)

    wait_until(ready_seen, 60, "READY=1")
    logged = [e["event"] for e in run.events()]
    assert {"worker.started", "daemon.ready"} <= set(logged), "READY came before the model and watcher were up"
    make_photo(inbox / "a.jpg")
    wait_until(lambda: sidecar.path_for(inbox / "a.jpg").exists(), 30, "a sidecar")
    wait_until(lambda: got.extend(drain(sock)) or any("labelled 1" in m for m in got), 10, "a STATUS with the photo")
    wait_until(lambda: got.extend(drain(sock)) or any(m == "WATCHDOG=1" for m in got), 10, "a WATCHDOG ping")
    assert run.stop() == 0
    got.extend(drain(sock))
    kinds = [m.split("\n")[0].split("=")[0] for m in got]
    assert kinds.index("READY") < kinds.index("STOPPING")
    assert "EXTEND_TIMEOUT_USEC" in kinds and kinds.index("EXTEND_TIMEOUT_USEC") < kinds.index("READY")
    assert "READY" not in kinds[kinds.index("READY") + 1:]  # READY once
    status_line = next(m for m in got if "labelled 1" in m)
    assert re.search(r"STATUS=queue \d+, labelled 1, failed 0, last \d+ ms", status_line)


def test_repository_unit_is_the_rendered_reference():
    assert (REPO / "systemd" / "bbsd.service").read_text() == unit.reference()


def _exposure(unit_file: Path) -> float:
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit_file)],
                         capture_output=True, text=True).stdout
    return float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out)[1])


@needs_systemd_analyze
def test_unit_verifies_and_is_well_sandboxed(tmp_path):
    shipped = REPO / "systemd" / "bbsd.service"
    r = subprocess.run(["systemd-analyze", "verify", str(shipped)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert _exposure(shipped) <= 1.5


@needs_systemd_analyze
def test_installed_units_verify_for_cpu_and_gpu(tmp_path, tiny_models, summary):
    inbox = tmp_path / "in"
    inbox.mkdir()
    cfg = write_config(tmp_path, [inbox], tiny_models)
    units = tmp_path / "units"
    r = run_bbsd("service", "install", "--config", str(cfg), "--unit-dir", str(units), "--user", "bbsd")
    assert r.returncode == 0, r.stderr
    assert "sudo systemctl enable --now bbsd.service" in r.stdout and "useradd --system" in r.stdout
    text = (units / "bbsd.service").read_text()
    assert f"--config {cfg}" in text and f"ReadWritePaths={inbox}" in text
    assert not (units / "bbsd.service.d").exists()  # CPU config: no GPU drop-in
    assert subprocess.run(["systemd-analyze", "verify", str(units / "bbsd.service")]).returncode == 0
    cpu_score = _exposure(units / "bbsd.service")

    cfg.write_text(cfg.read_text().replace("[engine]", "[engine]\ngpu_layers = -1"))
    run_bbsd("service", "install", "--config", str(cfg), "--unit-dir", str(units))
    dropin = units / "bbsd.service.d" / "gpu.conf"
    assert "DeviceAllow=/dev/nvidiactl rw" in dropin.read_text()
    merged = tmp_path / "merged" / "bbsd.service"  # the unit as systemd sees it with the drop-in applied
    merged.parent.mkdir()
    merged.write_text(text + "\n" + dropin.read_text())
    assert subprocess.run(["systemd-analyze", "verify", str(merged)]).returncode == 0
    summary(f"systemd-analyze security --offline=true: shipped unit {_exposure(REPO / 'systemd' / 'bbsd.service')}, "
            f"installed CPU unit {cpu_score}, with GPU drop-in {_exposure(merged)}")

    r = run_bbsd("service", "uninstall", "--unit-dir", str(units))
    assert r.returncode == 0 and not (units / "bbsd.service").exists() and not dropin.exists()


def test_status_reports_the_running_daemon_and_says_when_it_is_not(tmp_path, tiny_models, bbsd_run):
    inbox = tmp_path / "in"
    inbox.mkdir()
    state_dir = tmp_path / "state"
    cfg = write_config(tmp_path, [inbox], tiny_models, extra=f'[service]\nstate_dir = "{state_dir}"\n')
    r = run_bbsd("status", "--config", str(cfg))
    assert r.returncode == 3 and "not running" in r.stdout
    run = bbsd_run(cfg)
    try:
        photos = [make_photo(inbox / f"p{i}.jpg", color=(i * 50, 0, 0)) for i in range(3)]
        wait_until(lambda: all(sidecar.path_for(p).exists() for p in photos), 60, "sidecars")
        wait_until(lambda: (json.loads(run_bbsd("status", "--config", str(cfg), "--json").stdout)
                            .get("labeled") == 3), 10, "status to count 3 photos")
        r = run_bbsd("status", "--config", str(cfg))
        assert r.returncode == 0, r.stdout
        assert "bbsd: running (pid" in r.stdout and "3 labelled, 0 failed" in r.stdout
        assert re.search(r"latency: p50 \d+ ms, p95 \d+ ms", r.stdout) and "RSS" in r.stdout
    finally:
        assert run.stop() == 0
    r = run_bbsd("status", "--config", str(cfg))
    assert r.returncode == 3 and "not running" in r.stdout


def test_two_daemons_without_state_dir_each_have_their_own_status(tmp_path, tiny_models, bbsd_run):
    """Two stages on one PC: neither config sets [service] state_dir; both run under one state base."""
    env = {"STATE_DIRECTORY": str(tmp_path / "var-lib-bbsd"), "XDG_STATE_HOME": str(tmp_path / "xdg")}
    stages = {}
    for name, photos in (("stage-a", 1), ("stage-b", 2)):
        (tmp_path / name / "in").mkdir(parents=True)
        cfg = write_config(tmp_path / name, [tmp_path / name / "in"], tiny_models, extra="[service]\n")
        stages[name] = (cfg, bbsd_run(cfg, name=name, env=env), photos)
    try:
        for name, (_, run, photos) in stages.items():
            shots = [make_photo(tmp_path / name / "in" / f"p{i}.jpg", color=(i * 50, 0, 0)) for i in range(photos)]
            run.wait_for("photo.labeled", count=photos, timeout=120)
            assert all(sidecar.path_for(p).exists() for p in shots)
        for name, (cfg, run, photos) in stages.items():
            wait_until(lambda c=cfg, n=photos: json.loads(run_bbsd("status", "--config", str(c), "--json", env=env)
                                                          .stdout).get("labeled") == n, 30, f"{name}'s status")
            r = run_bbsd("status", "--config", str(cfg), env=env)
            assert r.returncode == 0 and f"pid {run.proc.pid}," in r.stdout and f"{photos} labelled" in r.stdout
        files = {json.loads(Path(r.events("daemon.ready")[0]["status_file"]).read_text())["config"]
                 for _, r, _ in stages.values()}
        assert files == {str(c.resolve()) for c, _, _ in stages.values()}
    finally:
        assert all(run.stop() == 0 for _, run, _ in stages.values())
    assert run_bbsd("status", "--config", str(stages["stage-a"][0]), env=env).returncode == 3


def test_a_daemon_refuses_a_state_dir_held_by_another_running_config(tmp_path, tiny_models, bbsd_run):
    shared = f'[service]\nstate_dir = "{tmp_path / "shared-state"}"\n'
    cfgs = []
    for name in ("one", "two"):
        (tmp_path / name / "in").mkdir(parents=True)
        cfgs.append(write_config(tmp_path / name, [tmp_path / name / "in"], tiny_models, extra=shared))
    first = bbsd_run(cfgs[0], name="one")
    try:
        first.wait_for("daemon.ready", timeout=120)
        r = run_bbsd("run", "--config", str(cfgs[1]))
        assert r.returncode == 2 and "is in use by the bbsd daemon of" in r.stderr and str(cfgs[0]) in r.stderr
    finally:
        assert first.stop() == 0


def test_sighup_reloads_the_catalog_without_reloading_the_model(tmp_path, tiny_models, bbsd_run):
    inbox = tmp_path / "in"
    inbox.mkdir()
    cfg = write_config(tmp_path, [inbox], tiny_models)
    run = bbsd_run(cfg)
    proc, logged = run.proc, run.events
    try:
        wait_until(lambda: logged("daemon.ready"), 60, "ready")
        for i in range(2):
            make_photo(inbox / f"before_{i}.jpg", color=(9, 40 * i, 9))
        wait_until(lambda: len(logged("photo.labeled")) == 2, 60, "two photos with the old catalog")
        cfg.write_text(cfg.read_text() + '\n[[props]]\nname = "mortar"\ndescription = "wooden"\n')
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: logged("config.reloaded"), 10, "the reload")
        assert logged("config.reloaded")[0]["applied"] == ["catalog"] and not logged("config.restart_needed")
        photo = make_photo(inbox / "after.jpg")
        wait_until(lambda: sidecar.path_for(photo).exists(), 30, "a sidecar with the new catalog")
        schema_digest = json.loads(sidecar.path_for(photo).read_text())["prompt"]["catalog_sha256"]
        assert schema_digest == config.load(cfg, environ={}).catalog.digest()
        # The fixed prompt prefix was evaluated once for each catalog: at start (the warm-up), so the
        # old catalog's photos evaluated only their image and the text after it; then once more by
        # the new catalog's first photo.
        warm = logged("engine.warmed_up")[0]
        assert warm["evaluated_tokens"] == warm["prompt_tokens"]
        first = logged("photo.labeled")  # in order; a rescan relabels the old two later
        assert all(e["evaluated_tokens"] < e["prompt_tokens"] / 2 for e in first[:2])
        new_first = first[2]  # the first photo labelled with the new catalog
        assert new_first["evaluated_tokens"] == new_first["prompt_tokens"]
        assert len(logged("engine.prefix_cached")) >= 2  # old catalog, new catalog (rescans may add photos)

        cfg.write_text(cfg.read_text().replace("threads = 2", "threads = 1"))
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: logged("config.restart_needed"), 10, "the restart notice")
        assert logged("config.restart_needed")[0]["sections"] == ["engine"]
        assert len(logged("worker.started")) == 1  # the model was never reloaded
    finally:
        assert run.stop() == 0


def test_report_on_a_50_photo_run_plots_the_50_photos(tmp_path, tiny_models, summary, bbsd_run):
    inbox = tmp_path / "in"
    inbox.mkdir()
    cfg = write_config(tmp_path, [inbox], tiny_models)
    run = bbsd_run(cfg)
    try:
        photos = [make_photo(inbox / f"IMG_{i:03d}.jpg", size=(160, 120), color=(i * 5, 90, 9)) for i in range(50)]
        wait_until(lambda: all(sidecar.path_for(p).exists() for p in photos), 120, "50 sidecars")
    finally:
        assert run.stop() == 0
    out = tmp_path / "report.html"
    r = run_bbsd("report", "--config", str(cfg), "--out", str(out), "--since", "1h")
    assert r.returncode == 0, r.stderr
    assert "photos: 50 (50 labelled, 0 failed)" in r.stdout and "latency: p50" in r.stdout
    html = out.read_text()
    charts = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    titles = [re.search(r"<title>(.*?)</title>", c)[1] for c in charts]
    assert titles == ["Latency per photo", "Latency histogram", "Engine memory (RSS) per photo", "Photos per minute"]
    assert charts[0].count('data-kind="point"') == 50 and charts[2].count('data-kind="point"') == 50
    assert sum(int(v) for v in re.findall(r'data-value="(\d+)"', charts[1])) == 50
    assert sum(int(v) for v in re.findall(r'data-value="(\d+)"', charts[3])) == 50
    data = json.loads(re.search(r"<script type='application/json' id='data'>(.*?)</script>", html)[1])
    assert data["photos"] == 50 and data["models"] == ["tiny-text.gguf"] and data["peak_rss_mb"] > 0
    lat = sorted(json.loads(sidecar.path_for(p).read_text())["timing_ms"]["total"] for p in photos)
    assert data["max_ms"] == lat[-1]
    summary(f"report on 50 photos: p50 {data['p50_ms']} ms, p95 {data['p95_ms']} ms, max {data['max_ms']} ms, "
            f"peak RSS {data['peak_rss_mb']} MB (tiny model, {data['machine']})")
    r = run_bbsd("report", "--config", str(cfg), "--out", str(out), "--since", "yesterday-ish")
    assert r.returncode == 2 and "--since 'yesterday-ish' is not a duration or a date" in r.stderr
