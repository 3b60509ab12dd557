"""llama-server on loopback running the tiny test model, for the `openai` backend's end-to-end tests
(tests/engine/test_openai.py) and its benchmark (bench/openai.py): one server with parallel slots that can
be killed and started again on the same port. Shared here so the benchmark imports no test module.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """One llama-server on 127.0.0.1 with `slots` parallel slots; `kill` and `start` again on the same
    port. `start` waits until it is healthy, at most `start_timeout_s`."""

    def __init__(self, binary: Path, models: tuple[Path, Path], log: Path, slots: int = 2,
                 start_timeout_s: float = 120) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._argv = [str(binary), "-m", str(models[0]), "--mmproj", str(models[1]), "--host", "127.0.0.1",
                      "--port", str(self.port), "-np", str(slots), "-c", str(2048 * slots), "-t", "1"]
        self._log = log
        self._start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self._argv, stdout=self._log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self._start_timeout_s
        while not self.healthy():
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama-server on {self.port} not healthy after {self._start_timeout_s:g} s")
            time.sleep(0.2)

    def healthy(self) -> bool:
        assert self.proc.poll() is None, self._log.read_text()[-2000:]
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return json.loads(r.read()).get("status") == "ok"
        except OSError:
            return False

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
