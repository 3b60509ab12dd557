import threading
from pathlib import Path

from bbsd.workqueue import PhotoQueue


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
    to its first (oldest) photo alone."""
    q = PhotoQueue()
    got: list[Path] = []
    waiting = threading.Event()

    def worker():
        waiting.set()
        job = q.get(timeout=30)
        got.append(job.path)

    t = threading.Thread(target=worker)
    t.start()
    waiting.wait(10)
    q.put_all([(Path(f"/in/{i}.jpg"), 1000.0 + i) for i in range(200)])
    t.join(30)
    assert got == [Path("/in/199.jpg")]
    assert len(q) == 199
