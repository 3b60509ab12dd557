"""Shared by the benchmarks: the machine description and the results file they update."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from bbsd.study.performance import machine  # noqa: F401  (re-exported for the benchmarks)

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def update_section(name: str, body: str, script: str | None = None) -> None:
    """Replace the text between <!-- bench:NAME --> markers (appending the section if new)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    by = script or f"bench/{name}.py"
    block = f"<!-- bench:{name} -->\n_Measured {stamp} by `{by}`._\n\n{body}\n<!-- /bench:{name} -->"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
