"""The daemon: watcher → settle → queue → worker threads that hand photos to the labeler.

Invariants: the watchdog thread only enqueues; the main loop owns settling, rescans and
shutdown; as many worker threads call the labeler as it declares (`Labeler.concurrency`: 1
for an in-process model, more for inference servers), each with its own decoder process, and
the queue never hands one photo to two of them. This process never parses photo
bytes: capture times come from a probe in a decoder child process, pixels from another.
A fault while handling one file or event costs that file, never the loop. Stopping sets one
event: the workers abandon the photos in hand (nothing is written for them, they are redone at
the next start), the loop drains, and `run` returns; if the main loop itself fails, the same
happens within seconds and `run` raises `DaemonError` (non-zero exit: systemd restarts it).
Photos in hand are journalled, so one that kills the whole process twice is quarantined.
Nothing outside the watch folders is looked at: an event under a symlinked folder is dropped, a
folder is scanned only when it and every folder above it up to its watch root is a real folder,
and the pipeline reads and writes only beneath the roots. A photo that ended without a sidecar
of bbsd's (its sidecar unreadable, itself not a regular file, no sidecar could be written) is one
record: rescans pass it over until it or its sidecar changes.
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
from bbsd import instance, safefs
from bbsd.arrive import scan, watcher
from bbsd.arrive.retry import Retries, Waits
from bbsd.arrive.settle import SettleTracker, stat_or_none
from bbsd.arrive.workqueue import PhotoQueue
from bbsd.config import Settings
from bbsd.engine import registry
from bbsd.errors import AbandonedError, BbsdError, ExitCode
from bbsd.photo.decoder import Decoder, DecoderError
from bbsd.pipeline import Code, Pipeline, Status
from bbsd.service.journal import DEATHS_TO_QUARANTINE, Journal
from bbsd.service.monitor import Monitor
from bbsd.sidecars import record as sidecar

log = structlog.get_logger("bbsd.service")

FOLDER_CHECK_S = 2.0
JOIN_S = 10.0  # at a failure, how long the worker threads get to let go of their photos


class DaemonError(BbsdError):
    """The daemon's own loop failed (a bug or a broken system, not a photo): exit so systemd restarts it."""

    exit_code = ExitCode.FAILED


