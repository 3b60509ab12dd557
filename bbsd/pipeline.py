"""One photo, start to finish: fingerprint → (a RAW) pair → decode → label → validate → render → atomic write → log.

Invariants: the photo file is only read, never written; a sidecar appears whole or not at
all; every photo ends in exactly one `photo.labeled`, `photo.failed`, `photo.skipped` or
`sidecar.write_failed` event, or in `Status.INCOMPLETE` (a debug `photo.not_ready`: the caller that
waits logs the wait, once when it starts and once when it ends), and no exception raised while handling
it escapes (it becomes an `internal_error` record); the photo's bytes are hashed here but
parsed only in the decoder process (`Decoder`), hashed once an attempt (its sha256 goes in its
`PhotoRef`, with its name and order, to the engine). The same code serves the daemon and `bbsd label`.

Paths (`roots`, set by the daemon): the photo is hashed from a descriptor reached from its watch
folder without following any link (`safefs.open_beneath`), and decoded only if the decoder finds
that same file; a photo that is not a regular file, or lies through a symlinked folder, is
ignored; an unreadable sidecar is recorded before anything is decoded; just before a write the
photo must still be there, the same file, under real folders (`photo.gone` otherwise, no sidecar).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import structlog

from bbsd import atomic, formats, metrics, safefs
from bbsd.arrive.retry import Status
from bbsd.config import Settings
from bbsd.engine import confidence, labels
from bbsd.engine import prompt as prompt_mod
from bbsd.engine.labeler import EngineCode, Inference, Labeler, PhotoRef
from bbsd.engine.prompt import Prompt
from bbsd.errors import AbandonedError, IncompletePhotoError, ModelError, PhotoError, SidecarWriteError
from bbsd.photo.decoder import Decoder, DecoderError
from bbsd.sidecars import editors, pairing
from bbsd.sidecars import record as sidecar

log = structlog.get_logger("bbsd.pipeline")
CHANGED_WHILE_HASHED = "the file changed while it was read"


class Code(StrEnum):
    """The codes of an outcome's `detail` (an error sidecar's `code`) that bbsd gives or acts on."""

    CHANGED = "changed"  # not the file that was hashed (rewritten, replaced): incomplete, never an error
    PAIR = "pair"  # a RAW waits for its JPEG sibling's labels
    IGNORED = "ignored"
    UNREADABLE = "unreadable"
    WRITE_FAILED = "write_failed"
    INTERNAL_ERROR = "internal_error"  # a bug of bbsd's, on this photo
    DAEMON_CRASH = "daemon_crash"  # the daemon died twice with this photo in hand
    # A reference photo that changed or cannot be read stops every photo, through no fault of theirs:
    # they stay pending (retried with backoff) instead of getting error sidecars that keep them unlabelled.
    REFERENCE_CHANGED = "reference_changed"
    REFERENCE_UNREADABLE = "reference_unreadable"


@dataclass(frozen=True)
class Outcome:
    path: Path
    status: Status
    detail: str = ""
    sidecar: Path | None = None
    total_ms: float | None = None
    memory: dict[str, float | None] | None = None
    message: str = ""  # for people, when there is no sidecar to read it from


class Pipeline:
    """Safe to call from `labeler.concurrency` threads at once: each thread decodes with its own `Decoder`."""

    def __init__(self, labeler: Labeler, settings: Settings, prompt: Prompt, decoder: Decoder | None = None) -> None:
        self.labeler = labeler
        self._settings = settings
        self._decoders: list[Decoder] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        if decoder is not None:
            self._adopt(decoder)
        self.prompt = prompt
        self._max_side = settings.engine.image_max_side
        self._pair_seconds = settings.watch.pair_seconds
        self._catalog = settings.catalog
        self._questions = settings.questions
        self._xmp = settings.xmp
        # The watch folders a photo must lie beneath (the daemon's); None for files a person named (`bbsd label`).
        self.roots: tuple[Path, ...] | None = None

    def apply(self, settings: Settings) -> None:
        """Take a new catalog, questions, reference strategy and XMP settings (SIGHUP) without touching the model."""
        self.prompt = prompt_mod.for_settings(settings)
        self._catalog, self._questions, self._xmp = settings.catalog, settings.questions, settings.xmp

    @property
    def decoder(self) -> Decoder:
        """This thread's decoder process (started on first use)."""
        mine = getattr(self._local, "decoder", None)
        return mine if mine is not None else self._adopt(Decoder(self._settings))

    def _adopt(self, decoder: Decoder) -> Decoder:
        self._local.decoder = decoder
        with self._lock:
            self._decoders.append(decoder)
        return decoder

    def close(self) -> None:
        with self._lock:
            decoders, self._decoders = self._decoders, []
        for d in decoders:
            d.close()
        self.labeler.close()

    def fingerprint(self, path: Path) -> tuple[str, safefs.Ident]:
        """The photo's sha256 and identity, read from a descriptor opened without following links
        (from its watch folder down when `roots` is set). Raises `OSError`, `safefs.NotRegularError`
        (`OutsideError` through a symlinked folder), `safefs.ChangedError`."""
        fd = safefs.open_beneath(self.roots, path) if self.roots else safefs.open_regular(path)
        try:
            return safefs.sha256_fd(fd)
        finally:
            os.close(fd)

    def is_current(self, photo: Path, doc: dict | None = None, sha256: str | None = None) -> bool:
        """Whether `photo`'s sidecar is current for this model and prompt (`sidecar.is_current`)."""
        doc = sidecar.read(photo) if doc is None else doc
        return sidecar.is_current(doc, self.labeler.info, self.prompt, sha256=sha256, photo=photo)

    def process(self, path: Path, *, queue_wait_ms: float = 0.0, allow_incomplete: bool = False,
                force: bool = False, order: float | None = None,
                cancelled: Callable[[], bool] = lambda: False) -> Outcome:
        """Handle one photo; whatever goes wrong ends in a record (error sidecar or event), never escapes.
        `order`: how new the photo is for the engine's batches (the queue's order; default its mtime).

        Only shutdown (`AbandonedError`) and an engine or decoder that cannot start at all pass.
        """
        try:
            return self._process(path, queue_wait_ms, allow_incomplete, force, order, cancelled)
        except (AbandonedError, ModelError, DecoderError):
            raise
        except Exception as e:  # a bug must cost this photo, never the service
            return self.quarantine(path, Code.INTERNAL_ERROR, f"bbsd failed on this photo ({_where(e)})",
                                   "this is a bug: report it with this sidecar; the photo is not retried "
                                   "until it changes")

    def quarantine(self, path: Path, code: str, message: str, hint: str) -> Outcome:
        """Record that `path` cannot be labelled: an error sidecar if at all possible, else an event."""
        try:
            sha, ident = self.fingerprint(path)
        except OSError:
            sha, ident = None, None
        try:
            return self._fail(path, sha, PhotoError(code, message, hint), {}, ident=ident)
        except Exception as e:  # even the error sidecar failed: the log is the record
            log.error("photo.failed", path=str(path), code=code, message=message, hint=hint,
                      sidecar_error=_where(e))
            return Outcome(path, Status.FAILED, code, message=f"{message} — {hint}")

    def _process(self, path: Path, queue_wait_ms: float, allow_incomplete: bool, force: bool,
                 order: float | None, cancelled: Callable[[], bool]) -> Outcome:
        t0 = time.perf_counter()
        opened = self._open_photo(path, order)
        if isinstance(opened, Outcome):
            return opened
        photo, ident, doc = opened
        sha = photo.sha256
        if not force and sidecar.is_current(doc, self.labeler.info, self.prompt, sha256=sha):
            log.debug("photo.skipped", path=str(path), reason="sidecar up to date")
            return Outcome(path, Status.SKIPPED, sidecar=sidecar.path_for(path))
        timing = {"queue_wait": queue_wait_ms}
        if self._pair_seconds and formats.is_raw(path):
            paired = self._paired(path, sha, ident, timing, may_wait=allow_incomplete)
            if paired is not None:
                return paired
        try:
            decoded = self.decoder.decode(path, self._max_side, cancelled, expect=ident)
            timing["decode"] = (time.perf_counter() - t0) * 1000
            labels_, inference = self._label(decoded.image, photo, cancelled)
        except IncompletePhotoError as e:
            if e.code == Code.CHANGED and (why := safefs.moved_away(self.roots, path, ident)) is not None:
                log.info("photo.gone", path=str(path), reason=why, labelled=False)
                return Outcome(path, Status.GONE, why)
            # "changed": not the file that was hashed (rewritten, or a link swapped in): never an error of its own
            if allow_incomplete or e.code == Code.CHANGED:
                log.debug("photo.not_ready", path=str(path), code=e.code, message=e.message)
                return Outcome(path, Status.INCOMPLETE, e.code, message=e.message)
            return self._fail(path, sha, e, timing, ident=ident)
        except PhotoError as e:
            return self._failed(path, sha, e, timing, t0, ident)
        timing["inference"] = inference.encode_ms + inference.generate_ms
        timing["total"] = (time.perf_counter() - t0) * 1000
        record = sidecar.Record(
            photo=path, sha256=sha, width=decoded.width, height=decoded.height, labels=labels_,
            timing_ms=timing, tokens=_tokens(inference),
            memory_mb=self._memory(inference), served=inference.served, confidence=self.confidence(inference),
            model=inference.model,
        )
        return self._write(record, "photo.labeled", Status.LABELED, ident)

    def _open_photo(self, path: Path, order: float | None) -> tuple[PhotoRef, safefs.Ident, dict | None] | Outcome:
        """Who the photo is (hashed here, once) and its file's identity and sidecar, or the outcome that
        ends it here. Its `order` (for the engine's batches: newest first) is the queue's, else its mtime."""
        if (reason := safefs.refusal(path)) is not None:
            log.warning("photo.ignored", path=str(path), reason=reason)
            return Outcome(path, Status.IGNORED, Code.IGNORED, message=reason)
        try:
            sha, ident = self.fingerprint(path)
        except FileNotFoundError:
            log.info("photo.gone", path=str(path))
            return Outcome(path, Status.GONE)
        except safefs.NotRegularError as e:  # a link on the way, or swapped in since the lstat above
            log.warning("photo.ignored", path=str(path), reason=e.strerror)
            return Outcome(path, Status.IGNORED, Code.IGNORED, message=e.strerror)
        except safefs.ChangedError:
            log.debug("photo.not_ready", path=str(path), code=Code.CHANGED, message=CHANGED_WHILE_HASHED)
            return Outcome(path, Status.INCOMPLETE, Code.CHANGED, message=CHANGED_WHILE_HASHED)
        except OSError as e:
            return self._fail(path, None, PhotoError(Code.UNREADABLE, f"cannot read the file ({e.strerror})",
                                                     "check its permissions"), {})
        try:  # before any work: an unreadable sidecar is never overwritten, so labelling would be wasted
            doc = sidecar.read_strict(path)
        except (OSError, ValueError) as e:
            return _kept_unreadable(path, e)
        return PhotoRef(path.name, ident[3] / 1e9 if order is None else order, sha), ident, doc

    def _failed(self, path: Path, sha: str, e: PhotoError, timing: dict, started: float,
                ident: safefs.Ident) -> Outcome:
        if e.code in (Code.REFERENCE_CHANGED, Code.REFERENCE_UNREADABLE):  # not the photo's fault: it waits
            log.warning("references.unusable", path=str(path), code=e.code, message=e.message, hint=e.hint)
            return Outcome(path, Status.PENDING, e.code, message=f"{e.message} — {e.hint}")
        return self._fail(path, sha, e, timing, started=started, ident=ident)

    def label(self, path: Path, cancelled: Callable[[], bool] = lambda: False) -> tuple[labels.Labels, Inference]:
        """Decode and label one photo the way `process` does, but write nothing.

        `bbsd eval` measures the production path on a truth set without a sidecar beside the
        user's photos. Raises `PhotoError` (including `InvalidReplyError`) like `process` records.
        """
        decoded = self.decoder.decode(path, self._max_side, cancelled)
        return self._label(decoded.image, PhotoRef(path.name), cancelled)

    def _paired(self, raw: Path, sha: str, ident: safefs.Ident, timing: dict, may_wait: bool) -> Outcome | None:
        """A RAW's pair step (`pairing`): its JPEG sibling's labels copied, a wait for them, or None
        (label it from its own pixels)."""
        found = pairing.consult(raw, ident[3] / 1e9, time.time(), self._pair_seconds, may_wait=may_wait,
                                model=self.labeler.info, prompt=self.prompt,
                                sha256_of=lambda mate: self.fingerprint(mate)[0])
        if found is pairing.Decision.WAIT:
            return Outcome(raw, Status.WAITING, Code.PAIR)
        if found is pairing.Decision.OWN:
            return None
        probe = self.decoder.probe(raw)
        size = (probe.width, probe.height) if probe else (None, None)
        return self._write(pairing.record_for(raw, sha, found, size, timing, self._memory()),
                           "photo.labeled", Status.LABELED, ident)

    def _label(self, image, photo: PhotoRef, cancelled) -> tuple[labels.Labels, Inference]:
        """Infer and validate. An engine crash is retried once alone (the photo may be the one that
        crashed the engine, or only shared its batch), sampled as before: a neighbour gets the labels
        it would have got anyway, and only a crash alone is the photo's own. An invalid reply
        (grammars can be bypassed) is retried once, sampled varied (`attempt` 1). At most three tries:
        an invalid reply, then a crash beside others, then alone."""
        attempt, alone = 0, False
        while True:
            try:
                inference = self.labeler.infer(image, self.prompt, attempt=attempt, alone=alone, cancelled=cancelled,
                                               photo=photo)
            except PhotoError as e:
                if e.code != EngineCode.CRASH or alone:
                    raise
                log.warning("photo.retry", reason=e.code, message=e.message)
                alone = True
                continue
            try:
                return labels.parse_reply(inference.text, self._catalog, self._questions), inference
            except labels.InvalidReplyError as e:
                log.warning("reply.invalid", attempt=attempt, problem=e.message, reply=inference.text[:200])
                if attempt == 1:
                    raise
                attempt = 1

    def confidence(self, inference: Inference) -> dict | None:
        """Each name's confidence from the backend's token probabilities, and whether to ask a person."""
        if not inference.steps:
            return None
        names = {"characters": self._catalog.character_names(), "props": self._catalog.prop_names()}
        scores = confidence.score(inference.text, list(inference.steps), names)
        threshold = self._xmp.review_below
        return {**scores, "review_below": threshold, "needs_review": confidence.needs_review(scores, threshold)}

    def _memory(self, inference: Inference | None = None) -> dict[str, float | None]:
        """The engine's memory: the worker's figures when it runs apart, else this process's."""
        if inference is not None and inference.rss_mb is not None:
            return {"rss": inference.rss_mb, "vram": inference.vram_mb}
        return {"rss": metrics.rss_mb(), "vram": metrics.vram_mb(self.labeler.gpu)}

    def _fail(self, path: Path, sha: str | None, error: PhotoError, timing: dict[str, float],
              started: float | None = None, ident: safefs.Ident | None = None) -> Outcome:
        if started is not None and "decode" in timing:  # the engine ran (invalid replies, a crash): its time counts
            timing = {**timing, "inference": (time.perf_counter() - started) * 1000 - timing["decode"]}
        timing = {"decode": 0.0, "inference": 0.0, **timing}
        timing.setdefault("total", sum(v for k, v in timing.items() if k != "queue_wait"))
        # the message is bbsd's words; a library's own (Pillow's "image file is truncated") is only a detail
        error_doc = {"code": error.code, "message": error.message, "hint": error.hint,
                     **({"detail": error.detail} if error.detail else {})}
        if sha is None:
            log.error("photo.failed", path=str(path), **error_doc)
            return Outcome(path, Status.FAILED, error.code, message=f"{error.message} — {error.hint}")
        record = sidecar.Record(
            photo=path, sha256=sha, width=None, height=None, labels=None, timing_ms=timing,
            tokens={"prompt": 0, "output": 0}, memory_mb=self._memory(), error=error_doc,
        )
        return self._write(record, "photo.failed", Status.FAILED, ident)

    def _write(self, record: sidecar.Record, event: str, status: Status, ident: safefs.Ident | None = None) -> Outcome:
        # deleted, replaced or moved out while it was labelled: nothing is written for it
        if (why := safefs.moved_away(self.roots, record.photo, ident)) is not None:
            log.info("photo.gone", path=str(record.photo), reason=why, labelled=status is Status.LABELED)
            return Outcome(record.photo, Status.GONE, why)
        target = sidecar.path_for(record.photo)
        try:
            old = sidecar.read_strict(record.photo)
        except (OSError, ValueError) as e:
            return _kept_unreadable(record.photo, e)
        model = record.model or self.labeler.info  # the worker that answered, not one restarted since
        doc = sidecar.render(record, model, self.prompt)
        if status is Status.FAILED and sidecar.human_edited(old):
            log.warning("sidecar.kept", path=str(record.photo), reason="labels edited by a person",
                        code=record.error["code"])
            return Outcome(record.photo, Status.KEPT, record.error["code"])
        try:
            if status is Status.LABELED:  # XMP first: the JSON is the "done" mark of a photo
                review = bool(record.confidence and record.confidence["needs_review"])
                editors.write(record.photo, record.sha256, record.labels, model, self.prompt,
                              self._xmp, self._questions, review, roots=self.roots)
            atomic.write_bytes(target, sidecar.to_bytes(sidecar.keep_human_labels(doc, old)), roots=self.roots)
        except SidecarWriteError as e:
            log.error("sidecar.write_failed", path=str(record.photo), sidecar=str(target),
                      message=e.message, hint=e.hint)
            return Outcome(record.photo, Status.PENDING, Code.WRITE_FAILED, message=f"{e.message} — {e.hint}")
        fields = _event_fields(record)
        if status is Status.LABELED:
            log.info(event, **fields)
        else:
            # the hint: what a stage tech reading the journal should do
            log.warning(event, **fields, **{"hint": None, **record.error})
        return Outcome(record.photo, status, record.error["code"] if record.error else "", target,
                       total_ms=record.timing_ms.get("total"), memory=record.memory_mb)


