"""Faults and provenance through a running `bbsd run` (issue 33): the service never ends for a child
that dies or cannot start, children start from the configuration the daemon validated, a sidecar
names the model that labelled (file digests included), a catalog that cannot fit the context stops
the start with one line, and an error that came from a setting is redone once the setting changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
from pathlib import Path

import psutil
import pytest

from bbsd import config
from bbsd.engine import prompt
from bbsd.engine.labeler import ModelInfo
from bbsd.engine.prompt import build
from bbsd.models import tiny as tiny_model
from bbsd.sidecars import record as sidecar
from tests.conftest import SLACK, make_photo, run_bbsd, sha256_of, wait_until, write_config

pytestmark = pytest.mark.slow


def _doc(photo: Path) -> dict:
    return json.loads(sidecar.path_for(photo).read_text())


def _labeled(photo: Path) -> bool:
    return sidecar.path_for(photo).exists() and _doc(photo)["status"] == "labeled"


def _children(pid: int, command: str) -> list[psutil.Process]:
    """The daemon's children started as `bbsd <command>` (`_decoder`, `_worker`)."""
    out = []
    for proc in psutil.Process(pid).children():
        try:
            if command in proc.cmdline():
                out.append(proc)
        except psutil.Error:  # gone meanwhile
            continue
    return out


@contextlib.contextmanager
def _kill_storm(run, role: str, times: int):
    """SIGKILL each `role` child of the daemon the moment it appears, `times` in all, while the body
    runs and until they are all killed (or the daemon ended)."""
    killed: set[int] = set()
    done = threading.Event()

    def killer() -> None:
        while len(killed) < times and not done.is_set() and run.proc.poll() is None:
            for proc in _children(run.proc.pid, role):
                if proc.pid not in killed and len(killed) < times:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.add(proc.pid)
            done.wait(0.005)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        yield
        wait_until(lambda: len(killed) == times or run.proc.poll() is not None, 60, f"{times} {role} killed")
    finally:
        done.set()
        thread.join()


def test_decoders_killed_five_times_in_a_row_never_end_the_service(tmp_path, tiny_models, bbsd_run):
    """Every decoder process is killed the moment it appears, five times, most of them while starting
    (before: `StartError` on EOF became `DecoderError` and the daemon exited 2, "reinstall bbsd")."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    run = bbsd_run(write_config(tmp_path, [inbox], tiny_models))
    run.wait_for("daemon.ready")
    with _kill_storm(run, "_decoder", 5):
        first = make_photo(inbox / "during.jpg")
    assert run.proc.poll() is None, run.log_path.read_text()[-3000:]
    wait_until(lambda: sidecar.path_for(first).exists(), 90, "the photo of the kills")
    after = make_photo(inbox / "after.jpg", color=(20, 120, 200))
    wait_until(lambda: _labeled(after), 60, "the next photo labelled")
    assert run.events("decoder.start_failed")  # killed while starting: what ended the service before
    assert run.proc.poll() is None and run.stop() == 0


def test_an_engine_worker_killed_while_restarting_is_started_again(tmp_path, tiny_models, bbsd_run):
    """The worker is killed, and its replacements too while they load the model: each restart is
    tried again with backoff (before: `ModelError`, and the daemon exited 2)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    run = bbsd_run(write_config(tmp_path, [inbox], tiny_models))
    run.wait_for("daemon.ready")
    with _kill_storm(run, "_worker", 3):
        photo = make_photo(inbox / "during.jpg")
    # The photo of the kills is labelled, or quarantined if a kill hit it twice: either way one record
    wait_until(lambda: sidecar.path_for(photo).exists() or run.proc.poll() is not None, 90, "the photo's record")
    assert run.proc.poll() is None, run.log_path.read_text()[-3000:]
    after = make_photo(inbox / "after.jpg", color=(20, 120, 200))
    wait_until(lambda: _labeled(after), 60, "the next photo labelled")
    assert run.events("worker.start_failed") and run.stop() == 0


