"""The venue artefact under a live systemd: installed as docs/stage/install.md tells a tech, driven with systemctl.

A Debian rootfs (debootstrap, cached) boots systemd as PID 1 in `systemd-nspawn --boot`; the test enters
it with `nsenter` and runs what a tech runs: tar, `bbsd service install`, the commands it prints. Then
it checks against that systemd what the offline checks cannot: READY before active, the STATUS line,
sidecars written through the sandbox and nothing outside it, reload, the watchdog, a kill -9, the
journal, a clean stop, the GPU drop-in. Every command and its output go to a log (BBSD_SYSTEMD_LOG).

Skipped unless BBSD_ARTEFACT (the tarball) and BBSD_SYSTEMD_ROOTFS are set: `make systemd-test`
sets them, builds the rootfs and needs root. The tests run in file order against one container.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bbsd.models import twin
from bbsd.study import toyshow
from tests.conftest import wait_until

ARTEFACT = os.environ.get("BBSD_ARTEFACT")
ROOTFS = os.environ.get("BBSD_SYSTEMD_ROOTFS")
LOG = Path(os.environ.get("BBSD_SYSTEMD_LOG", "build/out/systemd-test.log"))
pytestmark = pytest.mark.skipif(not (ARTEFACT and ROOTFS), reason="run `make systemd-test` (root, systemd-nspawn)")
EXPORT = "/srv/photos/export"
OUTSIDE = "/srv/photos/outside"  # owned by bbsd, but not in the unit's ReadWritePaths
CONFIG = "/etc/bbsd/config.toml"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Container:
    """A booted Debian container; `sh` runs a command in it as root and logs both."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root, self._log = root, log.open("a", buffering=1)
        self._console = (log.parent / "systemd-test-console.log").open("w")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-D", str(root), "--keep-unit", "--register=no", "--boot", "--console=read-only",
             f"--machine=bbsd-test-{os.getpid()}"], stdout=self._console, stderr=subprocess.STDOUT)
        wait_until(lambda: self._init_pid() is not None, 60, "the container's systemd")
        wait_until(lambda: self.sh("systemctl is-system-running", check=False, log=False).stdout.strip()
                   in ("running", "degraded"), 120, "the container to boot")

    def _init_pid(self) -> int | None:
        kids = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        self.pid = int(kids[0]) if kids else None
        return self.pid

    def note(self, text: str) -> None:
        self._log.write(f"\n## {text}\n")

    def sh(self, command: str, check: bool = True, log: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["nsenter", "-t", str(self.pid), "-a", "env", "-i", PATH_ENV, "LANG=C.UTF-8",
                            "/bin/bash", "-c", command], capture_output=True, text=True, timeout=300)
        if log:  # polls are not logged: the state they waited for is, by the step after them
            self._log.write(f"$ {command}\n{r.stdout}{r.stderr}" + (f"[exit {r.returncode}]\n" if r.returncode else ""))
        assert not check or r.returncode == 0, f"{command}: exit {r.returncode}\n{r.stdout}{r.stderr}"
        return r

    def show(self, prop: str, log: bool = True) -> str:
        return self.sh(f"systemctl show -P {prop} bbsd", log=log).stdout.strip()

    def events(self, name: str) -> list[dict]:
        """bbsd's JSON log lines in the journal (MESSAGE), with the journal's own fields under `_journal`."""
        out = []
        for line in self.sh("journalctl -u bbsd -o json --no-pager", log=False).stdout.splitlines():
            entry = json.loads(line)
            try:
                event = json.loads(entry.get("MESSAGE") or "")
            except (json.JSONDecodeError, TypeError):
                continue
            if isinstance(event, dict) and event.get("event") == name:
                out.append({**event, "_journal": entry})
        return out

    def close(self) -> None:
        if self.pid:
            subprocess.run(["kill", "-RTMIN+4", str(self.pid)])  # systemd's "poweroff"
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        self._console.close()


