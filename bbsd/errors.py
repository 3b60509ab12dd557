"""Our exceptions: each carries a hint that tells the user the fix.

Lower layers raise these; only `cli.py` turns them into one line and an exit code.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # the command ran, some photo could not be labelled
    USAGE = 2  # configuration, model or folder problem: nothing was done


class BbsdError(Exception):
    """Base of every error a user may see; `hint` says what to do about it."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class ConfigError(BbsdError):
    """The configuration file or an environment override is wrong."""


class ModelError(BbsdError):
    """The model files are missing, unreadable, or do not load together."""


class FolderError(BbsdError):
    """A watch folder is missing or not writable."""


class PhotoError(BbsdError):
    """One photo cannot be labelled; `code` goes into its error sidecar. `message` is bbsd's own
    words; `detail`, where there is one, a library's (Pillow's, LibRaw's) for whoever digs deeper."""

    exit_code = ExitCode.FAILED

    def __init__(self, code: str, message: str, hint: str = "", detail: str = "") -> None:
        super().__init__(message, hint)
        self.code = code
        self.detail = detail


class IncompletePhotoError(PhotoError):
    """The file looks like a photo still being written: wait before calling it an error."""


class SidecarWriteError(BbsdError):
    """A sidecar could not be written (disk full, read-only folder); the photo stays pending."""

    exit_code = ExitCode.FAILED


class AbandonedError(BbsdError):
    """Labelling was stopped because the daemon is shutting down; nothing was written."""


class ConvertError(ModelError):
    """A checkpoint cannot be converted (not InternVL, a file missing, no room); nothing was written."""
