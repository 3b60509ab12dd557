"""What people read on a terminal: one line per photo, the status summary, a progress bar.

Invariant: on a terminal a progress bar with ETA; in a pipe or the journal only the plain
lines, nothing that redraws. Every line shown is `text.printable`: a file name, a server's error
body or a model's words reach the terminal with their control characters escaped (`\x1b` as
text), never raw.
"""

from __future__ import annotations

import sys

import typer

from bbsd.text import printable


def _bar(console, description: str, total: int, route_logs: bool = True):
    """A started rich progress bar on `console`; log lines print through the same console above it
    (when `route_logs`: they share its terminal).

    Everything shown while a bar is up goes through its one console as `Text`, never as markup
    and never with `markup=False`: rich renders the bar with the options of the print that
    triggered the refresh, so a `markup=False` print showed the bar's template literally
    (`[progress.description]labelling ━━━…`).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    from bbsd import logs

    bar = RichProgress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                       TimeRemainingColumn(), console=console, transient=True)
    bar.add_task(description, total=total)
    bar.start()
    if route_logs:
        logs.route_through(console)
    return bar


def _stop(bar) -> None:
    from bbsd import logs

    logs.route_through(None)
    bar.stop()


class Progress:
    """`bbsd label`: a progress bar with ETA on a terminal; plain lines (nothing else) in a pipe or the journal."""

    def __init__(self, total: int) -> None:
        self._total = total
        self._bar = None

    def __enter__(self):
        if sys.stdout.isatty() and self._total > 1:
            from rich.console import Console

            # Log lines (stderr) go through the bar's console only when they share its terminal.
            self._bar = _bar(Console(file=sys.stdout), "labelling", self._total, route_logs=sys.stderr.isatty())
        return self._advance

    def _advance(self, line: str) -> None:
        line = printable(line)
        if self._bar is None:
            typer.echo(line)
            return
        from rich.text import Text

        self._bar.console.print(Text(line), soft_wrap=True)
        self._bar.advance(self._bar.task_ids[0])

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            _stop(self._bar)


def outcome_line(outcome) -> str:
    from bbsd.sidecars import record as sidecar

    doc = sidecar.read(outcome.path) or {}
    name = outcome.path.name
    if outcome.status.value in ("labeled", "skipped") and doc.get("labels"):
        lab = doc["labels"]
        answers = "".join(f"  {k}={v}" for k, v in (lab.get("answers") or {}).items())
        return (f"{outcome.status.value:8} {name}  characters={','.join(lab['characters']) or '-'}"
                f"  props={','.join(lab['props']) or '-'}{answers}  ({doc['timing_ms']['total']:.0f} ms)")
    err = doc.get("error") or {}
    code = err.get("code") or outcome.detail
    message = err.get("message") or outcome.message
    line = f"{outcome.status.value:8} {name}  {code}: {message}".rstrip(": ")
    return f"{line} — {err['hint']}" if err.get("hint") else line


def status_text(d: dict, running: bool) -> str:
    from datetime import UTC, datetime

    # The file is rewritten only on change (plus a heartbeat), so uptime is computed here.
    seconds = int((datetime.now(UTC) - datetime.fromisoformat(d["started_at"])).total_seconds())
    up = f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    head = f"running (pid {d['pid']}, up {up})" if running else f"not running (last status {d['updated_at']})"

    def ms(v):
        return f"{v:.0f} ms" if v is not None else "-"

    busy = f" ({d['busy']} photos in hand)" if d.get("busy", 0) > 1 else ""
    return "\n".join(printable(line) for line in [
        f"bbsd: {head}, model {d['model']}",
        f"queue: {d['queue_depth']} waiting, in flight: {d['in_flight'] or '-'}{busy}",
        f"photos since start: {d['labeled']} labelled, {failed_text(d['failed'], d.get('failures'))}",
        f"latency: p50 {ms(d['p50_ms'])}, p95 {ms(d['p95_ms'])}, last {ms(d['last_ms'])}",
        f"memory: RSS {d['rss_mb'] or '-'} MB, VRAM {d['vram_mb'] or '-'} MB",
        *[endpoint_line(e) for e in d.get("endpoints", [])],
    ])


def codes_text(failures: dict[str, int] | None) -> str:
    """`truncated 2, not_an_image 1`: failed photos per error code (`metrics.by_code`); "" when none."""
    return ", ".join(f"{code} {n}" for code, n in (failures or {}).items())


def failed_text(failed: int, failures: dict[str, int] | None) -> str:
    """`3 failed (truncated 2, not_an_image 1)`, or `0 failed`."""
    codes = codes_text(failures)
    return f"{failed} failed ({codes})" if codes else f"{failed} failed"


def endpoint_line(e: dict) -> str:
    """One inference-server endpoint's health, as a remote backend reports it (status file, report)."""
    p50 = f"{e['p50_ms']:.0f} ms" if e.get("p50_ms") is not None else "-"
    why = f", last error: {e['last_error']}" if e.get("state") != "up" and e.get("last_error") else ""
    return printable(f"endpoint {e.get('url')} ({e.get('model')}): {e.get('state')}, {e.get('in_flight', 0)}/"
            f"{e.get('limit', '-')} in flight, {e.get('done', 0)} done, {e.get('failed', 0)} failed, p50 {p50}{why}")


class BacklogProgress:
    """`bbsd run` by hand: a bar with ETA while the start-up backlog drains. Nothing in a pipe or the journal."""

    def __init__(self) -> None:
        self._bar = None

    def start(self, total: int) -> None:
        if total < 2 or not sys.stderr.isatty():
            return
        from rich.console import Console

        self._bar = _bar(Console(file=sys.stderr), "start-up backlog", total)

    def advance(self) -> None:
        if self._bar is None:
            return
        self._bar.advance(self._bar.task_ids[0])
        if self._bar.tasks[0].finished:
            self.stop()

    def stop(self) -> None:
        if self._bar is not None:
            _stop(self._bar)
            self._bar = None