def test_a_config_broken_on_disk_does_not_stop_restarted_children(tmp_path, tiny_models, bbsd_run):
    """The running configuration is kept after a SIGHUP that cannot read the file (as documented); a
    worker and decoders started after that get the settings the daemon validated, not the file."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = write_config(tmp_path, [inbox], tiny_models)
    run = bbsd_run(cfg)
    worker = run.wait_for("worker.started")[0]["pid"]
    run.wait_for("daemon.ready")
    cfg.write_text(cfg.read_text() + "\n[engine]\nthreads = 'many'\n[[[ not toml\n")
    run.proc.send_signal(signal.SIGHUP)
    run.wait_for("config.reload_failed")
    for proc in [psutil.Process(worker), *_children(run.proc.pid, "_decoder")]:
        proc.kill()
    photo = make_photo(inbox / "after-break.jpg")
    wait_until(lambda: _labeled(photo) or run.proc.poll() is not None, 90, "the photo labelled")
    assert run.proc.poll() is None, run.log_path.read_text()[-3000:]
    assert _labeled(photo) and len(run.events("worker.started")) == 2
    assert run.stop() == 0


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_config_that_is_not_a_file_at_sighup_blocks_nothing_and_fills_no_memory(tmp_path, tiny_models, bbsd_run,
                                                                                  kind):
    """The config path replaced by a FIFO (a read would block the main loop for good) or a link to
    /dev/zero (a read would fill the memory) and SIGHUP: one config.reload_failed, the running
    configuration kept, the next photo labelled, SIGTERM obeyed at once."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = write_config(tmp_path, [inbox], tiny_models)
    run = bbsd_run(cfg)
    run.wait_for("daemon.ready")
    cfg.rename(tmp_path / "config.kept")
    if kind == "fifo":
        os.mkfifo(cfg)
    else:
        cfg.symlink_to("/dev/zero")
    run.proc.send_signal(signal.SIGHUP)
    [failed] = run.wait_for("config.reload_failed")
    assert ("FIFO" if kind == "fifo" else "device") in failed["message"]
    photo = make_photo(inbox / "after.jpg")
    wait_until(lambda: _labeled(photo) or run.proc.poll() is not None, 90, "the photo labelled")
    assert _labeled(photo)
    assert psutil.Process(run.proc.pid).memory_info().rss < 600 * 2**20
    assert run.stop(timeout=8) == 0


def _own_models(tmp_path: Path, tiny_models) -> tuple[Path, Path]:
    folder = tmp_path / "models"
    folder.mkdir()
    return Path(shutil.copy(tiny_models[0], folder)), Path(shutil.copy(tiny_models[1], folder))


def test_another_model_under_the_same_file_name_relabels_and_is_named_in_the_sidecar(tmp_path, tiny_models,
                                                                                     bbsd_run):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    text, mmproj = _own_models(tmp_path, tiny_models)
    cfg = write_config(tmp_path, [inbox], (text, mmproj))
    photo = make_photo(inbox / "a.jpg")
    first = bbsd_run(cfg, "first")
    wait_until(lambda: _labeled(photo), 60, "labelled by the first model")
    before = _doc(photo)["model"]
    assert before["files"]["file"] == {"size": text.stat().st_size, "sha256": sha256_of(text)}
    assert first.stop() == 0

    tiny_model.write_text_model(text, tiny_model.TinySpec(seed=1))  # a fine-tune: same name, other weights
    second = bbsd_run(cfg, "second")
    assert second.wait_for("daemon.ready")[0]["queued"] == 1
    wait_until(lambda: _doc(photo)["model"] != before, 60, "relabelled by the second model")
    after = _doc(photo)["model"]
    assert after["file"] == before["file"] and after["files"]["file"]["sha256"] == sha256_of(text)
    assert after["files"]["file"]["sha256"] != before["files"]["file"]["sha256"]
    assert second.stop() == 0


