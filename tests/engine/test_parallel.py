"""Bursts in small batches: photos labelled together as parallel sequences after one cached prefix."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from bbsd import config
from bbsd.engine import prompt
from bbsd.engine.labeler import Job, PhotoRef
from bbsd.engine.registry import open_in_process
from bbsd.engine.supervisor import WorkerLabeler
from bbsd.errors import PhotoError
from bbsd.sidecars import record as sidecar
from tests.conftest import SLACK, events, make_photo, run_bbsd, wait_until, write_config
from tests.fakes import FAULTS


def _photo(i: int) -> Image.Image:
    return Image.new("RGB", (256, 192), (40 * i % 256, 90, 200 - 30 * i % 200))


def _labeler(tmp_path, tiny_models, parallel: int):
    settings = config.load(write_config(tmp_path, [tmp_path], tiny_models),
                           environ={"BBSD_ENGINE_PARALLEL": str(parallel)})
    return open_in_process(settings), prompt.build(settings.catalog)


def test_a_batch_gives_each_photo_the_reply_it_gets_alone_and_evaluates_the_prefix_once(tiny_models, tmp_path):
    alone, p = _labeler(tmp_path, tiny_models, 1)
    try:
        expected = [alone.infer(_photo(i), p, attempt=0, cancelled=lambda: False) for i in range(4)]
        layout = alone.layout(p, _photo(0))
    finally:
        alone.close()
    together, p = _labeler(tmp_path, tiny_models, 3)
    try:
        assert together.parallel == 3
        first = together.infer_many([(_photo(i), p, 0) for i in range(3)], cancelled=lambda: False)
        second = together.infer_many([(_photo(3), p, 0)], cancelled=lambda: False)  # after a batch: seq 0 again
    finally:
        together.close()
    got = first + second
    assert [r.text for r in got] == [r.text for r in expected]
    assert [r.output_tokens for r in got] == [r.output_tokens for r in expected]
    assert [r.sampled_tokens for r in got] == [r.sampled_tokens for r in expected]
    for a, b in zip(got, expected, strict=True):  # the names' confidences come out of the same logits
        assert [s.p for s in a.steps] == pytest.approx([s.p for s in b.steps], abs=1e-3)
    image_and_suffix = layout["image"] + layout["suffix"]
    assert [r.evaluated_tokens for r in got] == [sum(layout.values())] + [image_and_suffix] * 3
    assert all(r.generate_ms > 0 for r in first)  # each its own: a reply leaves the batch when it is complete


def _serve_by_steps(engine, waiting: list[Job], arrivals: dict[int, list[Job]]):
    """The engine's serve loop over `waiting`, counting decode steps; the jobs in `arrivals[n]` arrive
    at step n. Returns the step each job was admitted and finished at, and its result, by tag."""
    steps, decode = [0], engine._ctx.eval_parallel

    def counted(parts):  # one call per decode step of the running replies
        steps[0] += 1
        return decode(parts)

    engine._ctx.eval_parallel = counted
    admitted, finished, results = {}, {}, {}

    def admit(accepts):
        waiting.extend(arrivals.pop(steps[0], []))
        job = next((j for j in waiting if accepts(j)), None)
        if job is not None:
            waiting.remove(job)
            admitted[job.tag] = steps[0]
        return job

    def finish(job, result):
        results[job.tag], finished[job.tag] = result, steps[0]

    engine.serve(admit, finish, cancelled=lambda: False)
    while waiting:  # the worker's loop: serve again while photos wait
        engine.serve(admit, finish, cancelled=lambda: False)
    return admitted, finished, results


def test_a_photo_admitted_mid_batch_joins_before_the_others_finish_and_replies_as_alone(tiny_models, tmp_path):
    """Continuous batching: a third photo handed over after a few decode steps is evaluated into the
    free sequence and steps along with the first two; each result comes out when its reply is complete."""
    alone, p = _labeler(tmp_path, tiny_models, 1)
    try:
        expected = [alone.infer(_photo(i), p, attempt=0, cancelled=lambda: False) for i in range(3)]
    finally:
        alone.close()
    together, p = _labeler(tmp_path, tiny_models, 3)
    try:  # the third arrives while the first two generate
        admitted, finished, results = _serve_by_steps(together, [Job(_photo(i), p, 0, i) for i in range(2)],
                                                      {3: [Job(_photo(2), p, 0, 2)]})
    finally:
        together.close()
    assert admitted == {0: 0, 1: 0, 2: 3}
    assert finished[0] > 3 and finished[1] > 3  # the third joined while they were generating
    assert finished[0] < finished[2] and finished[1] < finished[2]  # and they left without waiting for it
    assert [results[i].text for i in range(3)] == [r.text for r in expected]
    assert [results[i].sampled_tokens for i in range(3)] == [r.sampled_tokens for r in expected]
    for i, b in enumerate(expected):
        assert [s.p for s in results[i].steps] == pytest.approx([s.p for s in b.steps], abs=1e-3)
    assert results[2].evaluated_tokens < results[0].evaluated_tokens  # it shared the cached prefix


def test_a_varied_retry_joins_the_running_batch_and_a_retry_after_a_crash_waits_for_it_to_empty(
        tiny_models, tmp_path):
    """A retry of an invalid reply (attempt 1) has its own sampler and joins like any photo; a retry
    after a crash (alone) may be the photo that crashes the worker, so it joins no running batch and
    nothing joins it."""
    together, p = _labeler(tmp_path, tiny_models, 3)
    try:  # both arrive mid-reply
        admitted, finished, results = _serve_by_steps(together, [Job(_photo(0), p, 0, "first")], {2: [
            Job(_photo(1), p, 0, "crashed", alone=True), Job(_photo(2), p, 1, "varied")]})
    finally:
        together.close()
    assert not any(isinstance(r, PhotoError) for r in results.values()), results
    assert admitted["first"] == 0 and admitted["varied"] == 2  # it joined at once
    assert admitted["crashed"] >= max(finished["first"], finished["varied"])  # it waited for the batch to empty


def test_a_batch_of_another_catalog_is_labelled_one_prompt_at_a_time(tiny_models, tmp_path):
    """A SIGHUP between two photos of a batch: each photo is labelled with its own prompt."""
    labeler, p = _labeler(tmp_path, tiny_models, 2)
    try:
        cfg = tmp_path / "config.toml"
        cfg.write_text(cfg.read_text() + '\n[[characters]]\nname = "Kikimora"\ndescription = "swamp spirit"\n')
        other = prompt.build(config.load(cfg, environ={}).catalog)
        mixed = labeler.infer_many([(_photo(1), p, 0), (_photo(1), other, 0)], cancelled=lambda: False)
        alone = labeler.infer_many([(_photo(1), other, 0)], cancelled=lambda: False)
    finally:
        labeler.close()
    assert mixed[1].text == alone[0].text
    assert mixed[0].evaluated_tokens > mixed[0].prompt_tokens - 50  # each had to evaluate its own prefix
    assert mixed[1].evaluated_tokens == mixed[1].prompt_tokens


@pytest.fixture
def fd2_log(tmp_path):
    """fd 2, which the worker inherits, into a file of the test's own while it runs: pytest's capfd
    empties its capture file after each read, and a line the worker wrote in between was lost (CI once
    waited 90 s for a `worker.admitted` line that never came)."""
    path = tmp_path / "stderr.log"
    saved = os.dup(2)

    def redirect() -> Path:  # called by the test itself: pytest points fd 2 at its own file between phases
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stderr.flush()
        os.dup2(fd, 2)
        os.close(fd)
        return path

    try:
        yield redirect
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _in_worker(tmp_path, tiny_models, monkeypatch, fd2_log, extra: str = "", **env: str):
    """A `WorkerLabeler` at parallel 4 with the test hooks, each decode step slowed so that a photo is
    still generating when the next one arrives; and the worker's debug events by name (from `fd2_log`)."""
    env = {"BBSD_ENGINE_PARALLEL": "4", "BBSD_LOG_LEVEL": "debug", **FAULTS,
           "BBSD_TEST_STEP_MS": str(round(25 * SLACK)), **env}
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the worker reads its configuration and hooks from the environment
    settings = config.load(write_config(tmp_path, [tmp_path], tiny_models, extra=extra))
    log_path = fd2_log()  # before the worker starts: it inherits fd 2
    worker_log: list[dict] = []

    def logged(name: str) -> dict[str, int]:
        complete = log_path.read_text().rpartition("\n")[0]  # a line still being written counts next time
        worker_log[:] = events(complete)
        return {e["photo"]: e["beside"] for e in worker_log if e.get("event") == name}

    logged.events = worker_log  # every event so far, in the order the worker logged them
    return WorkerLabeler(settings), prompt.build(settings.catalog), logged


