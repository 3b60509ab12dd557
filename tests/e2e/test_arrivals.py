"""Photos as they really arrive: formats, pairs, replacements, network shares, bursts, hostile files.

Real files on a real filesystem with the real watcher. Daemon tests use the real engine
unless the point is volume (the 1000-photo burst uses the fake backend in its worker).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import namedtuple
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from bbsd.arrive import watcher
from bbsd.photo import decode as imaging
from bbsd.sidecars import record as sidecar
from tests.conftest import (
    REPO,
    SLACK,
    BbsdRun,
    bbsd_cmd,
    events,
    jpeg_bytes,
    make_photo,
    sha256_of,
    wait_until,
    write_config,
    write_dng,
)
from tests.fakes import FAULTS

pytestmark = pytest.mark.slow


# --- real files of every format ---------------------------------------------------------------

def make_dng(path: Path, size=(256, 192), orientation: int = 1) -> Path:
    """A real DNG (LibRaw opens it) with Bayer data and an orientation tag, written by pidng."""
    w, h = size
    raw = np.random.default_rng(1).integers(0, 4095, (h, w)).astype(np.uint16)
    identity = [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]]
    return write_dng(path, raw, orientation, identity)


@pytest.mark.parametrize("orientation, size", [(1, (400, 200)), (2, (400, 200)), (3, (400, 200)),
                                               (4, (400, 200)), (5, (200, 400)), (6, (200, 400)),
                                               (7, (200, 400)), (8, (200, 400))])
def test_every_exif_orientation_is_applied(tmp_path, orientation, size):
    d = imaging.decode(make_photo(tmp_path / "o.jpg", size=(400, 200), orientation=orientation), 1000)
    assert (d.width, d.height) == size and d.image.size == size
    # make_photo paints the stored image's top-left white: after the transpose it must be where the tag says
    corner = {1: "tl", 2: "tr", 3: "br", 4: "bl", 5: "tl", 6: "tr", 7: "br", 8: "bl"}[orientation]
    assert _white_corners(d.image) == [corner]


def _white_corners(img) -> list[str]:
    w, h = img.size
    points = {"tl": (w // 8, h // 8), "tr": (w - w // 8, h // 8), "bl": (w // 8, h - h // 8),
              "br": (w - w // 8, h - h // 8)}
    return [k for k, xy in points.items() if img.getpixel(xy)[1] > 200]


def test_heic_from_a_phone_is_decoded(tmp_path):
    path = tmp_path / "IMG_0001.HEIC"
    Image.new("RGB", (600, 400), (200, 30, 30)).save(path, format="HEIF")
    d = imaging.decode(path, 256)
    assert (d.width, d.height) == (600, 400) and d.image.size == (256, 171) and d.image.mode == "RGB"


def test_webp_and_16_bit_tiff(tmp_path):
    Image.new("RGB", (300, 100), (1, 2, 3)).save(tmp_path / "a.webp")
    Image.new("I;16", (300, 100), 40000).save(tmp_path / "b.tif")
    assert imaging.decode(tmp_path / "a.webp", 150).image.size == (150, 50)
    assert imaging.decode(tmp_path / "b.tif", 150).image.getpixel((0, 0))[0] > 100  # scaled, not clipped


def test_raw_dng_is_decoded_with_its_orientation(tmp_path):
    d = imaging.decode(make_dng(tmp_path / "IMG_0001.DNG", orientation=6), 128)
    assert (d.width, d.height) == (192, 256) and d.image.size == (96, 128) and d.image.mode == "RGB"


def test_truncated_raw_is_incomplete(tmp_path):
    from bbsd.errors import PhotoError

    full = make_dng(tmp_path / "full.dng").read_bytes()
    (tmp_path / "cut.dng").write_bytes(full[: len(full) // 3])
    with pytest.raises(PhotoError) as e:
        imaging.decode(tmp_path / "cut.dng", 128)
    assert e.value.code in ("truncated", "not_an_image")


def test_raw_preview_orientation_helper():
    from bbsd.photo.raw import orient

    img = Image.new("RGB", (40, 20))
    assert orient(img, 6).size == (20, 40) and orient(img, 5).size == (20, 40) and orient(img, 3).size == (40, 20)


def test_decompression_bomb_is_an_error_record_not_a_crash(tmp_path):
    from bbsd.errors import PhotoError

    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)  # 400 MP: past the limit, a few KB on disk
    with pytest.raises(PhotoError) as e:
        imaging.decode(path, 256)
    assert e.value.code == "too_large"


# --- network shares ------------------------------------------------------------------------------

Part = namedtuple("Part", "device mountpoint fstype opts")


@pytest.mark.parametrize("fstype, expected", [("ext4", "native"), ("nfs4", "polling"), ("cifs", "polling"),
                                              ("fuse.sshfs", "polling"), ("smb3", "polling")])
def test_network_filesystems_are_polled(fstype, expected):
    parts = [Part("/dev/vda", "/", "ext4", ""), Part("srv:/x", "/srv/photos", fstype, "")]
    assert watcher.filesystem_type(Path("/srv/photos/export"), parts) == fstype
    assert watcher.choose_observer("auto", fstype) == expected
    assert watcher.choose_observer("native", fstype) == "native"


# --- the daemon ------------------------------------------------------------------------------------


@pytest.fixture
def daemon(tmp_path, tiny_models, bbsd_run):
    def start(extra: str = "", env: dict | None = None, backend: str = "llama",
              name: str = "run") -> tuple[Path, BbsdRun]:
        inbox = tmp_path / "inbox"
        inbox.mkdir(exist_ok=True)
        cfg = write_config(tmp_path, [inbox], tiny_models if backend == "llama" else None, extra=extra,
                           backend=backend)
        r = bbsd_run(cfg, name, env)
        r.wait_for("daemon.ready")
        return inbox, r

    return start


def _doc(photo: Path) -> dict:
    return json.loads(sidecar.path_for(photo).read_text())


def test_raw_and_jpeg_of_one_shot_are_labelled_once(daemon, tmp_path):
    # A RAW waits for its JPEG at most incomplete_timeout_seconds (3 s in the tests' config): on a
    # loaded machine writing the pair can take longer than that, so give it the default minute.
    inbox, run = daemon(env={"BBSD_WATCH_INCOMPLETE_TIMEOUT_SECONDS": "60"})
    stage = tmp_path / "stage"
    stage.mkdir()
    raw = make_dng(stage / "IMG_0001.DNG")
    jpg = make_photo(stage / "IMG_0001.JPG")
    for f in (raw, jpg):  # the camera writes both within a second
        f.rename(inbox / f.name)
    raw, jpg = inbox / raw.name, inbox / jpg.name
    wait_until(lambda: sidecar.path_for(raw).exists() and sidecar.path_for(jpg).exists(), 60, "both sidecars")
    r, j = _doc(raw), _doc(jpg)
    assert r["labels"] == j["labels"] and r["pair"] == {"source": "IMG_0001.JPG", "sha256": j["photo"]["sha256"]}
    assert r["photo"]["sha256"] == sha256_of(raw) and r["photo"]["width"] == 256
    assert j["tokens"]["output"] > 0 and r["tokens"]["output"] == 0  # one inference for the shot
    assert (inbox / "IMG_0001.DNG.xmp").exists() and (inbox / "IMG_0001.JPG.xmp").exists()
    assert run.stop() == 0


def test_a_raw_alone_is_labelled_from_its_own_pixels(daemon, tmp_path):
    inbox, run = daemon()
    raw = make_dng(tmp_path / "IMG_0002.DNG", orientation=6)
    raw.rename(inbox / raw.name)
    raw = inbox / raw.name
    wait_until(lambda: sidecar.path_for(raw).exists(), 60, "the RAW's sidecar")
    doc = _doc(raw)
    assert doc["status"] == "labeled" and "pair" not in doc and doc["tokens"]["output"] > 0
    assert (doc["photo"]["width"], doc["photo"]["height"]) == (192, 256)
    assert run.stop() == 0


def test_extensions_outside_the_allow_list_are_ignored_not_errors(daemon):
    inbox, run = daemon(env={"BBSD_WATCH_EXTENSIONS": "jpg"})  # the allow-list is configurable
    Image.new("RGB", (50, 50)).save(inbox / "clip.gif")
    Image.new("RGB", (50, 50)).save(inbox / "scan.bmp")
    Image.new("RGB", (50, 50)).save(inbox / "logo.png")
    ok = make_photo(inbox / "ok.jpg")
    wait_until(lambda: sidecar.path_for(ok).exists(), 30, "the jpeg")
    for name in ("clip.gif", "scan.bmp", "logo.png"):
        assert not sidecar.path_for(inbox / name).exists()
    assert not run.events("photo.failed")
    assert run.stop() == 0


def test_replaced_while_queued_is_relabelled_and_deleted_while_queued_is_dropped(daemon):
    inbox, run = daemon(env={**FAULTS, "BBSD_TEST_SLOW_MS": "700"})
    photos = [make_photo(inbox / f"q{i}.jpg", color=(i * 60, 9, 9)) for i in range(4)]
    wait_until(lambda: run.events("photo.labeled"), 30, "the first photo")
    pending = [p for p in photos if not sidecar.path_for(p).exists()]
    replaced, deleted = pending[-1], pending[-2]
    new_content = jpeg_bytes(color=(1, 250, 1))
    tmp = inbox / ".swap.tmp"
    tmp.write_bytes(new_content)
    tmp.rename(replaced)  # replaced atomically while it waits in the queue
    deleted.unlink()
    wait_until(lambda: sidecar.path_for(replaced).exists() and
               _doc(replaced)["photo"]["sha256"] == sha256_of(replaced), 60, "the replacement's label")
    assert not sidecar.path_for(deleted).exists()
    assert not [e for e in run.events("photo.failed") if e["path"] == str(deleted)]
    assert run.stop() == 0


def test_polling_observer_sees_photos(daemon):
    inbox, run = daemon(env={"BBSD_WATCH_OBSERVER": "polling", "BBSD_WATCH_POLL_SECONDS": "0.5"})
    assert run.events("folder.watching")[0]["observer"] == "polling"
    photo = make_photo(inbox / "nfs.jpg")
    wait_until(lambda: sidecar.path_for(photo).exists(), 30, "a sidecar via polling")
    assert run.stop() == 0


def test_a_vanished_share_is_reported_and_reattached_without_losing_anything(daemon, tmp_path):
    inbox, run = daemon()
    first = make_photo(inbox / "before.jpg")
    wait_until(lambda: sidecar.path_for(first).exists(), 30, "the first sidecar")
    away = tmp_path / "unmounted"
    inbox.rename(away)  # the share goes away
    run.wait_for("folder.missing")
    make_photo(away / "during.jpg")  # written on the server meanwhile
    away.rename(inbox)  # and comes back
    run.wait_for("folder.back")
    later = make_photo(inbox / "after.jpg", color=(5, 5, 200))
    for p in (inbox / "before.jpg", inbox / "during.jpg", later):
        wait_until(lambda p=p: sidecar.path_for(p).exists(), 30, f"the sidecar of {p.name}")
    assert _doc(inbox / "before.jpg")["status"] == "labeled"  # nothing was taken as deleted
    assert run.stop() == 0


def test_burst_of_1000_photos_newest_first_with_bounded_memory(daemon, tmp_path, summary):
    inbox, run = daemon(backend="fake")
    stage = tmp_path / "stage"
    stage.mkdir()
    t0 = datetime(2026, 11, 24, 19, 0, 0)
    base = make_photo(stage / "base.jpg", size=(160, 120))
    for i in range(1000):  # capture times one second apart, file names in shuffled order
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9003] = (t0 + timedelta(seconds=i)).strftime("%Y:%m:%d %H:%M:%S")
        Image.open(base).save(stage / f"IMG_{(i * 7919) % 1000:04d}_{i}.jpg", exif=exif)
    rss_before = psutil.Process(run.proc.pid).memory_info().rss
    for f in sorted(stage.glob("IMG_*.jpg")):
        f.rename(inbox / f.name)
    photos = sorted(inbox.glob("IMG_*.jpg"))
    started = time.monotonic()
    labels = lambda n: len(run.events("photo.labeled")) >= n  # noqa: E731
    wait_until(lambda: labels(50), 60, "the first 50 labels", interval=0.2)
    # The deadline for the rest comes from the pace just measured (x SLACK): on a shared 2-core
    # machine a fixed one failed, and polling a growing log every 50 ms only slowed the daemon.
    wait_until(lambda: labels(1000), max(30.0, (time.monotonic() - started) * 1000 / 50), "1000 labels", interval=0.5)
    rss_after = psutil.Process(run.proc.pid).memory_info().rss
    labeled = run.events("photo.labeled")
    assert sorted(e["path"] for e in labeled) == sorted(str(p) for p in photos)
    order = [int(Path(e["path"]).stem.rsplit("_", 1)[1]) for e in labeled]  # capture index
    late_half_first = sum(1 for i in order[:500] if i >= 500)
    assert late_half_first >= 450  # the newest shots come back first
    depths = [e["queue_depth"] for e in labeled]
    assert max(depths) > 100 and depths[-1] == 0
    growth_mb = (rss_after - rss_before) / 2**20
    assert growth_mb < 80, f"daemon memory grew {growth_mb:.0f} MB over the burst"
    summary(f"burst: 1000 photos, newest-first ({late_half_first}/500 of the first labels were the newest half), "
            f"max queue depth {max(depths)}, daemon RSS growth {growth_mb:.1f} MB")
    assert run.stop() == 0


def test_shots_within_one_second_come_back_newest_first_by_their_fraction_of_a_second(daemon, tmp_path):
    """A camera at 10 frames a second: ten shots share each DateTimeOriginal second and differ only in
    SubSecTimeOriginal; copied from a card they share an mtime too. After the first photo (taken
    before the probes have read the capture times) they come back newest shot first."""
    inbox, run = daemon(backend="fake", extra="[fake]\ndelay_ms = 700\n")
    stage = tmp_path / "stage"
    stage.mkdir()
    base = make_photo(stage / "base.jpg", size=(160, 120))
    shots = 14
    for i in range(shots):
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9003] = f"2026:11:24 19:30:{5 + i // 10:02d}"
        exif.get_ifd(0x8769)[0x9291] = f"{i % 10}0"
        name = stage / f"IMG_{(i * 5) % shots:04d}_{i}.jpg"  # file names in another order than the shots
        Image.open(base).save(name, exif=exif)
        os.utime(name, (1_700_000_000, 1_700_000_000))
    for f in sorted(stage.glob("IMG_*.jpg")):
        f.rename(inbox / f.name)
    run.wait_for("photo.labeled", timeout=120, count=shots)
    order = [int(Path(e["path"]).stem.rsplit("_", 1)[1]) for e in run.events("photo.labeled")]
    assert order[1:] == sorted(order[1:], reverse=True), order
    assert run.stop() == 0


def test_hostile_and_odd_entries(daemon, tmp_path):
    inbox, run = daemon()
    outside = make_photo(tmp_path / "outside" / "secret.jpg")
    (inbox / "link_out.jpg").symlink_to(outside)
    inside = make_photo(inbox / "real.jpg")
    (inbox / "link_in.jpg").symlink_to(inside)
    os.mkfifo(inbox / "pipe.jpg")
    odd = [make_photo(inbox / "with space.jpg"), make_photo(inbox / "ünïcödé 写真.jpg"),
           make_photo(inbox / "new\nline.jpg")]
    deep = inbox
    for level in range(25):
        deep = deep / f"d{level}"
    odd.append(make_photo(deep / "deep.jpg"))
    for p in [inside, *odd]:
        wait_until(lambda p=p: sidecar.path_for(p).exists(), 60, f"the sidecar of {p.name!r}")
        assert _doc(p)["status"] == "labeled"
    for name in ("link_out.jpg", "link_in.jpg", "pipe.jpg"):
        assert not sidecar.path_for(inbox / name).exists()
    assert not sidecar.path_for(outside).exists()
    assert run.proc.poll() is None  # the FIFO did not block the daemon
    assert run.stop() == 0


def _reachable_by_all(path: Path) -> bool:
    import stat

    path = path.resolve()
    return all(p.stat().st_mode & stat.S_IXOTH for p in path.parents) and bool(path.stat().st_mode & stat.S_IROTH)


def _link_tree(src: Path, dst: Path, *skip: str) -> None:
    """Hard-link (or copy, across filesystems) a tree; folders readable by all."""
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", *skip), copy_function=link, symlinks=True)
    for folder, dirs, _ in os.walk(dst):
        for d in dirs:
            os.chmod(os.path.join(folder, d), 0o755)


def _world_readable_bbsd(dest: Path) -> tuple[list[str], dict[str, str]]:
    """This bbsd, its libraries and (if need be) its Python, linked under `dest`: the command and environment.

    The unprivileged user must read what it runs, and the checkout, the venv or the Python may
    live under a folder only their owner can enter (a clone in /root or in `mktemp -d`, a pyenv
    Python). The interpreter runs with -S (no site, no editable-install hook) and PYTHONPATH on
    the linked copies, the suite's own plugins (tests/fakes) among them.
    """
    import site

    tools = ("llama_cpp", "pip", "setuptools", "hypothesis", "_pytest", "pytest", "ruff")
    _link_tree(REPO / "bbsd", dest / "src" / "bbsd")
    _link_tree(REPO / "tests", dest / "src" / "tests", "golden")  # the suite's plugins (BBSD_PLUGINS) load from it
    _link_tree(Path(site.getsitepackages()[0]), dest / "site", *tools)
    python, env = Path(os.path.realpath(sys.executable)), {"PYTHONPATH": f"{dest / 'src'}:{dest / 'site'}"}
    if not _reachable_by_all(python) or not _reachable_by_all(Path(os.__file__)):
        prefix = Path(sys.base_prefix)
        _link_tree(prefix, dest / "python", "site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip")
        python = dest / "python" / python.relative_to(prefix)
        env["LD_LIBRARY_PATH"] = str(dest / "python" / "lib")  # before a RUNPATH into the unreachable prefix
    return [str(python), "-S", "-m", "bbsd"], env


def test_unreadable_photo_gets_a_clear_reason_and_labelling_goes_on():
    """Run as an unprivileged user (root reads every file): `setpriv` drops to nobody when we are root."""
    import tempfile

    as_user: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root without setpriv cannot see a permission error")
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    folder = Path(tempfile.mkdtemp(prefix="bbsd-perm-"))  # in /tmp: reachable whatever the checkout's parents
    try:
        folder.chmod(0o777)
        command, extra_env = _world_readable_bbsd(folder / "bbsd") if as_user else (bbsd_cmd(), {})
        inbox = folder / "in"
        inbox.mkdir()
        inbox.chmod(0o777)  # mkdir's mode is masked by the umask
        locked = make_photo(inbox / "locked.jpg")
        make_photo(inbox / "ok.jpg", color=(9, 200, 9))
        locked.chmod(0)
        cfg = write_config(folder, [inbox], backend="fake", extra="[worker]\nisolate = false\n")
        cfg.chmod(0o644)
        env = {**{k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}, **extra_env}
        r = subprocess.run([*as_user, *command, "label", str(inbox), "--config", str(cfg)],
                           capture_output=True, text=True, cwd=folder, env=env, timeout=120)
        assert r.returncode == 1, r.stderr
        assert "error    locked.jpg  unreadable" in r.stdout and "labeled  ok.jpg" in r.stdout
        failed = [e for e in events(r.stderr) if e.get("event") == "photo.failed"]
        assert failed[0]["code"] == "unreadable" and "permissions" in failed[0]["hint"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_folder_of_20000_files_starts_without_relabelling(tmp_path, tiny_models):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = write_config(tmp_path, [inbox], tiny_models)
    first = make_photo(inbox / "IMG_00000.jpg")
    r = subprocess.run(bbsd_cmd("label", str(first), "--config", str(cfg)), capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    data, doc = first.read_bytes(), sidecar.path_for(first).read_bytes()
    for i in range(1, 10000):  # 10,000 photos + 10,000 current sidecars
        (inbox / f"IMG_{i:05d}.jpg").write_bytes(data)
    for i in range(1, 10000):
        (inbox / f"IMG_{i:05d}.jpg.json").write_bytes(doc)
    t0 = time.monotonic()
    run = BbsdRun(cfg, tmp_path / "big.log")
    try:
        ready = run.wait_for("daemon.ready", timeout=120)[0]
        assert ready["queued"] == 0
    finally:
        assert run.stop() == 0
    assert time.monotonic() - t0 < 60 * SLACK  # liveness: the start-up scan must not hash or relabel
    assert not run.events("photo.labeled")


@pytest.mark.parametrize("how", ["moved", "linked"])
def test_a_burst_dropped_at_once_starts_with_its_newest_photo(daemon, tmp_path, how):
    """Moved in (settled at their first look) or hard-linked (settled after settle_seconds), the photos
    of a burst are queued together: the first one labelled is the newest, not whichever file's event
    came a few ms before the others (it then held the engine for a whole photo before the newest)."""
    inbox, run = daemon(backend="fake")
    stage = tmp_path / "stage"
    stage.mkdir()
    burst = []
    for i in range(40):
        p = make_photo(stage / f"IMG_{i:04d}.jpg", size=(64, 48), color=(i * 5, 0, 0))
        os.utime(p, (1_700_000_000 + i, 1_700_000_000 + i))
        burst.append(p)
    for p in burst:
        if how == "moved":
            p.rename(inbox / p.name)
        else:
            os.link(p, inbox / p.name)
    wait_until(lambda: len(run.events("photo.labeled")) == 40, 60, "40 labels")
    first = Path(run.events("photo.labeled")[0]["path"]).name
    assert first == "IMG_0039.jpg"
    assert run.stop() == 0
