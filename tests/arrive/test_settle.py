"""Settling: a file is released only when its writer is done. Clock and stat are injected."""

import os
from pathlib import Path

from bbsd.arrive.settle import SettleTracker


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


def test_a_burst_settling_within_the_gathering_is_released_together():
    """Photos dropped at once settle a few ms apart: the first waits for the others (at most
    `gather`), so the queue gets the whole burst and hands out its newest photo first."""
    files = FakeFiles()
    t = SettleTracker(0.5, stat=files.stat, gather=0.1)
    burst = [Path(f"/in/{i}.jpg") for i in range(5)]
    for i, p in enumerate(burst):
        files.write(p, 10, 1)
        t.touch(p, now=i * 0.02)  # touched 20 ms apart
        assert t.poll(now=i * 0.02) == []  # its first look
    assert t.poll(now=0.505) == []  # the first is settled, the others are due within the gathering
    assert abs(t.next_deadline(0.505) - 0.015) < 1e-9  # it looks again when the next one is due (0.52)
    assert t.poll(now=0.585) == burst  # all of them (the last due at 0.58), in the order they settled
    assert len(t) == 0


def test_a_lone_photo_is_not_held_back():
    files = FakeFiles()
    t = SettleTracker(0.5, stat=files.stat, gather=0.1)
    files.write(P, 10, 1)
    t.touch(P, now=0)
    t.poll(now=0)
    later = Path("/in/later.jpg")
    files.write(later, 10, 1)
    t.touch(later, now=0.3)  # due 0.3 s after P: not part of its burst
    t.poll(now=0.3)
    assert t.poll(now=0.5) == [P]


def test_the_gathering_is_bounded_while_files_keep_arriving():
    """A stream of files each due right after the last (a camera at 100 frames a second) cannot hold
    the first one back for longer than `gather`."""
    files = FakeFiles()
    t = SettleTracker(0.5, stat=files.stat, gather=0.1)
    first = Path("/in/0.jpg")
    released: list[Path] = []
    for i in range(100):  # one more every 10 ms, polled every 10 ms
        now = i * 0.01
        files.write(Path(f"/in/{i}.jpg"), 10, 1)
        t.touch(Path(f"/in/{i}.jpg"), now=now)
        released += t.poll(now + 0.005)
        if first in released:
            break
    assert first in released and now <= 0.5 + 0.1 + 0.01  # due at 0.5, released within the gathering
    assert 9 <= len(released) <= 12  # with the others that settled meanwhile


def _held_beside_another() -> tuple[FakeFiles, SettleTracker, Path]:
    """P settled at 0.5 and held there for `other`, due 50 ms later."""
    files = FakeFiles()
    t = SettleTracker(0.5, stat=files.stat, gather=0.1)
    other = Path("/in/other.jpg")
    for p, when in ((P, 0), (other, 0.05)):
        files.write(p, 10, 1)
        t.touch(p, now=when)
        t.poll(now=when)
    return files, t, other


def test_a_path_held_for_its_burst_counts_as_tracked_and_can_be_forgotten():
    _, t, other = _held_beside_another()
    assert t.poll(now=0.5) == []
    assert P in t and len(t) == 2
    t.forget(P)
    assert P not in t
    assert t.poll(now=0.56) == [other]


def test_files_renamed_into_place_at_once_are_released_together():
    """Renamed into their final name (or closed by their writer), files are settled at their first
    look; their events come a few ms apart, so settled paths wait for a quiet moment (within the
    gathering) before they go."""
    files = FakeFiles()
    t = SettleTracker(2.0, stat=files.stat, gather=0.1)
    a, b = Path("/in/a.jpg"), Path("/in/b.jpg")
    files.write(a, 10, 1)
    files.write(b, 10, 2)
    t.touch(a, now=0.0, closed=True)
    assert t.poll(now=0.002) == []  # an event came 2 ms ago: more may follow
    t.touch(b, now=0.004, closed=True)
    assert t.poll(now=0.006) == []
    assert t.poll(now=0.02) == [a, b]


def test_a_path_written_again_while_held_settles_anew():
    files, t, other = _held_beside_another()
    assert t.poll(now=0.5) == []  # P is held for `other`
    files.write(P, 20, 2)  # and written to again
    t.touch(P, now=0.52)
    assert t.poll(now=0.56) == [other]
    assert t.poll(now=1.0) == []
    assert t.poll(now=1.07) == [P]


def test_a_lone_photo_is_not_held_back_by_a_file_still_being_written():
    """Another file growing at every look (an upload next to it) is not part of a burst about to
    settle, even with settle_seconds below the gathering."""
    files = FakeFiles()
    t = SettleTracker(0.05, stat=files.stat, gather=0.1)
    upload = Path("/in/upload.jpg")
    for k in range(20):  # written a chunk every 10 ms, its events counted
        files.write(upload, 1000 * (k + 1), k)
        t.touch(upload, now=k * 0.01)
        t.poll(now=k * 0.01)
    files.write(P, 10, 1)
    t.touch(P, now=0.2, closed=True)
    files.write(upload, 99_000, 99)
    t.touch(upload, now=0.2)
    assert t.poll(now=0.2) == []  # closed 0 ms ago: another closed file may follow within 10 ms
    files.write(upload, 100_000, 100)
    assert t.poll(now=0.211) == [P]  # not the whole 0.1 s cap