def _named(i: int) -> PhotoRef:
    """Photo i's identity as the pipeline hands it over: its name (the test hooks match it), its order."""
    return PhotoRef(f"p{i}", float(i))


def test_the_worker_takes_each_photo_into_the_running_batch_and_returns_each_when_its_reply_is_done(
        tiny_models, tmp_path, monkeypatch, fd2_log):
    """Four threads hand over a photo each, one after the other while the first is still generating
    (every decode step slowed by the test hook): each joins the running batch, and each comes back
    as soon as its own reply is complete, the first before the others are done."""
    labeler, p, logged = _in_worker(tmp_path, tiny_models, monkeypatch, fd2_log)
    returned: list[str] = []

    def hand_over(i: int) -> None:
        result = labeler.infer(_photo(i), p, attempt=0, cancelled=lambda: False, photo=_named(i))
        assert result.text.startswith("{")
        returned.append(f"p{i}")

    threads = [threading.Thread(target=hand_over, args=(i,)) for i in range(4)]
    try:
        for i, thread in enumerate(threads):
            thread.start()
            wait_until(lambda i=i: f"p{i}" in logged("worker.admitted"), 30, f"p{i} in the worker")
        for thread in threads:
            thread.join(30 * SLACK)
    finally:
        labeler.close()
    admitted, finished = logged("worker.admitted"), logged("worker.finished")
    # p0 is done a step or more before the photos that joined after it; they may finish in one step.
    assert returned[0] == "p0" and sorted(returned) == ["p0", "p1", "p2", "p3"]
    assert list(finished) == ["p0", "p1", "p2", "p3"]  # as they joined: each reply as long as the others
    assert admitted["p0"] == 0 and all(admitted[f"p{i}"] >= 1 for i in (1, 2, 3))  # each joined a running batch
    assert finished["p0"] >= 1  # sent back while photos that joined after it were still generating