def _kit(folder: Path) -> tuple[str, str]:
    """What the tech brings: the model pair (the toy model), the show's photos; returns the pair's names."""
    text, mmproj = twin.write_pair_from(twin.shipped("bpe"), folder / "models")
    toyshow.render_show(folder / "photos", 11, 12, (900, 600))
    return text.name, mmproj.name


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    root = tmp_path_factory.mktemp("systemd") / "rootfs"
    subprocess.run(["cp", "-a", "--reflink=auto", ROOTFS, str(root)], check=True)
    models = _kit(root / "root" / "kit")
    shutil.copy(ARTEFACT, root / "root" / "kit" / Path(ARTEFACT).name)
    with (root / "etc" / "hosts").open("a") as hosts:  # as a Debian installer writes it; sudo looks it up
        hosts.write(f"127.0.1.1 {(root / 'etc' / 'hostname').read_text().strip()}\n")
    LOG.parent.mkdir(parents=True, exist_ok=True)
    LOG.write_text(f"# make systemd-test: {Path(ARTEFACT).name} in a container of {ROOTFS}\n")
    c = Container(root, LOG)
    c.models, c.photos = models, sorted(p.name for p in (root / "root" / "kit" / "photos").glob("*.jpg"))
    c.note(f"booted {ROOTFS} in systemd-nspawn: {c.sh('systemctl --version | head -1').stdout.strip()}")
    yield c
    c.note("journal of bbsd.service")
    c.sh("journalctl -u bbsd --no-pager -o short-precise | tail -n 400", check=False)
    c.close()
    shutil.rmtree(root, ignore_errors=True)


def photos(c: Container, folder: str = EXPORT) -> list[str]:
    return c.sh(f"cd {folder} && ls | grep -E '\\.jpg$' || true").stdout.split()


def sidecars(c: Container, folder: str = EXPORT, log: bool = False) -> dict[str, dict]:
    """Each photo's JSON sidecar in `folder`, by photo name."""
    out = c.sh(f"cd {folder} && for f in *.json; do [ -e \"$f\" ] && echo \"$f $(tr -d '\\n' < \"$f\")\"; done; true",
               log=log)
    return {line.split(" ", 1)[0].removesuffix(".json"): json.loads(line.split(" ", 1)[1])
            for line in out.stdout.splitlines() if line.strip()}


def drop(c: Container, names: list[str]) -> None:
    """Copy photos into the watch folder as a camera export would (a temp name, then a rename)."""
    for n in names:
        c.sh(f"cp /root/kit/photos/{n} {EXPORT}/.{n}.part && mv {EXPORT}/.{n}.part {EXPORT}/{n}")


def wait_labelled(c: Container, names: list[str], timeout: float = 180) -> dict[str, dict]:
    wait_until(lambda: set(names) <= set(sidecars(c)), timeout, f"sidecars of {names}", interval=1)
    c.sh(f"ls -l {EXPORT}")
    return sidecars(c)


def config_text(c: Container, catalog: str = "", extra: str = "") -> str:
    """The tech's edit of the shipped config.toml: the watch folder, the model pair, the show's cast."""
    text, mmproj = c.models
    return (f'[watch]\nfolders = ["{EXPORT}"]\nsettle_seconds = 0.5\n\n[model]\n'
            f'path = "/opt/bbsd/gguf_models/{text}"\nmmproj = "/opt/bbsd/gguf_models/{mmproj}"\n\n'
            f'{extra}[log]\nformat = "json"\n\n{catalog or toyshow.catalog_toml()}')


def write_config(c: Container, text: str) -> None:
    (c.root / CONFIG.lstrip("/")).write_text(text)


def pids_of(c: Container, role: str) -> list[int]:
    """bbsd processes of a role (`run`, `_worker`, `_decoder`); minimal Debian has no pgrep."""
    out = c.sh(f"for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^/opt/bbsd/bbsd {role} '"
               " && echo ${p#/proc/}; done; true")
    return [int(p) for p in out.stdout.split()]


