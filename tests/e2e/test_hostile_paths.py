"""Hostile paths through a running `bbsd run` (issue 33): FIFOs, links and devices where photos or
sidecars belong, symlinked folders leading out of the watch folder, a photo deleted mid-label, an
unreadable sidecar, a name that is not UTF-8. Each ends with the daemon up and the next photo labelled,
nothing outside the watch folder read or written, and one record for the photo concerned."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import psutil
import pytest

from bbsd import safefs
from bbsd.photo import worker
from bbsd.sidecars import record as sidecar
from tests.conftest import make_photo, wait_until, write_config
from tests.fakes import FAULTS

pytestmark = pytest.mark.slow


@pytest.fixture
def start(tmp_path, tiny_models, bbsd_run):
    """Start `bbsd run` on tmp_path/inbox (what `prepare` put there already in place) and wait for READY."""

    def go(prepare=None, rescan_seconds: float = 60, env: dict[str, str] | None = None):
        inbox = tmp_path / "inbox"
        inbox.mkdir(exist_ok=True)
        if prepare:
            prepare(inbox)
        cfg = write_config(tmp_path, [inbox], tiny_models)
        cfg.write_text(cfg.read_text().replace("rescan_seconds = 60", f"rescan_seconds = {rescan_seconds}"))
        d = bbsd_run(cfg, env=env)
        d.wait_for("daemon.ready", timeout=60)
        return d, inbox

    return go


def labelled(photo: Path, timeout: float = 60) -> dict:
    wait_until(lambda: sidecar.path_for(photo).exists(), timeout, f"the sidecar of {photo.name}")
    doc = json.loads(sidecar.path_for(photo).read_text())
    assert doc["status"] == "labeled", doc
    return doc


def next_photo_labelled(d, inbox: Path, name: str = "next.jpg") -> None:
    """The service is still up and labelling."""
    labelled(make_photo(inbox / name, color=(30, 160, 90)))
    assert d.proc.poll() is None


def stops_promptly(d) -> None:
    assert d.stop(timeout=8) == 0  # well inside JOIN_S: no thread is stuck on a FIFO


def events_for(d, name: str, photo: Path) -> list[dict]:
    return [e for e in d.events(name) if e.get("path") == os.fsdecode(photo)]


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry under `folder` with its size and mtime (nothing followed)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("suffix", [".json", ".xmp"])
def test_a_fifo_where_a_sidecar_belongs_blocks_nothing(start, suffix):
    def prepare(inbox):
        make_photo(inbox / "a.jpg")
        os.mkfifo(inbox / f"a.jpg{suffix}")  # at start-up
        make_photo(inbox / "good.jpg", color=(10, 10, 200))

    d, inbox = start(prepare)
    labelled(inbox / "good.jpg")
    make_photo(inbox / "b.jpg", color=(90, 90, 10))
    os.mkfifo(inbox / f"b.jpg{suffix}")  # at run time
    next_photo_labelled(d, inbox)
    for name in ("a.jpg", "b.jpg"):
        assert stat.S_ISFIFO((inbox / f"{name}{suffix}").lstat().st_mode)  # never replaced
    if suffix == ".json":
        wait_until(lambda: all(events_for(d, "sidecar.unreadable", inbox / n) for n in ("a.jpg", "b.jpg")), 30,
                   "one record per photo")
        assert len(events_for(d, "sidecar.unreadable", inbox / "a.jpg")) == 1
    stops_promptly(d)


def test_a_fifo_in_place_of_the_journal_blocks_nothing(start, tmp_path):
    (tmp_path / "state").mkdir()
    os.mkfifo(tmp_path / "state" / "in_hand.json")  # the photos-in-hand journal (journal.NAME)
    d, inbox = start()
    next_photo_labelled(d, inbox)
    stops_promptly(d)


def test_a_sidecar_linked_to_dev_zero_is_one_record_in_bounded_memory(start):
    def prepare(inbox):
        make_photo(inbox / "z.jpg")
        (inbox / "z.jpg.json").symlink_to("/dev/zero")

    d, inbox = start(prepare)
    wait_until(lambda: events_for(d, "sidecar.unreadable", inbox / "z.jpg"), 30, "the record")
    make_photo(inbox / "y.jpg")
    (inbox / "y.jpg.json").symlink_to("/dev/zero")  # at run time too
    next_photo_labelled(d, inbox)
    rss = psutil.Process(d.proc.pid).memory_info().rss / 2**20
    assert rss < 600, f"the daemon grew to {rss:.0f} MB"
    assert len(events_for(d, "sidecar.unreadable", inbox / "z.jpg")) == 1
    assert (inbox / "z.jpg.json").is_symlink() and (inbox / "y.jpg.json").is_symlink()
    stops_promptly(d)


@pytest.mark.parametrize("observer", ["native", "polling"])
def test_symlinked_folders_and_photos_never_lead_out_of_the_watch_folder(start, tmp_path, observer):
    outside = tmp_path / "elsewhere"
    make_photo(outside / "private.jpg")
    make_photo(outside / "deeper" / "secret.jpg")
    before = tree(outside)

    def prepare(inbox):
        (inbox / "linked").symlink_to(outside, target_is_directory=True)  # a symlinked sub-folder at start-up
        (inbox / "real").mkdir()

    d, inbox = start(prepare, env={"BBSD_WATCH_OBSERVER": observer, "BBSD_WATCH_POLL_SECONDS": "0.5"})
    (inbox / "evil.jpg").symlink_to(outside, target_is_directory=True)  # a folder named like a photo
    (inbox / "real" / "sub").symlink_to(outside, target_is_directory=True)  # a link inside a real folder
    (inbox / "real" / "sub.jpg").symlink_to(outside, target_is_directory=True)
    (inbox / "link.jpg").symlink_to(outside / "private.jpg")  # a photo that is a link to a file outside
    trip = tmp_path / "staging" / "trip"  # a real folder moved in, holding a link out
    make_photo(trip / "moved.jpg", color=(200, 200, 0))
    (trip / "out").symlink_to(outside, target_is_directory=True)
    trip.rename(inbox / "trip")
    wait_until(lambda: all(events_for(d, "photo.ignored", inbox / n) for n in ("evil.jpg", "link.jpg")), 30,
               "the links ignored")
    next_photo_labelled(d, inbox / "real")
    labelled(inbox / "trip" / "moved.jpg")
    assert tree(outside) == before  # nothing written there
    touched = [e for e in d.events() if str(outside) in json.dumps(e) or "/linked/" in str(e.get("path", ""))
               or "evil.jpg/" in str(e.get("path", ""))]
    assert not touched, touched
    for name in ("evil.jpg", "link.jpg"):
        assert not sidecar.path_for(inbox / name).exists() and not (inbox / f"{name}.xmp").exists()
    stops_promptly(d)


@pytest.mark.parametrize("observer", ["native", "polling"])
def test_a_watch_root_replaced_by_a_link_while_running_is_never_followed(start, tmp_path, observer):
    """`mv W W.old; ln -s /elsewhere W` while bbsd runs: neither the poller nor a rescan labels, reads or
    writes anything under /elsewhere (the root is opened at the folder it was at start, never through a link)."""
    outside = tmp_path / "elsewhere"
    make_photo(outside / "o.jpg")
    make_photo(outside / "deep" / "o2.jpg")
    d, inbox = start(rescan_seconds=1, env={"BBSD_WATCH_OBSERVER": observer, "BBSD_WATCH_POLL_SECONDS": "0.5"})
    next_photo_labelled(d, inbox, "before.jpg")
    inbox.rename(tmp_path / "inbox.old")
    inbox.symlink_to(outside, target_is_directory=True)
    before = tree(outside)
    make_photo(outside / "new.jpg", color=(10, 10, 200))
    before["new.jpg"] = tree(outside)["new.jpg"]
    rescans = len(d.events("scan.done"))
    # five rescans and many polls later (rescan_seconds = 1): nothing of /elsewhere read or written
    wait_until(lambda: len(d.events("scan.done")) >= rescans + 5, 60, "five rescans")
    assert tree(outside) == before
    assert not [e for e in d.events("photo.labeled") if "before.jpg" not in e["path"]]
    assert d.proc.poll() is None
    stops_promptly(d)


def test_a_link_swapped_in_between_the_hash_and_the_decode_is_never_decoded(start, tmp_path):
    private = make_photo(tmp_path / "elsewhere" / "private.jpg", size=(333, 222), color=(1, 1, 1))
    d, inbox = start(env={**FAULTS, "BBSD_TEST_DECODE_DELAY_ON": "swap",
                          "BBSD_TEST_DECODE_DELAY_MS": "1500"})
    photo = make_photo(inbox / "swap.jpg")
    wait_until(lambda: d.events("test.decode_delayed"), 60, "the decode of the hashed photo")
    (inbox / ".swap-link").symlink_to(private)
    (inbox / ".swap-link").rename(photo)  # the race of the issue, made certain
    wait_until(lambda: events_for(d, "photo.gone", photo), 30, "photo.gone")
    assert not sidecar.path_for(photo).exists() and not events_for(d, "photo.labeled", photo)
    photo.unlink()
    real = make_photo(inbox / ".swap-copy", color=(7, 7, 7)).read_bytes()
    (inbox / ".swap-copy").rename(photo)  # a regular file again: labelled, from its own pixels
    doc = labelled(photo)
    assert (doc["photo"]["width"], doc["photo"]["height"]) == (320, 240)
    assert doc["photo"]["sha256"] == hashlib.sha256(real).hexdigest()
    next_photo_labelled(d, inbox)
    stops_promptly(d)


def test_a_photo_deleted_mid_label_gets_no_sidecar(start, tmp_path):
    # 2.5 s in the engine per photo: the deletion surely lands while the photo is in hand
    d, inbox = start(env={**FAULTS, "BBSD_TEST_SLOW_MS": "2500"})
    doomed = make_photo(inbox / "doomed.jpg")
    journal = tmp_path / "state"

    def in_hand() -> bool:
        return any(str(doomed) in p.read_text() for p in journal.rglob("in_hand.json"))

    wait_until(in_hand, 60, "the photo in hand")
    doomed.unlink()
    wait_until(lambda: events_for(d, "photo.gone", doomed), 30 + 2.5, "photo.gone")
    next_photo_labelled(d, inbox)
    assert not sidecar.path_for(doomed).exists() and not (inbox / "doomed.jpg.xmp").exists()
    assert not events_for(d, "photo.labeled", doomed) and not events_for(d, "photo.failed", doomed)
    stops_promptly(d)


def test_unreadable_sidecars_and_unencodable_names_are_one_record_across_rescans(start):
    odd = Path(os.fsdecode(b"caf\xe9.jpg"))  # Latin-1, not UTF-8: surrogate-escaped in Python

    def prepare(inbox):
        make_photo(inbox / "cut.jpg")
        sidecar.path_for(inbox / "cut.jpg").write_text('{"labels": {"characters": ["Baba Ya')  # truncated
        make_photo(inbox / "dir.jpg")
        sidecar.path_for(inbox / "dir.jpg").mkdir()  # a folder where the sidecar belongs
        make_photo(inbox / odd)

    d, inbox = start(prepare, rescan_seconds=1)
    odd_too = make_photo(inbox / os.fsdecode(b"na\xefve.jpg"))  # at run time: through the watcher
    unreadable = [inbox / "cut.jpg", inbox / "dir.jpg"]
    wait_until(lambda: all(events_for(d, "sidecar.unreadable", p) for p in unreadable), 30, "the records")
    scans = len(d.events("scan.done"))
    d.wait_for("scan.done", timeout=10, count=scans + 2)  # two more rescans
    next_photo_labelled(d, inbox)
    for photo in unreadable:
        assert len(events_for(d, "sidecar.unreadable", photo)) == 1, photo
    assert sidecar.path_for(inbox / "cut.jpg").read_text() == '{"labels": {"characters": ["Baba Ya'
    for photo in (inbox / odd, odd_too):
        records = [e for e in d.events() if e.get("path") == os.fsdecode(photo)
                   and e.get("event") in ("photo.labeled", "photo.failed")]
        assert len(records) == 1, records  # labelled or an error, once: never relabelled at each rescan
    stops_promptly(d)


# --- the pieces, without a daemon -----------------------------------------------------------------

def test_open_beneath_refuses_a_folder_swapped_for_a_link(tmp_path):
    root, outside = tmp_path / "w", tmp_path / "out"
    make_photo(root / "day" / "a.jpg")
    make_photo(outside / "a.jpg")
    os.close(safefs.open_beneath([root], root / "day" / "a.jpg"))
    (root / "day").rename(tmp_path / "moved")
    (root / "day").symlink_to(outside, target_is_directory=True)  # the parent swapped for a link
    with pytest.raises(safefs.OutsideError):
        safefs.open_beneath([root], root / "day" / "a.jpg")
    assert not safefs.beneath([root], root / "day" / "a.jpg")
    with pytest.raises(safefs.OutsideError):
        safefs.open_beneath([root], outside / "a.jpg")


def test_the_decoder_decodes_only_the_file_that_was_hashed(tmp_path):
    photo = make_photo(tmp_path / "a.jpg")
    fd = safefs.open_regular(photo)
    _, ident = safefs.sha256_fd(fd)
    os.close(fd)
    request = {"type": "decode", "path": str(photo), "max_side": 64, "max_pixels": 10**8, "expect": list(ident)}
    assert worker.answer(request)[0]["type"] == "decoded"
    private = make_photo(tmp_path / "private.jpg", color=(1, 2, 3))
    photo.unlink()
    photo.symlink_to(private)  # swapped in between the hash and the decode
    reply = worker.answer(request)[0]
    assert reply["type"] == "photo_error" and reply["code"] == "not_regular"
    photo.unlink()
    make_photo(photo, color=(4, 5, 6))  # a new copy under the same name
    reply = worker.answer(request)[0]
    assert reply["code"] == "changed" and reply["incomplete"]


def test_bbsd_label_never_follows_a_link_it_is_handed(tmp_path, tiny_models):
    """`bbsd label W/*` with links among the entries: a link to a private photo outside and a link to a
    folder outside are each refused with a line, nothing outside is read or written, the real photo is
    labelled."""
    from tests.conftest import run_bbsd

    inbox, outside = tmp_path / "inbox", tmp_path / "elsewhere"
    make_photo(outside / "private.jpg")
    make_photo(outside / "d" / "q.jpg")
    before = tree(outside)
    real = make_photo(inbox / "real.jpg")
    (inbox / "evil.jpg").symlink_to(outside / "private.jpg")
    (inbox / "dir.jpg").symlink_to(outside / "d", target_is_directory=True)
    cfg = write_config(tmp_path, [inbox], tiny_models)
    done = run_bbsd("label", "--config", str(cfg), str(real), str(inbox / "evil.jpg"), str(inbox / "dir.jpg"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert tree(outside) == before
    assert json.loads(sidecar.path_for(real).read_text())["status"] == "labeled"
    lines = [line for line in done.stdout.splitlines() if "evil.jpg" in line or "dir.jpg" in line]
    assert len(lines) == 2 and all("symlink" in line for line in lines), done.stdout
    assert "private.jpg" not in done.stdout and "q.jpg" not in done.stdout


def test_a_folder_tree_deeper_than_the_stack_is_walked_to_a_depth_and_ends_nothing(tmp_path):
    """1,200 nested folders (a recursive walk hit RecursionError, and the daemon ended at every start):
    the walk stops at scan.MAX_DEPTH with one event, photos above it are found."""
    from bbsd.arrive import scan

    root = tmp_path / "w"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    for _ in range(1200):  # made folder by folder: pathlib's mkdir(parents=True) recurses too
        os.mkdir("d", dir_fd=fd)
        below = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = below
    os.close(fd)
    make_photo(root / "d" / "top.jpg")
    try:
        found = list(scan.photos((root,), ("jpg",), recursive=True))
        assert found == [root / "d" / "top.jpg"]
        assert scan.remove_stale_temps((root,), recursive=True) == 0
    finally:
        flatten(root / "d")  # pytest's own clean-up (shutil.rmtree) recurses, and would fail on it later


def flatten(top: Path) -> None:
    """Remove a chain of nested `d` folders without recursion: lift the chain one level at a time."""
    (top / "top.jpg").unlink(missing_ok=True)
    while (top / "d").is_dir():
        (top / "d").rename(top.with_name("lifted"))
        top.rmdir()
        top.with_name("lifted").rename(top)
    top.rmdir()