def test_a_model_path_edited_while_running_is_not_what_a_restarted_worker_loads(tmp_path, tiny_models, bbsd_run):
    """`[model] path` edited and SIGHUP (a restart is needed, as documented), then the worker dies: the
    new worker loads the model the daemon started with, and the sidecar names that model."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    text, mmproj = _own_models(tmp_path, tiny_models)
    other = tiny_model.write_text_model(tmp_path / "models" / "other.gguf", tiny_model.TinySpec(seed=2))
    cfg = write_config(tmp_path, [inbox], (text, mmproj))
    run = bbsd_run(cfg)
    worker = run.wait_for("worker.started")[0]["pid"]
    run.wait_for("daemon.ready")
    cfg.write_text(cfg.read_text().replace(str(text), str(other)))
    run.proc.send_signal(signal.SIGHUP)
    run.wait_for("config.restart_needed")
    os.kill(worker, signal.SIGKILL)
    photo = make_photo(inbox / "b.jpg")
    wait_until(lambda: _labeled(photo), 60, "labelled after the worker restart")
    restarted = run.wait_for("worker.started", count=2)[1]
    assert restarted["model"] == text.name and restarted["sha256"] == sha256_of(text)
    assert _doc(photo)["model"]["files"]["file"]["sha256"] == sha256_of(text)
    assert run.stop() == 0


def _big_catalog(n: int) -> str:
    return "".join(f'\n[[characters]]\nname = "Puppet {i:04d}"\ndescription = "a wooden marionette with a painted '
                   f'face, number {i}, red coat and blue hat"\n' for i in range(n))


@pytest.mark.parametrize("isolate", ["true", "false"])
def test_a_catalog_that_cannot_fit_the_context_fails_check_and_run_with_one_line(tmp_path, tiny_models, isolate):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = write_config(tmp_path, [inbox], tiny_models, extra=f"[worker]\nisolate = {isolate}\n{_big_catalog(1000)}")
    for command in ("check", "run"):
        done = run_bbsd(command, "--config", str(cfg), timeout=120)
        errors = [line for line in done.stderr.splitlines() if line.startswith("bbsd: error")]
        assert done.returncode == 2, done.stderr[-2000:]
        assert len(errors) == 1 and "context_size" in errors[0] and "catalog" in errors[0], errors
        assert "daemon.ready" not in done.stderr


def test_an_error_from_a_limit_is_redone_once_the_limit_changed_but_labels_are_not(tmp_path, tiny_models):
    """The unit of the rule: an error sidecar records the limits it was made under (context size,
    reply bound, image size); raising [engine] context_size as its hint says makes it stale."""
    cfg = config.load(write_config(tmp_path, [tmp_path], tiny_models))
    prompt = build(cfg.catalog)
    files = (("file", 10, "a" * 64), ("mmproj", 5, "b" * 64))
    small = ModelInfo("llama", "m.gguf", "p.gguf", files=files, limits=(("context_size", 4096),))
    large = ModelInfo("llama", "m.gguf", "p.gguf", files=files, limits=(("context_size", 8192),))
    record = sidecar.Record(photo=tmp_path / "x.jpg", sha256="c" * 64, width=1, height=1, labels=None,
                            timing_ms={}, tokens={}, memory_mb={},
                            error={"code": "context_overflow", "message": "m", "hint": "h"})
    error = sidecar.render(record, small, prompt)
    assert sidecar.is_current(error, small, prompt, sha256="c" * 64)
    assert not sidecar.is_current(error, large, prompt, sha256="c" * 64)
    labeled = {**error, "status": "labeled"}
    assert sidecar.is_current(labeled, large, prompt, sha256="c" * 64)
    other = ModelInfo("llama", "m.gguf", "p.gguf", files=(("file", 10, "d" * 64), files[1]), limits=small.limits)
    assert not sidecar.is_current(labeled, other, prompt, sha256="c" * 64)  # same name, other weights


def test_error_sidecars_from_a_small_context_are_relabelled_after_raising_it(tmp_path, tiny_models, bbsd_run):
    """The issue's sequence: photos got `context_overflow` error sidecars; [engine] context_size is raised
    as their hint says and the daemon restarted (an [engine] change needs it): the photos are labelled."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    photos = [make_photo(inbox / f"c{i}.jpg", color=(9, 60 * i, 9)) for i in range(2)]
    cfg = write_config(tmp_path, [inbox], tiny_models)
    cfg.write_text(cfg.read_text().replace("image_max_side = 256", "image_max_side = 256\ncontext_size = 512"))
    done = run_bbsd("label", "--config", str(cfg), *map(str, photos))
    assert done.returncode == 1 and all(_doc(p)["error"]["code"] == "context_overflow" for p in photos), done.stdout
    cfg.write_text(cfg.read_text().replace("context_size = 512", "context_size = 4096"))
    run = bbsd_run(cfg)
    assert run.wait_for("daemon.ready")[0]["queued"] == 2
    wait_until(lambda: all(_labeled(p) for p in photos), 60, "labelled after raising the context")
    assert run.stop() == 0