def wait_restarted(c: Container, old_pid: str, timeout: float = 120) -> None:
    wait_until(lambda: c.show("MainPID", log=False) not in (old_pid, "0") and c.show("ActiveState", log=False)
               == "active", timeout, "systemd to restart bbsd", interval=0.5)
    c.sh("systemctl show -p MainPID,NRestarts,ActiveState,Result bbsd")


def test_installed_as_the_docs_tell_a_tech(box):
    """docs/stage/install.md "Install on a venue PC", then the commands `bbsd service install` prints."""
    c, tarball = box, Path(ARTEFACT).name
    c.note("install (docs/stage/install.md)")
    c.sh(f"mkdir -p {EXPORT}")  # the camera's export folder
    c.sh(f"tar -C /opt -xzf /root/kit/{tarball} && ln -sf /opt/bbsd/bbsd /usr/local/bin/bbsd")
    c.sh(f"mkdir -p /etc/bbsd && cp /opt/bbsd/config.toml {CONFIG}")
    c.sh("cp /root/kit/models/*.gguf /opt/bbsd/gguf_models/")
    write_config(c, config_text(c))  # the tech's $EDITOR
    c.sh(f"bbsd check --config {CONFIG}")
    printed = c.sh(f"bbsd service install --config {CONFIG}").stdout
    commands = [line.strip() for line in printed.partition("next, as root:")[2].splitlines() if line.strip()]
    assert commands[-1].startswith("journalctl -u bbsd.service -f"), printed
    for command in commands[:-1]:  # `journalctl -f` follows forever: it is the tech's window, not a step
        c.sh(command)
    assert c.show("ActiveState") == "active" and c.show("UnitFileState") == "enabled"
    assert c.sh("systemd-analyze verify bbsd.service").returncode == 0


def test_active_only_after_ready(box):
    """Type=notify: systemd's "Started" comes after bbsd's daemon.ready, which comes after the model loaded,
    and the READY came from the main PID (NotifyAccess=main holds with the onedir bootloader)."""
    c = box
    c.note("active only after READY")
    assert c.show("Type") == "notify" and c.show("NotifyAccess") == "main"
    ready = c.events("daemon.ready")[-1]["_journal"]
    loaded = c.events("worker.started")[-1]["_journal"]
    started = [json.loads(line) for line in c.sh("journalctl -u bbsd -o json --no-pager _PID=1").stdout.splitlines()]
    started = [e for e in started if str(e.get("MESSAGE", "")).startswith("Started bbsd.service")][-1]
    assert int(loaded["__MONOTONIC_TIMESTAMP"]) <= int(ready["__MONOTONIC_TIMESTAMP"])
    assert int(ready["__MONOTONIC_TIMESTAMP"]) <= int(started["__MONOTONIC_TIMESTAMP"])
    assert ready["_PID"] == c.show("MainPID")
    assert "reception only permitted for main PID" not in c.sh("journalctl -u bbsd --no-pager").stdout


def test_status_shows_the_status_line(box):
    status = box.sh("systemctl status bbsd --no-pager", check=False).stdout
    assert 'Status: "queue 0, labelled 0, failed 0, last -"' in status, status


def test_photos_dropped_into_the_watch_folder_get_sidecars(box):
    c, names = box, box.photos[:3]
    c.note("photos get sidecars through the sandbox")
    drop(c, names)
    docs = wait_labelled(c, names)
    assert {n: docs[n]["status"] for n in names} == {n: "labeled" for n in names}
    owners = c.sh(f"cd {EXPORT} && stat -c '%U:%G %a %n' *.json *.xmp").stdout.split("\n")
    assert all(line.startswith("bbsd:bbsd 664 ") for line in owners if line), owners  # UMask=0002, the group
    wait_until(lambda: "labelled 3, failed 0" in c.show("StatusText", log=False), 30, "the STATUS line to count them",
               interval=0.5)
    c.sh("systemctl status bbsd --no-pager", check=False)