def test_a_photo_handed_to_an_idle_worker_leads_only_newer_photos_join_it_then_the_batch_fills(
        tiny_models, tmp_path, monkeypatch, fd2_log):
    """The newest photo of a burst comes back in about one photo's time, not a full batch's: handed to
    an idle worker a photo leads, a newer photo (decoded a moment after an older one) joins it at once,
    and older photos handed over meanwhile wait until the lead and the photo that joined it are done
    (then they fill the batch together)."""
    labeler, p, logged = _in_worker(tmp_path, tiny_models, monkeypatch, fd2_log)

    def hand_over(i: int) -> None:
        assert labeler.infer(_photo(i), p, attempt=0, cancelled=lambda: False, photo=_named(i)).text.startswith("{")

    threads = {i: threading.Thread(target=hand_over, args=(i,)) for i in (3, 1, 2, 4)}
    try:
        threads[3].start()
        wait_until(lambda: "p3" in logged("worker.admitted"), 30, "p3 in the worker")
        threads[1].start()
        threads[2].start()
        steps = _steps(logged)
        wait_until(lambda: _steps(logged) >= steps + 4, 30, "4 steps of the lead")  # p4 ends well after p3
        threads[4].start()
        wait_until(lambda: "p4" in logged("worker.admitted"), 30, "p4 in the worker")
        for thread in threads.values():
            thread.join(30 * SLACK)
    finally:
        labeler.close()
    admitted = logged("worker.admitted")  # reads the rest of the worker's log
    order = _admitted_and_finished(logged)
    assert order.index(("admitted", "p4")) < order.index(("finished", "p3"))  # newer than the lead: joined it
    group_done = order.index(("finished", "p4"))  # the photo that joined the lead, done after it
    assert order.index(("admitted", "p1")) > group_done and order.index(("admitted", "p2")) > group_done
    assert admitted["p1"] >= 1  # the older ones went together, not one at a time again


