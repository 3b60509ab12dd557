"""The unit's helper commands run on any Debian: found live (make systemd-test), kept here without systemd."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys

from bbsd.service import unit
from tests.conftest import wait_until


def _directive(text: str, key: str) -> str:
    return next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}="))


def test_reload_signals_the_main_pid_with_only_the_shell_every_debian_has(tmp_path):
    """`/bin/kill` is procps's: on a minimal Debian `systemctl reload bbsd` failed with 203/EXEC.
    The reload runs /bin/sh (essential), unescaped as systemd does ($$ → $), with MAINPID in its environment."""
    argv = [a.replace("$$", "$") for a in shlex.split(_directive(unit.reference(), "ExecReload"))]
    assert argv[0] == "/bin/sh"
    flag = tmp_path / "hup"
    code = ("import pathlib, signal, time\n"
            f"signal.signal(signal.SIGHUP, lambda *_: pathlib.Path({str(flag)!r}).touch())\n"
            "print('ready', flush=True)\nwhile True: time.sleep(0.05)")
    main = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert main.stdout.readline().strip() == "ready"
        r = subprocess.run(argv, env={"MAINPID": str(main.pid), "PATH": "/nonexistent"}, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        wait_until(flag.exists, 10, "SIGHUP at the main PID")
    finally:
        main.send_signal(signal.SIGKILL)
        main.wait()