def _tokens(inference: Inference) -> dict[str, int]:
    """Prompt positions, reply tokens, how many prompt tokens this photo evaluated (not cached) and
    how many reply tokens were sampled (the rest the schema fixed)."""
    tokens = {"prompt": inference.prompt_tokens, "output": inference.output_tokens}
    if inference.evaluated_tokens is not None:
        tokens["evaluated"] = inference.evaluated_tokens
    if inference.sampled_tokens is not None:
        tokens["sampled"] = inference.sampled_tokens
    return tokens


def _where(e: BaseException) -> str:
    """An exception as one line with its innermost frame: enough to report, no traceback in the log."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    at = f" at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}" if tb else ""
    return f"{type(e).__name__}: {str(e)[:200]}{at}"


def _kept_unreadable(photo: Path, error: Exception | str) -> Outcome:
    """A sidecar that cannot be read (a person's half-edit, a FIFO, a link, a folder) is left as it is."""
    log.error("sidecar.unreadable", path=str(photo), sidecar=str(sidecar.path_for(photo)), reason=str(error),
              hint="bbsd does not overwrite a sidecar it cannot read; fix or remove it")
    return Outcome(photo, Status.KEPT, "unreadable sidecar")


def _event_fields(record: sidecar.Record) -> dict[str, object]:
    t = record.timing_ms
    return {
        "path": str(record.photo),
        "queue_wait_ms": round(t.get("queue_wait", 0.0), 1),
        "decode_ms": round(t.get("decode", 0.0), 1),
        "inference_ms": round(t.get("inference", 0.0), 1),
        "total_ms": round(t.get("total", 0.0), 1),
        "prompt_tokens": record.tokens["prompt"],
        "output_tokens": record.tokens["output"],
        "evaluated_tokens": record.tokens.get("evaluated", record.tokens["prompt"]),
        "sampled_tokens": record.tokens.get("sampled", record.tokens["output"]),
        "rss_mb": record.memory_mb["rss"],
        "vram_mb": record.memory_mb["vram"],
        "characters": list(record.labels.characters) if record.labels else [],
        "props": list(record.labels.props) if record.labels else [],
        **({"answers": dict(record.labels.answers)} if record.labels and record.labels.answers else {}),
        **({"pair_source": record.pair["source"]} if record.pair else {}),
        **({"served": record.served} if record.served else {}),
        **({"needs_review": record.confidence["needs_review"]} if record.confidence else {}),
    }