def test_photos_that_join_after_the_lead_is_done_do_not_hold_an_older_one_back(
        tiny_models, tmp_path, monkeypatch, fd2_log):
    """Only photos that joined while the lead itself was in the worker belong to its group, so a stream
    of newer photos (a tethered camera) never starves an older one: here the worker has room for two;
    p11 joins the lead p10, p12 comes in when p10 is done, and the older p1 goes in as soon as p11 is
    done, beside p12, not after it."""
    labeler, p, logged = _in_worker(tmp_path, tiny_models, monkeypatch, fd2_log, BBSD_ENGINE_PARALLEL="2")

    def hand_over(i: int) -> None:
        assert labeler.infer(_photo(i), p, attempt=0, cancelled=lambda: False, photo=_named(i)).text.startswith("{")

    threads = {i: threading.Thread(target=hand_over, args=(i,)) for i in (10, 11, 1, 12)}
    try:
        for i in (10, 11):
            threads[i].start()
            wait_until(lambda i=i: f"p{i}" in logged("worker.admitted"), 30, f"p{i} in the worker")
        threads[1].start()
        threads[12].start()  # the worker is full: it waits for a place, as does p1
        for thread in threads.values():
            thread.join(30 * SLACK)
    finally:
        labeler.close()
    admitted = logged("worker.admitted")
    order = _admitted_and_finished(logged)
    assert order.index(("finished", "p10")) < order.index(("admitted", "p12"))  # it took the lead's place…
    assert order.index(("finished", "p11")) < order.index(("admitted", "p1"))  # p1 waited for the lead's group…
    assert order.index(("admitted", "p1")) < order.index(("finished", "p12"))  # …and not for p12
    assert admitted["p1"] == 1


def _steps(logged) -> int:
    """Decode steps the worker made so far (its test hook logs each)."""
    logged("worker.admitted")  # reads what the worker logged since
    return sum(e.get("event") == "worker.step" for e in logged.events)


def _admitted_and_finished(logged) -> list[tuple[str, str]]:
    return [(e["event"].removeprefix("worker."), e["photo"]) for e in logged.events
            if e.get("event") in ("worker.admitted", "worker.finished")]


def test_a_worker_that_hangs_mid_batch_is_replaced_and_only_the_photo_that_hangs_alone_times_out(
        tiny_models, tmp_path, monkeypatch, fd2_log):
    """A hang with two photos in the worker cannot say which one hung: both come back as a crash,
    which the pipeline retries alone; alone, the innocent photo is labelled and the guilty one times out."""
    labeler, p, logged = _in_worker(tmp_path, tiny_models, monkeypatch, fd2_log,
                                    extra=f"[worker]\ntimeout_seconds = {2 * SLACK:g}\n", BBSD_TEST_HANG_ON="p1")
    outcomes: dict[tuple[int, int], object] = {}

    def hand_over(i: int, retry: bool = False) -> None:
        try:
            outcomes[i, retry] = labeler.infer(_photo(i), p, attempt=0, alone=retry, cancelled=lambda: False,
                                               photo=_named(i))
        except PhotoError as e:
            outcomes[i, retry] = e.code

    first = threading.Thread(target=hand_over, args=(0,))
    try:
        first.start()
        wait_until(lambda: "p0" in logged("worker.admitted"), 30, "p0 in the worker")
        hand_over(1)  # hangs the worker as it joins, while p0 is generating
        first.join(30 * SLACK)
        hand_over(0, retry=True)  # the pipeline's retries, each alone in a new worker
        hand_over(1, retry=True)
        hand_over(2)
    finally:
        labeler.close()
    assert outcomes[0, False] == outcomes[1, False] == "engine_crash"
    assert outcomes[0, True].text.startswith("{") and outcomes[1, True] == "engine_timeout"
    assert outcomes[2, False].text.startswith("{")


