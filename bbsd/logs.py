"""Structured logging: `noun.verb` events with key/value fields.

Console rendering on a terminal, JSON lines otherwise (journald, files, pipes). Logs go
to a duplicate of stderr's file descriptor, so llama-cpp-python's temporary redirection
of fd 2 during model loading cannot swallow our events.

Fields carry what others wrote (file names, server error bodies, model output): on the console
every string is shown with its control characters escaped (`\x1b` as text, `text.printable`),
never raw, so an escape sequence in a file name cannot drive the terminal; JSON escapes them
itself (ASCII only, lone surrogates of an undecodable file name included). Rendering never
raises: a value that cannot be rendered is shown by its type, as a failing log line would
otherwise cost the photo or the worker.

Where stderr is the journal's stream (systemd's $JOURNAL_STREAM names its device and inode,
systemd.exec(5)), every line starts with its syslog priority, `<4>` for a warning (sd-daemon(3)):
journald reads it as PRIORITY=, so `journalctl -p warning` finds bbsd's warnings and errors. A
terminal, a file or a pipe gets no prefix, even where the variable was inherited from a unit.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

import structlog

from bbsd.text import printable

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_PRIORITIES = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}  # syslog's, as journald reads them


def _stream() -> TextIO:
    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8", errors="replace")
    except (AttributeError, OSError, ValueError):  # no real fd (e.g. captured in tests)
        return sys.stderr


class _Switch:
    """The file structlog prints to; while a progress bar is shown it prints through rich's console,
    so log lines appear above the bar instead of tearing it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.console, self._pending = stream, None, ""

    def write(self, text: str) -> int:
        if self.console is None:
            return self.stream.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        from rich.text import Text

        for line in lines:  # as Text: a log line is never markup (see console._bar)
            self.console.print(Text(line), soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


_switch: _Switch | None = None


def route_through(console) -> None:
    """Print log lines through a rich console (a progress bar is up), or directly again (None)."""
    if _switch is not None:
        _switch.console = console


# structlog's console renderer shows a string field holding one of these by repr(), which escapes
# every control character already (escaping it here too would show `\\x1b`); others it shows raw.
_SHOWN_BY_REPR = frozenset(" \t=\r\n\"'")


def _escaped(_logger, _name: str, event_dict: dict) -> dict:
    """Every string the console would show raw with its control characters escaped: the event name
    and a traceback (which keeps its line breaks) always, another field unless it is shown by repr()."""
    def shown(key: str, value):
        if not isinstance(value, str):
            return value  # shown by repr()
        if key in ("event", "exception", "stack"):
            return printable(value, keep="\n" if key != "event" else "")
        return value if _SHOWN_BY_REPR.intersection(value) else printable(value)

    return {k: shown(k, v) for k, v in event_dict.items()}


class _Safe:
    """A renderer that does not raise: on failure the fields are rendered again as plain text."""

    def __init__(self, renderer) -> None:
        self._renderer = renderer

    def __call__(self, logger, name: str, event_dict: dict) -> str:
        try:  # on a copy: the console renderer pops fields as it goes, the fallback needs them all
            return self._renderer(logger, name, dict(event_dict))
        except Exception:  # a value whose repr or serialisation fails: the event still shows
            return self._renderer(logger, name, {k: _plain(v) for k, v in event_dict.items()})


def _plain(value) -> str:
    try:
        return printable(value if isinstance(value, str) else repr(value))
    except Exception:
        return f"<{type(value).__name__} that cannot be shown>"


def to_journal(stream: TextIO, env: dict[str, str] | None = None) -> bool:
    """Whether `stream` is the journal's: its device and inode are $JOURNAL_STREAM's `dev:inode`.
    Compared, not just present: a command started from a unit's shell inherits the variable
    with its stderr sent elsewhere."""
    dev, _, inode = (os.environ if env is None else env).get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(inode))
    except (AttributeError, OSError, ValueError):  # not set, malformed, or no real fd
        return False


class _Prioritised:
    """Each rendered line prefixed with its level's syslog priority (`<3>` error … `<7>` debug);
    every line of a multi-line event (a console traceback), as journald splits at line breaks."""

    def __init__(self, renderer) -> None:
        self._renderer = renderer

    def __call__(self, logger, name: str, event_dict: dict) -> str:
        prefix = f"<{_PRIORITIES.get(event_dict.get('level', name), 6)}>"
        return "\n".join(prefix + line for line in self._renderer(logger, name, event_dict).split("\n"))


def configure(level: str = "info", fmt: str = "auto") -> None:
    global _switch
    stream = _switch = _Switch(_stream())
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer = _Safe(structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *([] if use_json else [_escaped]),
            _Prioritised(renderer) if to_journal(stream.stream) else renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