class Daemon:
    def __init__(self, settings: Settings, pipeline: Pipeline, stop: threading.Event | None = None,
                 monitor: Monitor | None = None, progress=None) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.stop = stop or threading.Event()
        self.reload = threading.Event()  # set by SIGHUP
        self.monitor = monitor or Monitor(instance.folder_for(settings.service.state_dir, settings.source),
                                          pipeline.labeler.info.file, busy_limit_s=settings.worker.timeout_seconds,
                                          config=settings.source)
        self._folder_scans: list[tuple[float, Path]] = []  # new folders to look into again
        self._progress = progress  # a terminal's start-up backlog bar (console.BacklogProgress), or None
        self._in_flight: dict[Path, float] = {}  # photo -> monotonic time a worker took it
        self._lock = threading.Lock()  # guards _in_flight and counts across worker threads
        self._events: queue.Queue[watcher.Event] = queue.Queue()
        self._feedback: queue.Queue[tuple[Path, float]] = queue.Queue()  # (path, retry at) from the worker
        self._tracker = SettleTracker(settings.watch.settle_seconds)
        self._work = PhotoQueue()
        self._retries = Retries(settings.watch.settle_seconds, settings.watch.incomplete_timeout_seconds)
        self._waits = Waits()  # files waiting as incomplete: logged when the wait starts and when it ends
        self.counts = {"labeled": 0, "error": 0, "skipped": 0}
        self.fatal: BbsdError | None = None
        self._prober = Decoder(settings, role="probe")  # the main loop's own decoder process, for capture times
        self.journal = Journal(self.monitor.status.path.parent)
        self._decoders_up = threading.Semaphore(0)  # released by each worker thread once its decoder runs
        self.pipeline.roots = settings.watch.folders  # photos are read and written beneath these only
        safefs.pin_roots(settings.watch.folders)  # a root later replaced by a link is not followed
        self._no_sidecar: dict[Path, tuple] = {}  # photo -> _signature when it ended without a sidecar of ours

    def run(self) -> None:
        """Block until `stop` is set; then shut down cleanly."""
        w = self.settings.watch
        removed = scan.remove_stale_temps(w.folders, w.recursive)
        self._recover()
        observer = watcher.Watcher(w.folders, w.extensions, w.recursive, w.observer, w.poll_seconds, self._events)
        observer.start()
        workers = [threading.Thread(target=self._work_loop, name=f"bbsd-worker-{i}", daemon=True)
                   for i in range(max(1, self.pipeline.labeler.concurrency))]
        for worker in workers:
            worker.start()
        try:
            # Every decoder process up before READY (the prober here, each worker thread's own in that
            # thread): the first photos of a burst pay for none of them.
            self._prober.start()
            for _ in workers:
                self._decoders_up.acquire(timeout=self.settings.decode.timeout_seconds)
            queued = self._rescan()
            log.info("daemon.ready", folders=[str(f) for f in w.folders], queued=queued, stale_temps_removed=removed,
                     model=self.pipeline.labeler.info.file, status_file=str(self.monitor.status.path),
                     workers=len(workers))
            self.monitor.ready(len(self._work))
            if self._progress:
                self._progress.start(queued)
            self._main_loop(observer)
        except DecoderError as e:  # the decoder cannot start at all: a broken installation, said as such
            log.error("daemon.failed", error=e.message, hint=e.hint, queue_depth=len(self._work))
            self.fatal = e
        except Exception as e:  # the loop itself broke: stop promptly, never spin (systemd restarts us)
            log.error("daemon.failed", error=f"{type(e).__name__}: {e}", queue_depth=len(self._work))
            self.fatal = DaemonError(f"the daemon's main loop failed ({type(e).__name__}: {e})",
                                     "this is a bug: report it with the log; systemd restarts the service")
        finally:
            self.stop.set()  # the workers abandon their photos exactly as at SIGTERM
            if self._progress:
                self._progress.stop()
            log.info("daemon.stopping", queue_depth=len(self._work))
            self.monitor.stopping(len(self._work))
            self._work.close()
            observer.stop()
            deadline = time.monotonic() + JOIN_S
            for worker in workers:
                worker.join(max(0.0, deadline - time.monotonic()))
            self._prober.close()
            log.info("daemon.stopped", **self.counts)
            self.monitor.stopped()
        if self.fatal is not None:
            raise self.fatal

    def _recover(self) -> None:
        """A photo in hand at two deaths in a row of this process is quarantined, not tried again."""
        for photo, deaths in self.journal.recover():
            if deaths < DEATHS_TO_QUARANTINE:
                continue
            outcome = self.pipeline.quarantine(
                photo, Code.DAEMON_CRASH, f"the bbsd daemon itself died {deaths} times in a row while labelling "
                "this photo", "the photo is not retried until it changes; report it with the log")
            self.journal.end(photo)
            log.warning("photo.quarantined", path=str(photo), deaths=deaths, status=outcome.status.value)

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
            settled = self._tracker.poll(time.monotonic())
            # At once, by mtime: a burst's newest photo is the first one taken. Then by capture time,
            # probe by probe: a slow probe (a share, a hostile file) holds no other photo back.
            found = [(path, st) for path in settled if (st := stat_or_none(path))]
            self._work.put_all([(path, st.st_mtime) for path, st in found])
            for path, st in found:
                self._guarded(self._by_capture_time, path, st)
            if time.monotonic() >= next_rescan:
                self._rescan()
                next_rescan = time.monotonic() + self.settings.watch.rescan_seconds
            if self.reload.is_set():
                self.reload.clear()
                self._reload()
            with self._lock:
                oldest = min(self._in_flight.items(), key=lambda kv: kv[1], default=(None, None))
                busy = len(self._in_flight)
            self.monitor.tick(len(self._work), str(oldest[0]) if oldest[0] else None, oldest[1],
                              busy=busy, endpoints=self.pipeline.labeler.health())

    def _reload(self) -> None:
        """SIGHUP: apply a new catalog (its references too), questions, [prompt] and [xmp]; say what needs a restart."""
        try:
            new = config_mod.load(self.settings.source)
        except BbsdError as e:
            log.error("config.reload_failed", message=e.one_line(), kept="the running configuration")
            return
        restart = [n for n in ("watch", "engine", "worker", "service", "log")
                   if getattr(new, n) != getattr(self.settings, n)]
        restart += [t for t in registry.changed_tables(self.settings, new) if t not in restart]
        applied = [n for n in ("catalog", "questions", "prompt", "xmp") if getattr(new, n) != getattr(self.settings, n)]
        self.settings = dataclasses.replace(self.settings, catalog=new.catalog, questions=new.questions,
                                            prompt=new.prompt, xmp=new.xmp)
        self.pipeline.apply(self.settings)
        log.info("config.reloaded", applied=applied, model_reloaded=False)
        if restart:
            log.warning("config.restart_needed", sections=restart,
                        hint="these take effect after a restart (systemctl restart bbsd); the model was not reloaded")
        if {"catalog", "questions", "prompt"} & set(applied):
            self._rescan()  # photos labelled with the old catalog, questions or references are now out of date

    def _drain_events(self, timeout: float) -> None:
        try:
            path, closed = self._events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._guarded(self._note, path, closed)
            try:
                path, closed = self._events.get_nowait()
            except queue.Empty:
                return

    @staticmethod
    def _guarded(step, path: Path, *args) -> None:
        """Run one per-file step of the main loop; a fault costs that file's event, never the loop."""
        try:
            step(path, *args)
        except Exception as e:
            log.warning("event.failed", path=str(path), step=step.__name__, error=f"{type(e).__name__}: {e}")

    def _note(self, path: Path, closed: bool) -> None:
        if not safefs.beneath(self.settings.watch.folders, path):  # under a symlinked folder: not ours
            log.debug("event.outside", path=str(path))
            return
        st = stat_or_none(path)  # the entry itself: a symlink to a folder is no folder here
        if st is not None and stat_module.S_ISDIR(st.st_mode):  # created or moved in: look now and after settling
            self._scan_folder(path)
            self._folder_scans.append((time.monotonic() + self.settings.watch.settle_seconds + 1.0, path))
            return
        self._tracker.touch(path, time.monotonic(), closed=closed)

    def _scan_folder(self, folder: Path) -> None:
        """Look into a new folder, only if it and each folder above it is a real folder under a root."""
        st = stat_or_none(folder)
        if st is None or not stat_module.S_ISDIR(st.st_mode) or not safefs.beneath(self.settings.watch.folders, folder):
            log.debug("scan.refused", folder=str(folder), reason="not a real folder under a watch folder")
            return
        w = self.settings.watch
        for photo in scan.photos((folder,), w.extensions, w.recursive, follow_roots=False):
            self._guarded(self._consider, photo)

    def _consider(self, photo: Path) -> None:
        if photo in self._tracker or photo in self._work:  # already on its way: a rescan must not add it twice
            return
        with self._lock:
            recorded = self._no_sidecar.get(photo)
        if recorded is not None and recorded == _signature(photo):
            return  # ended without a sidecar and nothing changed since: its one record stands
        # A sidecar that is not a regular file (FIFO, link, device, folder) is never opened (`sidecar.read_strict`):
        # it is not current, and the pipeline records it
        if not self.pipeline.is_current(photo):
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

    def _by_capture_time(self, path: Path, st: os.stat_result) -> None:
        """Order a queued photo by its EXIF capture time (read by a probe in the decoder process). Only
        a regular file is probed (opening a FIFO blocks forever); anything else stays queued by mtime,
        so the pipeline records why it is ignored."""
        if stat_module.S_ISREG(st.st_mode) and (probe := self._prober.probe(path)) and probe.capture_time:
            self._work.reorder(path, probe.capture_time)

    def _rescan(self, roots: tuple[Path, ...] | None = None) -> int:
        """Queue every photo whose sidecar looks stale; cheap: no hashing here."""
        w = self.settings.watch
        before = len(self._tracker)
        for photo in scan.photos(roots or w.folders, w.extensions, w.recursive):
            self._guarded(self._consider, photo)
        queued = len(self._tracker) - before
        log.info("scan.done", candidates=queued, queue_depth=len(self._work))
        return queued

    # --- workers: the threads that hand photos to the labeler ----------------------------------

    def _work_loop(self) -> None:
        try:
            self.pipeline.decoder.start()  # this thread's own decoder process (the pipeline keeps one per thread)
        except BbsdError as e:
            log.error("engine.unavailable", message=e.message, hint=e.hint)
            self.fatal = e
            self.stop.set()
        finally:
            self._decoders_up.release()
        while not self.stop.is_set():
            job = self._work.get(timeout=0.5)
            if job is None:
                continue
            wait_ms = (time.monotonic() - job.enqueued_at) * 1000
            with self._lock:
                self._in_flight[job.path] = time.monotonic()
            self.journal.begin(job.path)
            try:
                # every event while handling it names the photo (a retry, an invalid reply)
                with structlog.contextvars.bound_contextvars(queue_depth=len(self._work), path=str(job.path)):
                    self._handle(job.path, wait_ms, job.order)
                self.journal.end(job.path)
            except AbandonedError:
                log.info("photo.abandoned", path=str(job.path), reason="shutdown")
                self.journal.end(job.path)  # a clean stop is no death: the photo is simply redone
            except BbsdError as e:  # the engine or the decoder cannot be (re)started: nothing more can be labelled
                log.error("engine.unavailable", message=e.message, hint=e.hint)
                self.fatal = e
                self.stop.set()
            except Exception as e:  # the per-file boundary: the photo gets a record, the thread goes on
                self.pipeline.quarantine(job.path, Code.INTERNAL_ERROR, f"bbsd failed on this photo ({e!r:.200})",
                                         "this is a bug: report it with the log")
                self.journal.end(job.path)
            finally:
                with self._lock:
                    self._in_flight.pop(job.path, None)
                self._work.done(job.path)

    def _handle(self, path: Path, wait_ms: float, order: float) -> None:
        st = stat_or_none(path)
        if st is None:
            self._log_wait(path, Status.GONE, "", "", young=True)
            return
        young = time.time() - st.st_mtime < self.settings.watch.incomplete_timeout_seconds
        # Taken before the photo is looked at: a sidecar an editor finished saving meanwhile differs from
        # it, so the next rescan looks again instead of passing the photo over for good.
        before = _signature(path)
        outcome = self.pipeline.process(path, queue_wait_ms=wait_ms, allow_incomplete=young, order=order,
                                        cancelled=self.stop.is_set)
        self._log_wait(path, outcome.status, outcome.detail, outcome.message, young)
        no_sidecar = outcome.sidecar is None and outcome.status in (Status.KEPT, Status.IGNORED, Status.FAILED)
        signature = before if no_sidecar else None
        with self._lock:
            if outcome.status in self.counts:
                self.counts[outcome.status] += 1
            if signature is not None:
                self._no_sidecar[path] = signature  # one record, not one per rescan
            else:
                self._no_sidecar.pop(path, None)
        if outcome.status in (Status.LABELED, Status.FAILED):
            self.monitor.photo_done(outcome.status is Status.LABELED, outcome.total_ms, outcome.memory,
                                    outcome.detail)
        if outcome.status is Status.PENDING and outcome.detail == Code.REFERENCE_CHANGED:
            # re-read the configuration: the new picture is hashed
            self.reload.set()
        # when it comes back (the retry policy: a RAW waiting for its JPEG, a file still arriving, a backoff)
        delay = self._retries.after(path, outcome.status, now=time.time(), mtime=st.st_mtime)
        if delay is None:
            if self._progress:
                self._progress.advance()
            return
        if outcome.status is Status.PENDING:
            log.info("photo.retry_scheduled", path=str(path), in_s=delay)
        self._feedback.put((path, time.monotonic() + delay))

    def _log_wait(self, path: Path, status: Status, code: str, message: str, young: bool) -> None:
        """`photo.incomplete` once when a file starts waiting as incomplete, once when the wait ends:
        `outcome` says how (`timed_out`: recorded as what it is, an error sidecar, once
        `incomplete_timeout_seconds` passed)."""
        change = self._waits.note(path, status, time.monotonic())
        if change is None:
            return
        if change.started:
            log.info("photo.incomplete", path=str(path), state="waiting", code=code, message=message,
                     timeout_s=self.settings.watch.incomplete_timeout_seconds)
            return
        outcome = status.value if status is not Status.FAILED else "failed" if young else "timed_out"
        log.info("photo.incomplete", path=str(path), state="ended", code=code, outcome=outcome,
                 waited_s=round(change.waited_s, 1))


def _signature(photo: Path) -> tuple:
    """What tells that a photo or its sidecar changed: each entry's own lstat (never followed)."""
    out = []
    for p in (photo, sidecar.path_for(photo)):
        st = stat_or_none(p)
        out.append(None if st is None else (st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)
