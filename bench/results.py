"""Shared by the benchmarks: the machine description and the results file they update."""

from __future__ import annotations

import os
import platform
import re
from datetime import UTC, datetime
from pathlib import Path

import psutil

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> str:
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    ram = psutil.virtual_memory().total / 2**30
    return f"{cpu}, {os.cpu_count()} CPUs, {ram:.0f} GiB RAM, {platform.system()} {platform.release()}"


def update_section(name: str, body: str, script: str | None = None) -> None:
    """Replace the text between <!-- bench:NAME --> markers (appending the section if new)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    by = script or f"bench/{name}.py"
    block = f"<!-- bench:{name} -->\n_Measured {stamp} by `{by}`._\n\n{body}\n<!-- /bench:{name} -->"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
