"""Preflight checks: folders exist and are writable (`bbsd check` and `bbsd run`), the backend's own,
and the model labels a generated image with the real prompt and grammar (`bbsd check`)."""

from __future__ import annotations

import errno
import os
import tempfile
import time
from typing import NamedTuple

from bbsd.config import Settings
from bbsd.engine import registry
from bbsd.errors import FolderError, ModelError, PhotoError


def folders(settings: Settings) -> list[str]:
    """Raise `FolderError` for the first unusable watch folder; return one line per good one."""
    lines = []
    for folder in settings.watch.folders:
        if not folder.exists():
            raise FolderError(f"watch folder {folder} does not exist",
                              f"create it (mkdir -p {folder}) or fix [watch] folders in {settings.source}")
        if not folder.is_dir():
            raise FolderError(f"watch folder {folder} is not a folder", f"fix [watch] folders in {settings.source}")
        _probe_write(folder, settings)
        lines.append(f"folder {folder}: ok (readable and writable)")
    return lines


def _probe_write(folder, settings: Settings) -> None:
    """Create and delete a file: permission bits lie to root and say nothing of read-only mounts."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".bbsd-probe-"):
            pass
    except OSError as e:
        why = "is on a read-only filesystem" if e.errno == errno.EROFS else f"is not writable ({e.strerror})"
        raise FolderError(f"watch folder {folder} {why}", _write_hint(e.errno, settings)) from None
    if not os.access(folder, os.R_OK | os.X_OK):
        raise FolderError(f"watch folder {folder} is not readable", "grant the bbsd user read access")


def _write_hint(code: int | None, settings: Settings) -> str:
    if code == errno.EROFS and _under_systemd():  # ProtectSystem=strict: a folder not in the unit's ReadWritePaths
        return ("the unit lets bbsd write only to the watch folders it was installed with: run "
                f"`sudo bbsd service install --config {settings.source}` again, then `sudo systemctl daemon-reload` "
                "and `sudo systemctl restart bbsd` (a disk mounted read-only: remount it read-write)")
    return "sidecars are written beside the photos: grant the bbsd user write access"


def _under_systemd() -> bool:
    """Started by systemd as a service: it sets $INVOCATION_ID for every unit, $NOTIFY_SOCKET for ours."""
    return bool(os.environ.get("INVOCATION_ID") or os.environ.get("NOTIFY_SOCKET"))


def label_probe(labeler, prompt, settings: Settings) -> str:
    """Label one generated image as the service would; raise `ModelError` if that fails.

    A catalog whose grammar the engine cannot use, or a model pair that loads but cannot
    label, fails here, at `bbsd check`, instead of on every photo in the service.
    """
    from PIL import Image, ImageDraw

    from bbsd.engine import labels
    from bbsd.engine.labeler import PhotoRef

    side = min(512, settings.engine.image_max_side)
    image = Image.new("RGB", (side, side * 3 // 4), (90, 60, 40))
    ImageDraw.Draw(image).ellipse((side // 4, side // 8, side * 3 // 4, side * 5 // 8), fill=(220, 200, 170))
    t0 = time.perf_counter()
    try:
        reply = labeler.infer(image, prompt, attempt=0, cancelled=lambda: False, photo=PhotoRef("bbsd-check-probe"))
        parsed = labels.parse_reply(reply.text, settings.catalog, settings.questions)
    except PhotoError as e:
        raise ModelError(f"the model could not label a test image ({e.code}: {e.message})", e.hint) from None
    ms = (time.perf_counter() - t0) * 1000
    answered = f" and answered {len(parsed.answers)} questions" if parsed.answers else ""
    return (f"test label: ok ({ms:.0f} ms; the reply named {_count(len(parsed.characters), 'character')} and "
            f"{_count(len(parsed.props), 'prop')} from the catalog{answered})")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def backend(settings: Settings) -> list[str]:
    """What the configured backend checks before its model is opened (raises its own `BbsdError`),
    whether `max_output_tokens` holds the longest reply, and whether the model is bbsd's own demo or
    test model (`weights`)."""
    lines = registry.get(settings.engine.backend).check(settings)
    if note := weights(settings):
        lines.append(f"{'warning: ' if note.level == 'warning' else 'model: '}{note.message} — {note.hint}")
    return lines + _output_cap(settings)


class WeightsNote(NamedTuple):
    level: str  # the log level `bbsd run` says it at: "warning" (random weights) or "info" (the toy model)
    weights: str
    message: str
    hint: str


# What bbsd says about a model it made itself (`gguf_pair.WEIGHTS_KEY`): (level, message, hint).
_REAL_MODEL = "a real show needs a real model: `bbsd models list`, then docs/stage/install.md, 'Use a real model'"
WEIGHTS = {
    "random": ("warning", "the model has random weights (bbsd's test model): its labels and confidence figures "
                          "mean nothing", _REAL_MODEL),
    "toy": ("info", "bbsd's toy model, trained on synthetic puppets (the toy show): it knows only that cast",
            _REAL_MODEL),
}


def weights(settings: Settings) -> WeightsNote | None:
    """What to say when the model is one bbsd made itself (its random test model, its toy model); None for
    any other. Read from the model files' headers (`Backend.weights`), once, at the start of a command."""
    kind = registry.get(settings.engine.backend).weights(settings)
    return WeightsNote(WEIGHTS[kind][0], kind, *WEIGHTS[kind][1:]) if kind in WEIGHTS else None


def _output_cap(settings: Settings) -> list[str]:
    """A warning when `[engine] max_output_tokens` is below the longest reply the grammar allows for this
    catalog and these questions (at about a token a character): such a reply is closed at the cap."""
    from bbsd.engine import jump, prompt

    longest = jump.longest(prompt.reply_schema(settings.catalog, settings.questions))
    cap = settings.engine.max_output_tokens
    if cap >= longest:
        return []
    return [f"warning: [engine] max_output_tokens = {cap} is below the longest reply ({longest} characters) the "
            f"grammar allows for this catalog and questions: a longer reply is closed at the cap (labels.cut names "
            f"what was cut; a remote server's is lost); raise it to {longest} to never cut one"]
