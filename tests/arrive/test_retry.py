"""The retry policy: what became of a photo, turned into when it is looked at again. The clock is
injected (`now` beside the photo's mtime): nothing here sleeps."""

import pytest

from bbsd.arrive import retry
from bbsd.arrive.retry import Retries, Status

MTIME = 1_000_000.0  # the photo's last write, on the wall clock `now` is on
DONE = [Status.LABELED, Status.FAILED, Status.SKIPPED, Status.KEPT, Status.IGNORED, Status.GONE]


def _delay(status: Status, attempt: int = 0, age_s: float = 0.0, settle_s: float = 2.0,
           incomplete_timeout_s: float = 120.0) -> float | None:
    return retry.delay(status, attempt, MTIME + age_s, mtime=MTIME, settle_s=settle_s,
                       incomplete_timeout_s=incomplete_timeout_s)


@pytest.mark.parametrize("status", DONE)
def test_a_photo_that_ended_is_not_looked_at_again_until_it_changes(status):
    assert _delay(status) is None
    assert _delay(status, attempt=5, age_s=10_000) is None


def test_a_raw_waits_for_its_jpeg_a_settle_period_at_a_time_and_never_spins():
    assert _delay(Status.WAITING, settle_s=3.0) == 3.0
    assert _delay(Status.WAITING, settle_s=3.0, age_s=10_000) == 3.0  # however old: the sibling decides
    assert _delay(Status.WAITING, settle_s=0.0) == 1.0  # settling off: still not a busy loop


def test_a_file_still_arriving_is_looked_at_again_until_its_timeout_then_once_just_after():
    assert _delay(Status.INCOMPLETE, age_s=10.0, settle_s=2.0, incomplete_timeout_s=120.0) == 2.0
    # 1.5 s left of its timeout: looked at again just after it, not a whole settle period later
    assert _delay(Status.INCOMPLETE, age_s=118.5, settle_s=2.0, incomplete_timeout_s=120.0) == pytest.approx(1.55)
    # past its timeout (the daemon then records it as what it is): at once, but never a busy loop
    assert _delay(Status.INCOMPLETE, age_s=500.0, settle_s=2.0, incomplete_timeout_s=120.0) == retry.SOON_S
    assert _delay(Status.INCOMPLETE, age_s=0.0, settle_s=0.0, incomplete_timeout_s=120.0) == 1.0


def test_a_pending_photo_backs_off_doubling_up_to_the_cap():
    waits = [_delay(Status.PENDING, attempt=n) for n in range(12)]
    assert waits[:4] == [retry.PENDING_MIN_S, 2 * retry.PENDING_MIN_S, 4 * retry.PENDING_MIN_S,
                         8 * retry.PENDING_MIN_S]
    assert all(a <= b for a, b in zip(waits, waits[1:], strict=False))
    assert waits[-1] == retry.PENDING_MAX_S


def test_failures_in_a_row_are_counted_per_photo_and_start_anew_once_it_ends():
    retries = Retries(settle_s=2.0, incomplete_timeout_s=120.0)
    now = MTIME + 60.0
    assert [retries.after("a.jpg", Status.PENDING, now, MTIME) for _ in range(3)] == [2.0, 4.0, 8.0]
    assert retries.after("b.jpg", Status.PENDING, now, MTIME) == 2.0  # another photo: its own count
    # a wait in between (its sibling, a file rewritten) does not forgive the failures
    assert retries.after("a.jpg", Status.INCOMPLETE, now, MTIME) == 2.0
    assert retries.after("a.jpg", Status.WAITING, now, MTIME) == 2.0
    assert retries.after("a.jpg", Status.PENDING, now, MTIME) == 16.0
    # written at last: the next failure starts from the shortest wait again
    assert retries.after("a.jpg", Status.LABELED, now, MTIME) is None
    assert retries.after("a.jpg", Status.PENDING, now, MTIME) == 2.0


def test_a_wait_as_incomplete_is_noted_when_it_starts_and_when_it_ends_not_at_each_look():
    waits = retry.Waits()
    assert waits.note("a.jpg", Status.INCOMPLETE, 10.0) == retry.WaitChange(started=True)
    assert waits.note("a.jpg", Status.INCOMPLETE, 11.0) is None  # still waiting: nothing new
    assert waits.note("b.jpg", Status.LABELED, 11.5) is None  # never waited
    assert waits.note("a.jpg", Status.FAILED, 13.0) == retry.WaitChange(started=False, waited_s=3.0)
    assert waits.note("a.jpg", Status.FAILED, 14.0) is None  # ended once
    assert waits.note("a.jpg", Status.INCOMPLETE, 20.0) == retry.WaitChange(started=True)  # a new wait