def test_a_poison_photo_in_a_batch_is_quarantined_alone_and_its_neighbours_labelled(tmp_path, tiny_models,
                                                                                    bbsd_run):
    """A crash costs every photo of the batch one try; the retry goes alone, so only the photo
    that kills the worker twice is quarantined, and sampled as before, so a neighbour gets the
    labels it gets when nothing crashes."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = write_config(tmp_path, [inbox], tiny_models)
    # All there before the start, so the queue holds them at once. The poison photo is the fifth
    # newest: it is in a batch whether it leads (the 4 newer ones join it) or waits for the lead.
    poison = make_photo(inbox / "poison.jpg", color=(1, 1, 1))
    photos = [make_photo(inbox / f"ok_{i}.jpg", color=(i * 30, 20, 20)) for i in range(9)]
    for i, p in enumerate([*photos[:5], poison, *photos[5:]]):
        os.utime(p, (1_700_000_000 + i, 1_700_000_000 + i))
    # The worker aborts on the poison photo's first try only once 3 others are in it too: which
    # neighbours are there depends on how fast the daemon decodes them, that there are some must not.
    run = bbsd_run(cfg, "run", env={"BBSD_ENGINE_PARALLEL": "8", **FAULTS,
                                    "BBSD_TEST_ABORT_ON": "poison", "BBSD_TEST_ABORT_BESIDE": "3"})
    everything = [*photos, poison]
    wait_until(lambda: all(sidecar.path_for(p).exists() for p in everything), 120, "all sidecars")
    assert json.loads(sidecar.path_for(poison).read_text())["error"]["code"] == "engine_crash"
    for p in photos:
        assert json.loads(sidecar.path_for(p).read_text())["status"] == "labeled"
    assert len(run.events("worker.lost")) == 2  # the batch's crash, then the poison photo's retry alone
    retried = {os.path.basename(e["path"]) for e in run.events("photo.retry")}
    assert "poison.jpg" in retried and len(retried) >= 4  # its neighbours in that batch were retried (and labelled)
    assert run.stop() == 0
    # The same neighbours labelled by `bbsd label`, where nothing crashes: the same labels.
    again = tmp_path / "again"
    again.mkdir()
    for name in retried - {"poison.jpg"}:
        shutil.copy(inbox / name, again / name)
    r = run_bbsd("label", str(again), "--config", str(cfg), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for name in retried - {"poison.jpg"}:
        assert sidecar.read(inbox / name)["labels"] == sidecar.read(again / name)["labels"], name


def test_a_request_the_worker_cannot_read_ends_the_worker_and_the_daemon_sees_it(tiny_models, tmp_path):
    """A request the worker's reader cannot turn into a photo (here: pixels that do not match the size it
    names) ends the worker, so the daemon reads EOF (a crash: the photo is retried) instead of writing
    the next photos into a pipe that nobody reads any more."""
    import dataclasses
    import time

    from bbsd.contain import ipc
    from bbsd.engine.supervisor import _Worker, worker_argv

    settings = config.load(write_config(tmp_path, [tmp_path], tiny_models))
    worker = _Worker(worker_argv(str(settings.source)), 60 * SLACK)
    try:
        request = {"type": "infer", "id": 1, "prompt": dataclasses.asdict(prompt.build(settings.catalog)),
                   "photo": {"name": "p0", "width": 64, "height": 48, "attempt": 0}}
        ipc.send(worker.proc.stdin.fileno(), request, b"\0" * 10)  # 10 bytes, not 64 × 48 × 3
        with pytest.raises(EOFError):
            ipc.receive(worker.proc.stdout.fileno(), time.monotonic() + 30 * SLACK)
        assert worker.proc.wait(timeout=30 * SLACK) == 0
    finally:
        worker.kill()