def test_the_sandbox_denies_a_folder_outside_the_unit_with_a_clear_line(box):
    """A watch folder added to the config but not to the unit (no new `bbsd service install`): bbsd's user
    may write there, the sandbox (ProtectSystem=strict) may not; the daemon says so in one line."""
    c = box
    c.note("the sandbox denies a write outside ReadWritePaths")
    c.sh(f"mkdir -p {OUTSIDE} && chown bbsd:bbsd {OUTSIDE}")
    c.sh(f"sudo -u bbsd touch {OUTSIDE}/probe && rm {OUTSIDE}/probe")  # the user may; only the sandbox refuses
    write_config(c, config_text(c).replace(f'["{EXPORT}"]', f'["{EXPORT}", "{OUTSIDE}"]'))
    assert c.sh("systemctl restart bbsd", check=False).returncode != 0
    journal = c.sh("journalctl -u bbsd --no-pager -o cat -n 40").stdout
    assert f"bbsd: error: watch folder {OUTSIDE} is on a read-only filesystem" in journal, journal
    assert "bbsd service install --config" in journal and "grant the bbsd user" not in journal, journal
    assert "Traceback" not in journal and c.show("ExecMainStatus") == "2"
    write_config(c, config_text(c))
    c.sh("systemctl reset-failed bbsd; systemctl restart bbsd")
    assert c.show("ActiveState") == "active"


def test_reload_with_a_changed_catalog_relabels(box):
    """docs/stage/service.md: a changed catalog takes effect at once, the model is not reloaded, and the
    photos labelled with the old catalog are labelled again (one sidecar each, the new catalog's digest)."""
    c = box
    c.note("systemctl reload with a changed catalog")
    old = {n: d["prompt"]["catalog_sha256"] for n, d in sidecars(c).items()}
    worker = pids_of(c, "_worker")
    catalog = toyshow.catalog_toml()
    write_config(c, config_text(c, catalog[:catalog.rindex("[[props]]")]))  # one prop less
    c.sh("systemctl reload bbsd")
    wait_until(lambda: all(d["prompt"]["catalog_sha256"] not in old.values() for d in sidecars(c).values()),
               180, "the photos relabelled with the new catalog", interval=1)
    assert c.events("config.reloaded")[-1]["applied"] == ["catalog"]
    assert pids_of(c, "_worker") == worker  # the model was not reloaded
    now = sidecars(c)
    assert sorted(now) == sorted(old) and len({d["prompt"]["catalog_sha256"] for d in now.values()}) == 1


def test_a_stopped_heartbeat_makes_the_watchdog_kill_and_systemd_restart(box):
    """SIGSTOP the main process (the one that pings): systemd's watchdog aborts it and Restart=on-failure
    brings it back; photos dropped meanwhile are labelled once each. WatchdogSec is shortened to 10 s by a
    drop-in for the test (the shipped 120 s behaves the same, only slower)."""
    c = box
    c.note("watchdog: SIGSTOP of the main process")
    c.sh("mkdir -p /etc/systemd/system/bbsd.service.d && printf '[Service]\\nWatchdogSec=10\\n' "
         "> /etc/systemd/system/bbsd.service.d/test-watchdog.conf && systemctl daemon-reload && systemctl restart bbsd")
    main, restarts = c.show("MainPID"), int(c.show("NRestarts"))
    c.sh(f"kill -STOP {main}")
    names = box.photos[3:6]
    drop(c, names)
    wait_restarted(c, main)
    assert int(c.show("NRestarts")) == restarts + 1
    journal = c.sh("journalctl -u bbsd --no-pager -o cat -n 80").stdout
    assert "Watchdog timeout (limit 10s)!" in journal and "Failed with result 'watchdog'" in journal, journal
    docs = wait_labelled(c, names)
    assert [docs[n]["status"] for n in names] == ["labeled"] * 3
    assert len(photos(c)) == len(sidecars(c))  # one sidecar each, none lost, none doubled
    c.sh("rm /etc/systemd/system/bbsd.service.d/test-watchdog.conf && systemctl daemon-reload "
         "&& systemctl restart bbsd")


