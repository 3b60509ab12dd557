"""Several photos in flight (a backend that declares concurrency > 1): each labelled exactly once.

The queue's order with several workers (newest first, never one photo in two hands) is in test_workqueue.
"""

import threading

from bbsd import config
from bbsd.engine import prompt
from bbsd.engine.labeler import UNNAMED
from bbsd.pipeline import Pipeline
from bbsd.service.daemon import Daemon
from bbsd.sidecars import record as sidecar
from tests.conftest import make_photo, wait_until, write_config
from tests.fakes.engine import FakeLabeler


class FakeCountingLabeler(FakeLabeler):
    """Records how many calls overlap and in which order photos arrive."""

    def __init__(self, concurrency: int) -> None:
        super().__init__(delay_s=0.15, concurrency=concurrency)
        self.now = self.peak = 0
        self.seen: list[str] = []
        self._count = threading.Lock()

    def infer(self, image, prompt, *, attempt, cancelled, alone=False, photo=UNNAMED):
        with self._count:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.seen.append(photo.name)
        try:
            return super().infer(image, prompt, attempt=attempt, cancelled=cancelled, photo=photo)
        finally:
            with self._count:
                self.now -= 1


def test_four_workers_label_a_burst_once_each_with_photos_in_parallel(tmp_path):
    inbox = tmp_path / "in"
    inbox.mkdir()
    photos = [make_photo(inbox / f"p{i:02d}.jpg", color=(i * 9, 0, 0)) for i in range(24)]
    settings = config.load(write_config(tmp_path, [inbox], backend="fake",
                                        extra="[worker]\nisolate = false\n[fake]\nconcurrency = 4\n"), environ={})
    labeler = FakeCountingLabeler(settings.backend.concurrency)
    pipeline = Pipeline(labeler, settings, prompt.build(settings.catalog))
    daemon = Daemon(settings, pipeline)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: all(sidecar.path_for(p).exists() for p in photos), 120, "every sidecar")
        wait_until(lambda: daemon.counts["labeled"] == len(photos), 30, "every photo counted")
    finally:
        daemon.stop.set()
        thread.join(30)
        pipeline.close()
    assert sorted(labeler.seen) == sorted(p.name for p in photos)  # each exactly once
    assert labeler.peak > 1  # photos really were in flight together
    assert daemon.journal.path.exists() and '"in_hand": []' in daemon.journal.path.read_text()
