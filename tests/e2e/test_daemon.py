"""`bbsd run` as a real subprocess on a real folder with the real watcher and the real engine."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bbsd.sidecars import record as sidecar
from tests.conftest import REPO, bbsd_cmd, jpeg_bytes, make_photo, wait_until, write_config
from tests.fakes import FAULTS

pytestmark = pytest.mark.slow
CATALOG_NAMES = {"Baba Yaga", "Koschei", "lantern"}


@pytest.fixture
def daemon_factory(bbsd_run):
    return bbsd_run


def write_slowly(path: Path, data: bytes, chunks: int, pause: float, before_last=None) -> None:
    """Write `data` in chunks with pauses, keeping the file open, like a slow network copy."""
    step = len(data) // chunks + 1
    with path.open("wb") as f:
        for i in range(0, len(data), step):
            if i + step >= len(data) and before_last:
                before_last()
            f.write(data[i:i + step])
            f.flush()
            time.sleep(pause)  # simulates the copy's pace; not used to synchronise with bbsd


def test_daemon_labels_each_photo_once_and_survives_bad_files(tmp_path, tiny_models, daemon_factory,
                                                              validate_sidecar):
    inbox = tmp_path / "inbox"
    (inbox / "day2").mkdir(parents=True)
    cfg = write_config(tmp_path, [inbox], tiny_models)
    d = daemon_factory(cfg)
    d.wait_for("daemon.ready")

    good = [make_photo(inbox / "IMG_0001.JPG", orientation=6), make_photo(inbox / "day2" / "IMG_0002.jpg"),
            make_photo(inbox / "IMG_0003.png", fmt="PNG", color=(20, 200, 20))]
    tmp_name = make_photo(inbox / "IMG_0004.jpg.part", color=(9, 9, 90))  # a copy under a temp name…
    tmp_name.rename(inbox / "IMG_0004.jpg")  # …renamed when complete
    good.append(inbox / "IMG_0004.jpg")
    (inbox / "notes.jpg").write_text("not a photo at all\n" * 50)
    (inbox / "empty.jpg").write_bytes(b"")
    (inbox / "cut.jpg").write_bytes(jpeg_bytes(size=(800, 600))[:2000])  # truncated, never completes
    (inbox / ".hidden.jpg").write_bytes(jpeg_bytes())
    (inbox / "readme.txt").write_text("ignored: not an allowed extension")

    slow = inbox / "IMG_0005.jpg"
    slow_data = jpeg_bytes(size=(1200, 900), color=(120, 60, 200))
    no_early_sidecar = []
    write_slowly(slow, slow_data, chunks=20, pause=0.6,  # 12 s, like a slow network copy
                 before_last=lambda: no_early_sidecar.append(not sidecar.path_for(slow).exists()))
    good.append(slow)
    bad = {"notes.jpg": "not_an_image", "empty.jpg": "empty_file", "cut.jpg": "truncated"}

    expected = good + [inbox / n for n in bad]
    wait_until(lambda: all(sidecar.path_for(p).exists() for p in expected), 90, "every sidecar")
    assert no_early_sidecar == [True], "the slow photo was labelled before its copy completed"

    for photo in good:
        doc = validate_sidecar(photo)
        assert doc["status"] == "labeled", doc
        assert set(doc["labels"]["characters"]) | set(doc["labels"]["props"]) <= CATALOG_NAMES
    assert validate_sidecar(slow)["photo"]["sha256"] == hashlib.sha256(slow_data).hexdigest()
    assert validate_sidecar(good[0])["photo"]["width"] == 240  # EXIF orientation 6 applied
    for name, code in bad.items():
        assert validate_sidecar(inbox / name)["error"]["code"] == code

    d.wait_for("photo.labeled", count=len(good))  # each event follows its sidecar's rename
    labeled = [e["path"] for e in d.events("photo.labeled")]
    assert sorted(labeled) == sorted(str(p) for p in good)  # exactly one event per photo
    for e in d.events("photo.labeled"):
        assert {"queue_wait_ms", "decode_ms", "inference_ms", "total_ms", "prompt_tokens",
                "output_tokens", "rss_mb", "vram_mb"} <= set(e)
    assert not sidecar.path_for(inbox / ".hidden.jpg").exists()
    all_files = sorted(p.name for p in inbox.rglob("*"))
    assert not [n for n in all_files if ".bbsd-tmp-" in n]
    assert d.stop() == 0
    assert d.events("daemon.stopped")
    raw = [line for line in d.log_path.read_text().splitlines() if line.strip()]
    assert all(line.startswith("{") for line in raw), "llama.cpp wrote raw lines to the log"


def test_restart_on_a_labelled_folder_writes_nothing(tmp_path, tiny_models, daemon_factory):
    inbox = tmp_path / "inbox"
    photos = [make_photo(inbox / f"IMG_{i}.jpg", color=(i * 40, 10, 10)) for i in range(3)]
    (inbox / "bad.jpg").write_text("junk" * 100)
    cfg = write_config(tmp_path, [inbox], tiny_models)
    first = daemon_factory(cfg, "first")
    wait_until(lambda: all(sidecar.path_for(p).exists() for p in [*photos, inbox / "bad.jpg"]), 60, "sidecars")
    assert first.stop() == 0

    before = {p: p.stat().st_mtime_ns for p in inbox.iterdir()}
    second = daemon_factory(cfg, "second")
    ready = second.wait_for("daemon.ready")[0]
    assert ready["queued"] == 0
    assert second.stop() == 0
    assert {p: p.stat().st_mtime_ns for p in inbox.iterdir()} == before
    assert not second.events("photo.labeled") and not second.events("photo.failed")


def test_sigterm_mid_photo_leaves_no_partial_sidecar(tmp_path, tiny_models, daemon_factory):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = write_config(tmp_path, [inbox], tiny_models)
    # Every photo takes 1.5 s in the engine, so the SIGTERM below surely lands while one is in hand.
    d = daemon_factory(cfg, env={**FAULTS, "BBSD_TEST_SLOW_MS": "1500"})
    d.wait_for("daemon.ready")
    for i in range(4):
        make_photo(inbox / f"burst_{i}.jpg", color=(i * 50, 90, 90))
    wait_until(lambda: d.events("photo.labeled"), 60, "the first label")
    first = d.events("photo.labeled")[0]["path"]
    wait_until(lambda: _in_hand(tmp_path / "state") not in (None, first), 30, "the next photo in hand")
    assert d.stop() == 0
    abandoned = [Path(e["path"]) for e in d.events("photo.abandoned")]
    assert len(abandoned) == 1 and not sidecar.path_for(abandoned[0]).exists()  # it really was mid-photo
    for sc in inbox.glob("*.json"):
        json.loads(sc.read_text())  # every sidecar present is whole
    assert not [p for p in inbox.iterdir() if ".bbsd-tmp-" in p.name]
    labeled = {Path(e["path"]).name for e in d.events("photo.labeled")}
    assert {p.name[:-5] for p in inbox.glob("*.json")} == labeled


def _in_hand(state: Path) -> str | None:
    """The photo in hand (these daemons run one worker thread)."""
    try:
        in_hand = json.loads((state / "in_hand.json").read_text()).get("in_hand")
    except (OSError, ValueError):
        return None
    return in_hand[0] if in_hand else None


def test_label_command_prints_a_line_per_photo_and_exit_code(tmp_path, tiny_models):
    from tests.conftest import run_bbsd

    inbox = tmp_path / "in"
    ok = make_photo(inbox / "ok.jpg")
    cfg = write_config(tmp_path, [inbox], tiny_models)
    r = run_bbsd("label", str(ok), "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("labeled  ok.jpg") and len(r.stdout.splitlines()) == 1
    (inbox / "bad.jpg").write_text("junk" * 100)
    r = run_bbsd("label", str(inbox), "--config", str(cfg))
    assert r.returncode == 1
    lines = sorted(r.stdout.splitlines())
    assert lines[0].startswith("error    bad.jpg  not_an_image") and lines[1].startswith("skipped  ok.jpg")
    assert "engine.loading" not in r.stderr  # a current sidecar and a non-image need no model


def test_label_loads_no_model_before_a_photo_needs_it_and_prints_the_hint(tmp_path):
    from tests.conftest import run_bbsd

    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "notes.jpg").write_text("meeting notes, not a photo")
    cfg = write_config(tmp_path, [inbox], (tmp_path / "absent.gguf", tmp_path / "absent-mmproj.gguf"))
    first = run_bbsd("label", str(inbox / "notes.jpg"), "--config", str(cfg))
    again = run_bbsd("label", str(inbox / "notes.jpg"), "--config", str(cfg))
    hint = json.loads(sidecar.path_for(inbox / "notes.jpg").read_text())["error"]["hint"]
    assert first.returncode == 1 and first.stdout.startswith("error    notes.jpg  not_an_image:"), first.stderr
    assert again.returncode == 0 and again.stdout.startswith("skipped  notes.jpg  not_an_image:"), again.stderr
    assert first.stdout.rstrip().endswith(f"— {hint}") and again.stdout.rstrip().endswith(f"— {hint}")
    assert "absent.gguf" not in first.stderr + again.stderr  # the (missing) model was never opened


def test_version_and_python_m(tmp_path):
    from bbsd import __version__
    from tests.conftest import run_bbsd

    r = run_bbsd("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"bbsd {__version__}"
    exe = shutil.which("bbsd", path=str(Path(os.sys.executable).parent))
    if exe:
        assert subprocess.run([exe, "--version"], capture_output=True, text=True).stdout == r.stdout


def test_help_shows_flags_without_a_value_type():
    from tests.conftest import run_bbsd

    root, label = run_bbsd("--help"), run_bbsd("label", "--help")
    assert root.returncode == 0 and label.returncode == 0
    assert "--version" in root.stdout and "--force" in label.stdout
    assert "<bool>" not in root.stdout + label.stdout and "<path>" in label.stdout  # values keep their type


def test_check_passes_on_a_good_setup(tmp_path, tiny_models):
    from tests.conftest import run_bbsd

    inbox = tmp_path / "in"
    inbox.mkdir()
    r = run_bbsd("check", "--config", str(write_config(tmp_path, [inbox], tiny_models)))
    assert r.returncode == 0, r.stderr
    assert "model tiny-text.gguf + tiny-mmproj.gguf: ok" in r.stdout and "test label: ok" in r.stdout
    # what the engine will use, defaults resolved (the config asks for 2 threads)
    assert "engine: 2 threads, context 4096 tokens per photo, batch 2048" in r.stdout
    assert "flash attention off for the text model and where the device supports it for the vision encoder " \
           "(auto)" in r.stdout  # a CPU: measured faster without it there
    assert "one photo at a time (parallel 0: the default for this device)" in r.stdout
    assert r.stderr == ""  # no log lines (JSON in a pipe) in the middle of the report


def test_check_labels_a_test_image_with_a_catalog_of_names_people_type(tmp_path, tiny_models):
    from tests.conftest import CATALOG, run_bbsd

    inbox = tmp_path / "in"
    inbox.mkdir()
    cfg = write_config(tmp_path, [inbox], tiny_models)
    names = '[[characters]]\nname = "Mr. \\"Moon\\""\n[[characters]]\nname = "Баба Яга"\n'
    cfg.write_text(cfg.read_text(encoding="utf-8").replace(CATALOG, names), encoding="utf-8")
    r = run_bbsd("check", "--config", str(cfg))
    assert r.returncode == 0 and "(2 characters, 0 props)" in r.stdout and "test label: ok" in r.stdout, r.stderr
    cfg.write_text(cfg.read_text(encoding="utf-8") + '[[characters]]\nname = "Fox|Wolf"\n', encoding="utf-8")
    r = run_bbsd("check", "--config", str(cfg))
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert "[characters[2].name] 'Fox|Wolf' contains '|'" in r.stderr


def test_check_fails_when_the_model_cannot_label(tmp_path, tiny_models):
    """A model that loads but dies on an image fails `bbsd check`, not the service."""
    from tests.conftest import run_bbsd

    inbox = tmp_path / "in"
    inbox.mkdir()
    env = {**FAULTS, "BBSD_TEST_ABORT_ON": "bbsd-check-probe"}
    r = run_bbsd("check", "--config", str(write_config(tmp_path, [inbox], tiny_models)), env=env)
    assert r.returncode == 2, r.stdout
    assert "bbsd: error: the model could not label a test image (engine_crash:" in r.stderr


def test_terminal_gets_console_lines_not_json(tmp_path, tiny_models):
    """On a terminal the log is for people; the same events as JSON lines go to files and journald."""
    import pty

    inbox = tmp_path / "in"
    inbox.mkdir()
    cfg = write_config(tmp_path, [inbox], tiny_models)
    cfg.write_text(cfg.read_text().replace('format = "json"', 'format = "auto"'))
    pid, fd = pty.fork()
    if pid == 0:  # child: stdout and stderr are the pty
        os.environ.pop("PYTEST_CURRENT_TEST", None)
        os.environ["BBSD_LOG_LEVEL"] = "info"  # `bbsd check` shows only warnings by default
        os.chdir(REPO)
        os.execv(bbsd_cmd()[0], bbsd_cmd("check", "--config", str(cfg)))
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "engine.loaded" in text and '"event"' not in text


def read_pty(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run a command with stdout and stderr on a pseudo-terminal; its exit code and everything it showed."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execve(argv[0], argv, env)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_label_on_a_terminal_shows_a_bar_and_log_lines_without_markup(tmp_path, tiny_models):
    inbox = tmp_path / "in"
    for i in range(3):
        make_photo(inbox / f"p{i}.jpg", color=(i * 60, 80, 80))
    (inbox / "notes.jpg").write_text("not a photo")  # a warning log line while the bar is up
    cfg = write_config(tmp_path, [inbox], tiny_models)
    cfg.write_text(cfg.read_text().replace('format = "json"', 'format = "auto"'))
    env = {**{k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}, "COLUMNS": "120"}
    code, text = read_pty(bbsd_cmd("label", str(inbox), "--config", str(cfg)), env)
    assert code == 1, text
    assert "labelling" in text and "/4" in text and "[progress." not in text
    assert "photo.failed" in text and text.count("labeled  p") == 3 and '"event"' not in text


def test_run_by_hand_shows_the_startup_backlog_as_a_progress_bar(tmp_path, tiny_models):
    """On a terminal the start-up backlog gets a bar with ETA; log lines still print (above it)."""
    import contextlib
    import pty
    import select
    import signal

    inbox = tmp_path / "in"
    photos = [make_photo(inbox / f"old_{i}.jpg", color=(i * 40, 80, 80)) for i in range(5)]
    cfg = write_config(tmp_path, [inbox], tiny_models)
    cfg.write_text(cfg.read_text().replace('format = "json"', 'format = "auto"'))
    env = {**{k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}, **FAULTS,
           "BBSD_TEST_SLOW_MS": "300", "COLUMNS": "120"}
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execve(bbsd_cmd()[0], bbsd_cmd("run", "--config", str(cfg)), env)
    out = b""

    def read_some() -> bool:
        nonlocal out
        if select.select([fd], [], [], 0.1)[0]:
            with contextlib.suppress(OSError):  # EIO once the child is gone
                out += os.read(fd, 65536)
        return all(sidecar.path_for(p).exists() for p in photos)

    wait_until(read_some, 60, "the backlog to be labelled")
    os.kill(pid, signal.SIGTERM)
    status: dict[str, int] = {}

    def exited() -> bool:
        read_some()
        done, code = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            status["code"] = os.waitstatus_to_exitcode(code)
        return done == pid

    wait_until(exited, 30, "a clean exit")
    assert status["code"] == 0
    text = out.decode(errors="replace")
    assert "start-up backlog" in text and "/5" in text  # the bar, with its count
    assert "[progress." not in text  # the bar's markup is rendered, never printed
    assert text.count("photo.labeled") == 5 and '"event"' not in text  # console lines, not JSON