def test_kill_9_of_the_main_pid_restarts_and_the_journal_replays(box):
    """A photo in hand when the daemon dies (the worker is held with SIGSTOP so it stays in hand): systemd
    restarts bbsd, its in-hand journal names the photo (daemon.died_with_photo), and it is labelled once."""
    c = box
    c.note("kill -9 of the main PID with a photo in hand")
    main, restarts = c.show("MainPID"), int(c.show("NRestarts"))
    c.sh(f"kill -STOP {pids_of(c, '_worker')[0]}")
    name = box.photos[6]
    drop(c, [name])
    wait_until(lambda: name in c.sh("cat /var/lib/bbsd/*/in_hand.json", check=False, log=False).stdout, 60,
               "the photo in hand", interval=0.5)
    c.sh("cat /var/lib/bbsd/*/in_hand.json")
    c.sh(f"kill -9 {main}")
    wait_restarted(c, main)
    assert int(c.show("NRestarts")) == restarts + 1
    died = c.events("daemon.died_with_photo")
    assert died and died[-1]["path"] == f"{EXPORT}/{name}" and died[-1]["deaths_in_a_row"] == 1
    assert wait_labelled(c, [name])[name]["status"] == "labeled"
    assert len(photos(c)) == len(sidecars(c))


def test_the_journal_holds_the_structured_fields(box):
    """`journalctl -o json`: the unit's fields from systemd, bbsd's event and its fields in MESSAGE (JSON),
    its level as PRIORITY (the `<N>` prefix bbsd writes on the journal's stream), so `journalctl -p warning`
    shows bbsd's warnings (the kill -9 step's daemon.died_with_photo) and not its info lines."""
    c = box
    labelled = c.events("photo.labeled")
    assert labelled
    entry = labelled[-1]
    assert {"path", "total_ms", "characters", "props", "level", "timestamp"} <= set(entry)
    journal = entry["_journal"]
    assert journal["_SYSTEMD_UNIT"] == "bbsd.service" and journal["_UID"] == c.sh("id -u bbsd").stdout.strip()
    assert journal["PRIORITY"] == "6"
    warned = c.events("daemon.died_with_photo")
    assert warned and {e["_journal"]["PRIORITY"] for e in warned} == {"4"}
    shown = c.sh("journalctl -u bbsd -p warning --no-pager -o cat").stdout
    assert "daemon.died_with_photo" in shown and "photo.labeled" not in shown, shown


def test_stop_exits_0_within_the_stop_timeout(box):
    c = box
    c.note("systemctl stop")
    t0 = time.monotonic()
    c.sh("systemctl stop bbsd")
    took = time.monotonic() - t0
    assert took < 60, took  # TimeoutStopSec=60
    assert (c.show("Result"), c.show("ExecMainCode"), c.show("ExecMainStatus")) == ("success", "1", "0")
    assert c.events("daemon.stopped")


def test_the_gpu_drop_in_parses_and_applies(box):
    """[engine] gpu_layers = -1: `bbsd service install` writes gpu.conf; systemd verifies and applies it, and
    the CPU artefact still starts under it on a machine without a GPU."""
    c = box
    c.note("the GPU drop-in")
    write_config(c, config_text(c, extra="[engine]\ngpu_layers = -1\n\n"))
    c.sh(f"bbsd service install --config {CONFIG} && systemctl daemon-reload")
    c.sh("systemd-analyze verify bbsd.service")
    assert "# /etc/systemd/system/bbsd.service.d/gpu.conf" in c.sh("systemctl cat bbsd").stdout
    assert (c.show("PrivateDevices"), c.show("ProcSubset")) == ("no", "all")
    assert "/dev/nvidiactl rw" in c.show("DeviceAllow")
    c.sh("systemctl start bbsd")
    assert c.show("ActiveState") == "active"
    c.sh("systemctl stop bbsd")
