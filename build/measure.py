"""Measured by build/build.sh: the artefact's size and its cold start (process start to READY).

The artefact is unpacked into a fresh folder and run with a clean environment; READY is read
from a real notify socket, as systemd would. Writes its table into docs/benchmarks.md.
"""

from __future__ import annotations

import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bbsd.models import tiny as tiny_model  # noqa: E402
from bench.results import machine, update_section  # noqa: E402

CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def unpacked_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def cold_start(exe: Path, config: Path, home: Path) -> float:
    sock_path = home / "notify.sock"
    sock_path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    env = {**CLEAN_ENV, "HOME": str(home), "NOTIFY_SOCKET": str(sock_path)}
    log = (home / "run.log").open("w")
    t0 = time.monotonic()
    proc = subprocess.Popen([str(exe), "run", "--config", str(config)], env=env, stdout=log, stderr=log)
    try:
        while time.monotonic() - t0 < 120:
            try:
                if b"READY=1" in sock.recv(4096):
                    return time.monotonic() - t0
            except TimeoutError:
                if proc.poll() is not None:
                    tail = (home / "run.log").read_text()[-3000:]
                    raise SystemExit(f"the artefact exited before READY:\n{tail}") from None
        raise SystemExit("no READY within 120 s")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        sock.close()
        log.close()


def _short(lib: str) -> str:
    return lib.removeprefix("libggml-cpu-").removesuffix(".so")


def main(tarball: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="bbsd-measure-") as tmp:
        tmp = Path(tmp)
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="tar")
        exe = tmp / "bbsd" / "bbsd"
        text, mmproj = tiny_model.write_pair(tmp / "models")
        (tmp / "inbox").mkdir()
        config = tmp / "config.toml"
        config.write_text(f'[watch]\nfolders = ["{tmp / "inbox"}"]\n[model]\npath = "{text}"\nmmproj = "{mmproj}"\n'
                          f'[service]\nstate_dir = "{tmp / "state"}"\n')
        cold_start(exe, config, tmp)  # the first start warms the page cache, like any second boot
        starts = [cold_start(exe, config, tmp) for _ in range(3)]
        size_unpacked = unpacked_size(tmp / "bbsd")
    variants = sorted(p.name for p in (ROOT / "build" / "out" / "dist" / "bbsd").rglob("libggml-cpu-*.so"))
    rows = [
        "| artefact | figure |", "|---|---|",
        f"| `{tarball.name}` | {tarball.stat().st_size / 2**20:.0f} MB |",
        f"| unpacked (`bbsd/`, onedir) | {size_unpacked / 2**20:.0f} MB |",
        f"| CPU variants bundled | {len(variants)} ({', '.join(_short(v) for v in variants)}) |",
        f"| cold start: process start to READY=1 (tiny model, median of 3) | {statistics.median(starts):.2f} s |",
        "",
        f"Machine: {machine()}. The model load itself is milliseconds for the tiny model; a real 3 B "
        "Q4_K_M model adds its load time (mostly reading the file).",
    ]
    update_section("build", "\n".join(rows), script="build/measure.py")
    print("\n".join(rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
