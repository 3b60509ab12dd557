import threading
from pathlib import Path

from bbsd.arrive.workqueue import PhotoQueue


def test_newest_first_and_deduplicated():
    q = PhotoQueue()
    q.put(Path("old.jpg"), mtime=1)
    q.put(Path("new.jpg"), mtime=3)
    q.put(Path("mid.jpg"), mtime=2)
    q.put(Path("old.jpg"), mtime=1)  # queued twice: comes out once
    assert len(q) == 3
    assert [q.get(0).path.name for _ in range(3)] == ["new.jpg", "mid.jpg", "old.jpg"]
    assert q.get(0.01) is None


def test_requeue_with_newer_mtime_moves_it_forward():
    q = PhotoQueue()
    q.put(Path("a.jpg"), mtime=1)
    q.put(Path("b.jpg"), mtime=2)
    q.put(Path("a.jpg"), mtime=5)
    assert q.get(0).path.name == "a.jpg"
    assert q.get(0).path.name == "b.jpg"
    assert q.get(0.01) is None


def test_close_wakes_a_blocked_get():
    q = PhotoQueue()
    got = []
    t = threading.Thread(target=lambda: got.append(q.get(timeout=30)))
    t.start()
    q.close()
    t.join(timeout=5)
    assert not t.is_alive() and got == [None]


def test_a_photo_in_a_workers_hands_is_not_given_to_another_until_done():
    q = PhotoQueue()
    q.put(Path("a.jpg"), mtime=2)
    q.put(Path("b.jpg"), mtime=1)
    first = q.get(0)
    assert first.path.name == "a.jpg"
    q.put(Path("a.jpg"), mtime=9)  # changed again while being labelled
    assert q.get(0).path.name == "b.jpg"  # the newer a.jpg waits: one photo is never in two workers' hands
    assert q.get(0.01) is None
    q.done(first.path)
    assert q.get(0).path.name == "a.jpg"


def test_a_worker_waiting_when_a_burst_is_queued_takes_its_newest():
    """`put_all` queues a burst at once: a worker blocked in `get` wakes to the whole burst, never
    to its first (oldest) photo alone (which one item at a time, each under its own lock, gives it)."""
    import sys
    import time

    q = PhotoQueue()
    got: list[Path] = []
    t = threading.Thread(target=lambda: got.append(q.get(timeout=30).path))
    t.start()
    deadline = time.monotonic() + 10
    while not q._cond._waiters and time.monotonic() < deadline:  # until the worker waits in `get`
        time.sleep(0.001)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # let the worker in between any two statements of the producer
    try:
        q.put_all([(Path(f"/in/{i}.jpg"), 1000.0 + i) for i in range(200)])
        t.join(30)
    finally:
        sys.setswitchinterval(interval)
    assert got == [Path("/in/199.jpg")]
    assert len(q) == 199


def test_reorder_moves_a_queued_photo_but_never_requeues_one_in_a_workers_hands():
    q = PhotoQueue()
    q.put_all([(Path("a.jpg"), 1.0), (Path("b.jpg"), 2.0)])
    q.reorder(Path("a.jpg"), 3.0)  # its capture time, once probed
    assert q.get(timeout=1).path == Path("a.jpg")
    q.reorder(Path("a.jpg"), 9.0)  # in a worker's hands now: left alone
    q.reorder(Path("never.jpg"), 9.0)
    assert q.get(timeout=1).path == Path("b.jpg")
    assert q.get(timeout=0.05) is None


def test_photos_of_one_capture_time_come_out_by_mtime():
    """Shots within one second without a sub-second field share a capture time: the file written
    last (the later shot) still comes out first, whatever order the probes reordered them in."""
    q = PhotoQueue()
    q.put_all([(Path(f"s{i}.jpg"), 1000.0 + i) for i in range(4)])
    for i in (3, 0, 2, 1):  # probes answer in any order
        q.reorder(Path(f"s{i}.jpg"), 500.0)
    q.put(Path("older.jpg"), mtime=2000.0)
    q.reorder(Path("older.jpg"), 499.0)  # taken earlier, copied later: capture time decides
    assert [q.get(0).path.name for _ in range(5)] == ["s3.jpg", "s2.jpg", "s1.jpg", "s0.jpg", "older.jpg"]