def test_model_digests_are_hashed_once_per_file_version_and_a_same_size_copy_is_noticed(tmp_path, monkeypatch):
    """A restart does not hash gigabytes again; a copy of the same size with its old mtime restored
    (`cp --preserve=timestamps`) is hashed again all the same (its ctime changed)."""
    from bbsd import fingerprint

    model = tmp_path / "m.gguf"
    model.write_bytes(b"a" * 4096)
    hashed: list[Path] = []
    real = fingerprint.file_sha256
    monkeypatch.setattr(fingerprint, "file_sha256", lambda p: hashed.append(p) or real(p))
    state = tmp_path / "state"
    first = fingerprint.files({"file": model, "lora": None}, state)
    assert first == (("file", 4096, sha256_of(model)),) and fingerprint.files({"file": model}, state) == first
    assert len(hashed) == 1 and (state / fingerprint.CACHE).exists()
    st = model.stat()
    model.write_bytes(b"b" * 4096)
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = fingerprint.files({"file": model}, state)
    assert len(hashed) == 2 and second[0][2] == sha256_of(model) != first[0][2]


def test_a_decoder_that_cannot_start_at_all_ends_the_start_with_the_reinstall_line(tmp_path):
    """A broken installation (the decoder's executable gone) is said as such — not as a bug of the
    main loop — and ends the start, where a decoder that ran before is restarted with backoff."""
    from bbsd.photo.decoder import DecoderError
    from bbsd.pipeline import Pipeline
    from bbsd.service.daemon import Daemon
    from tests.fakes.engine import FakeLabeler

    inbox = tmp_path / "in"
    inbox.mkdir()
    settings = config.load(write_config(tmp_path, [inbox], backend="fake", extra="[worker]\nisolate = false\n"),
                           environ={})
    pipeline = Pipeline(FakeLabeler(), settings, prompt.build(settings.catalog))
    daemon = Daemon(settings, pipeline)
    daemon._prober._argv = [str(tmp_path / "gone" / "bbsd"), "_decoder"]  # the installation lost its binary
    failed: list[BaseException] = []
    thread = threading.Thread(target=lambda: _run_catching(daemon, failed), daemon=True)
    thread.start()
    thread.join(60 * SLACK)
    pipeline.close()
    assert not thread.is_alive()
    assert len(failed) == 1 and isinstance(failed[0], DecoderError), failed
    assert "reinstall" in failed[0].hint and "bug" not in failed[0].one_line()


def _run_catching(daemon, failed: list) -> None:
    try:
        daemon.run()
    except BaseException as e:  # noqa: BLE001 - the test inspects what run() raised
        failed.append(e)
