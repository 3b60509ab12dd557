"""The daemon: watcher → settle → queue → one worker that owns the model.

Invariants: the watchdog thread only enqueues; the main loop owns settling, rescans and
shutdown; exactly one worker thread calls the labeler. Stopping sets one event: the worker
abandons the photo in hand (nothing is written for it, it is redone at the next start),
the loop drains, and `run` returns.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import stat as stat_module
import threading
import time
from pathlib import Path

import structlog

from bbsd import config as config_mod
from bbsd import scan, sidecar, state, watcher
from bbsd.config import Settings
from bbsd.errors import AbandonedError, BbsdError, ModelError
from bbsd.monitor import Monitor
from bbsd.pipeline import Pipeline, Status
from bbsd.settle import SettleTracker, stat_or_none
from bbsd.workqueue import PhotoQueue

log = structlog.get_logger("bbsd.service")

FOLDER_CHECK_S = 2.0
WRITE_RETRY_MIN_S = 2.0
WRITE_RETRY_MAX_S = 300.0


class Daemon:
    def __init__(self, settings: Settings, pipeline: Pipeline, stop: threading.Event | None = None,
                 monitor: Monitor | None = None, progress=None) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.stop = stop or threading.Event()
        self.reload = threading.Event()  # set by SIGHUP
        self.monitor = monitor or Monitor(state.state_dir(settings.service.state_dir), pipeline.labeler.info.file,
                                          busy_limit_s=settings.worker.timeout_seconds)
        self._folder_scans: list[tuple[float, Path]] = []  # new folders to look into again
        self._progress = progress  # a terminal's start-up backlog bar (console.BacklogProgress), or None
        self._in_flight: Path | None = None
        self._busy_since: float | None = None
        self._events: queue.Queue[watcher.Event] = queue.Queue()
        self._feedback: queue.Queue[tuple[Path, float]] = queue.Queue()  # (path, retry at) from the worker
        self._tracker = SettleTracker(settings.watch.settle_seconds)
        self._work = PhotoQueue()
        self._write_failures: dict[Path, int] = {}
        self.counts = {"labeled": 0, "error": 0, "skipped": 0}
        self.fatal: ModelError | None = None

    def run(self) -> None:
        """Block until `stop` is set; then shut down cleanly."""
        w = self.settings.watch
        removed = scan.remove_stale_temps(w.folders, w.recursive)
        observer = watcher.Watcher(w.folders, w.extensions, w.recursive, w.observer, w.poll_seconds, self._events)
        observer.start()
        worker = threading.Thread(target=self._work_loop, name="bbsd-worker", daemon=True)
        worker.start()
        queued = self._rescan()
        log.info("daemon.ready", folders=[str(f) for f in w.folders], queued=queued, stale_temps_removed=removed,
                 model=self.pipeline.labeler.info.file, status_file=str(self.monitor.status.path))
        self.monitor.ready(len(self._work))
        if self._progress:
            self._progress.start(queued)
        try:
            self._main_loop(observer)
        finally:
            if self._progress:
                self._progress.stop()
            log.info("daemon.stopping", queue_depth=len(self._work))
            self.monitor.stopping(len(self._work))
            self._work.close()
            observer.stop()
            worker.join()
            log.info("daemon.stopped", **self.counts)
            self.monitor.stopped()
        if self.fatal is not None:
            raise self.fatal

    # --- main loop: events, settling, rescans -------------------------------------------------

    def _main_loop(self, observer: watcher.Watcher) -> None:
        next_rescan = time.monotonic() + self.settings.watch.rescan_seconds
        next_folder_check = time.monotonic() + FOLDER_CHECK_S
        while not self.stop.is_set():
            if time.monotonic() >= next_folder_check:
                for root in observer.check():  # a share came back: what arrived meanwhile is new to us
                    self._rescan((root,))
                next_folder_check = time.monotonic() + FOLDER_CHECK_S
            now = time.monotonic()
            self._drain_events(timeout=min(0.25, self._tracker.next_deadline(now)))
            self._drain_feedback(time.monotonic())
            self._due_folder_scans(time.monotonic())
            for path in self._tracker.poll(time.monotonic()):
                self._enqueue(path)
            if time.monotonic() >= next_rescan:
                self._rescan()
                next_rescan = time.monotonic() + self.settings.watch.rescan_seconds
            if self.reload.is_set():
                self.reload.clear()
                self._reload()
            in_flight = str(self._in_flight) if self._in_flight else None
            self.monitor.tick(len(self._work), in_flight, self._busy_since)

    def _reload(self) -> None:
        """SIGHUP: apply a new catalog and XMP settings; say which changes need a restart."""
        try:
            new = config_mod.load(self.settings.source)
        except BbsdError as e:
            log.error("config.reload_failed", message=e.one_line(), kept="the running configuration")
            return
        restart = [n for n in ("watch", "model", "engine", "worker", "service", "log")
                   if getattr(new, n) != getattr(self.settings, n)]
        applied = [n for n in ("catalog", "xmp") if getattr(new, n) != getattr(self.settings, n)]
        self.settings = dataclasses.replace(self.settings, catalog=new.catalog, xmp=new.xmp)
        self.pipeline.apply(self.settings)
        log.info("config.reloaded", applied=applied, model_reloaded=False)
        if restart:
            log.warning("config.restart_needed", sections=restart,
                        hint="these take effect after a restart (systemctl restart bbsd); the model was not reloaded")
        if "catalog" in applied:
            self._rescan()  # photos labelled with the old catalog are now out of date

    def _drain_events(self, timeout: float) -> None:
        try:
            path, closed = self._events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._note(path, closed)
            try:
                path, closed = self._events.get_nowait()
            except queue.Empty:
                return

    def _note(self, path: Path, closed: bool) -> None:
        if path.is_dir():  # a folder created or moved in: look now, and once more after settling
            self._scan_folder(path)
            self._folder_scans.append((time.monotonic() + self.settings.watch.settle_seconds + 1.0, path))
            return
        self._tracker.touch(path, time.monotonic(), closed=closed)

    def _scan_folder(self, folder: Path) -> None:
        for photo in scan.photos((folder,), self.settings.watch.extensions, self.settings.watch.recursive):
            if photo not in self._tracker and self._looks_stale(photo):
                self._tracker.touch(photo, time.monotonic())

    def _due_folder_scans(self, now: float) -> None:
        due = [f for t, f in self._folder_scans if t <= now]
        self._folder_scans = [(t, f) for t, f in self._folder_scans if t > now]
        for folder in dict.fromkeys(due):
            self._scan_folder(folder)

    def _drain_feedback(self, now: float) -> None:
        while True:
            try:
                path, retry_at = self._feedback.get_nowait()
            except queue.Empty:
                return
            self._tracker.defer(path, now, retry_at)

    def _enqueue(self, path: Path) -> None:
        st = stat_or_none(path)
        if st is None:
            return
        # Only a regular file may be opened for its EXIF date: opening a FIFO blocks forever.
        # Anything else is queued too, so the pipeline records why it is ignored.
        regular = stat_module.S_ISREG(st.st_mode)
        self._work.put(path, capture_time(path, st.st_mtime) if regular else st.st_mtime)

    def _rescan(self, roots: tuple[Path, ...] | None = None) -> int:
        """Queue every photo whose sidecar looks stale; cheap: no hashing here."""
        w = self.settings.watch
        now, queued = time.monotonic(), 0
        for photo in scan.photos(roots or w.folders, w.extensions, w.recursive):
            if photo not in self._tracker and self._looks_stale(photo):
                self._tracker.touch(photo, now)
                queued += 1
        log.info("scan.done", candidates=queued, queue_depth=len(self._work))
        return queued

    def _looks_stale(self, photo: Path) -> bool:
        """A sidecar newer than its photo, from this model and prompt, is taken as current.

        The worker still verifies the sha256 before labelling, so a wrong guess here costs
        a hash, never a wrong label.
        """
        doc = sidecar.read(photo)
        info, prompt = self.pipeline.labeler.info, self.pipeline.prompt
        if doc is None or doc.get("model", {}).get("file") != info.file:
            return True
        if doc.get("prompt") != {"version": prompt.version, "catalog_sha256": prompt.catalog_digest}:
            return True
        try:
            return os.stat(sidecar.path_for(photo)).st_mtime_ns < os.stat(photo).st_mtime_ns
        except OSError:
            return True

    # --- worker: the one thread that uses the model ------------------------------------------

    def _work_loop(self) -> None:
        while not self.stop.is_set():
            job = self._work.get(timeout=0.5)
            if job is None:
                continue
            wait_ms = (time.monotonic() - job.enqueued_at) * 1000
            self._in_flight, self._busy_since = job.path, time.monotonic()
            try:
                with structlog.contextvars.bound_contextvars(queue_depth=len(self._work)):
                    self._handle(job.path, wait_ms)
            except AbandonedError:
                log.info("photo.abandoned", path=str(job.path), reason="shutdown")
            except ModelError as e:  # the engine cannot be (re)started: nothing more can be labelled
                log.error("engine.unavailable", message=e.message, hint=e.hint)
                self.fatal = e
                self.stop.set()
            except Exception:  # a bug must not stop the daemon; the photo is retried at the next rescan
                log.exception("photo.crashed", path=str(job.path))
            finally:
                self._in_flight, self._busy_since = None, None

    def _handle(self, path: Path, wait_ms: float) -> None:
        st = stat_or_none(path)
        if st is None:
            return
        young = time.time() - st.st_mtime < self.settings.watch.incomplete_timeout_seconds
        outcome = self.pipeline.process(path, queue_wait_ms=wait_ms, allow_incomplete=young,
                                        cancelled=self.stop.is_set)
        if outcome.status in self.counts:
            self.counts[outcome.status] += 1
        if outcome.status in (Status.LABELED, Status.FAILED):
            self.monitor.photo_done(outcome.status is Status.LABELED, outcome.total_ms, outcome.memory)
        if self._progress and outcome.status not in (Status.INCOMPLETE, Status.WAITING, Status.PENDING):
            self._progress.advance()
        if outcome.status is Status.WAITING:  # a RAW waiting for its JPEG sibling's labels
            self._feedback.put((path, time.monotonic() + max(1.0, self.settings.watch.settle_seconds)))
        elif outcome.status is Status.INCOMPLETE:
            remaining = self.settings.watch.incomplete_timeout_seconds - (time.time() - st.st_mtime)
            delay = min(max(1.0, self.settings.watch.settle_seconds), max(0.05, remaining + 0.05))
            self._feedback.put((path, time.monotonic() + delay))
        elif outcome.status is Status.PENDING:
            n = self._write_failures.get(path, 0)
            self._write_failures[path] = n + 1
            delay = min(WRITE_RETRY_MAX_S, WRITE_RETRY_MIN_S * 2**n)
            log.info("photo.retry_scheduled", path=str(path), in_s=delay)
            self._feedback.put((path, time.monotonic() + delay))
        else:
            self._write_failures.pop(path, None)


def capture_time(path: Path, fallback: float) -> float:
    """EXIF DateTimeOriginal as a timestamp (newest shots first), else the file's mtime."""
    from datetime import datetime

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:  # reads the header only
            raw = img.getexif().get_ifd(0x8769).get(0x9003)
        return datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S").timestamp() if raw else fallback
    except (OSError, ValueError, UnidentifiedImageError, SyntaxError):
        return fallback
