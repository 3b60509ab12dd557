"""Settling: a file is released only when its writer is done. Clock and stat are injected."""

import os
from pathlib import Path

from bbsd.settle import SettleTracker


class FakeFiles:
    def __init__(self):
        self.sig: dict[Path, tuple[int, int]] = {}

    def write(self, path: Path, size: int, mtime: int) -> None:
        self.sig[path] = (size, mtime)

    def stat(self, path: Path):
        if path not in self.sig:
            return None
        size, mtime = self.sig[path]
        return os.stat_result((0o100644, 0, 0, 1, 0, 0, size, mtime, mtime, mtime, mtime, mtime * 10**9, 0))


P = Path("/in/a.jpg")


def test_growing_file_is_not_released_until_stable():
    files = FakeFiles()
    t = SettleTracker(2.0, stat=files.stat)
    for second in range(10):  # written slowly for 10 s, a chunk per second
        files.write(P, 1000 * (second + 1), second)
        t.touch(P, now=second)
        assert t.poll(now=second + 0.5) == []
    assert t.poll(now=10.5) == []
    assert t.poll(now=11.6) == [P]
    assert P not in t


def test_close_after_write_releases_at_once():
    files = FakeFiles()
    t = SettleTracker(60.0, stat=files.stat)
    files.write(P, 5000, 1)
    t.touch(P, now=0)
    assert t.poll(now=0.1) == []
    t.touch(P, now=0.2, closed=True)
    assert t.poll(now=0.3) == [P]


def test_write_after_close_needs_a_new_close():
    files = FakeFiles()
    t = SettleTracker(60.0, stat=files.stat)
    files.write(P, 10, 1)
    t.touch(P, now=0, closed=True)
    t.touch(P, now=0.1, closed=False)  # writer reopened the file
    files.write(P, 20, 2)
    assert t.poll(now=0.2) == []


def test_deleted_while_settling_is_dropped_quietly():
    files = FakeFiles()
    t = SettleTracker(1.0, stat=files.stat)
    files.write(P, 10, 1)
    t.touch(P, now=0)
    del files.sig[P]
    assert t.poll(now=5) == [] and len(t) == 0


def test_deferred_path_waits_until_its_time():
    files = FakeFiles()
    t = SettleTracker(0.5, stat=files.stat)
    files.write(P, 10, 1)
    t.defer(P, now=0, until=3)
    assert t.poll(now=1) == []
    assert t.poll(now=3.1) == [P]


def test_next_deadline_is_bounded():
    files = FakeFiles()
    t = SettleTracker(2.0, stat=files.stat)
    assert t.next_deadline(0) == 2.0
    files.write(P, 10, 1)
    t.touch(P, now=0)
    t.poll(now=0)
    assert 0.05 <= t.next_deadline(1.0) <= 1.0
