"""A failed write leaves neither a partial sidecar nor a temp file, and the old file intact."""

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bbsd import atomic
from bbsd.errors import SidecarWriteError


def test_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a.jpg.json"
    atomic.write_bytes(target, b"one")
    atomic.write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["a.jpg.json"]


def test_failure_during_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "a.jpg.json"
    target.write_bytes(b"old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(SidecarWriteError) as e:
        atomic.write_bytes(target, b"new")
    assert "disk is full" in e.value.hint
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.jpg.json"]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_real_enospc_leaves_no_partial_file(tiny_tmpfs):
    target = tiny_tmpfs / "IMG.JPG.json"
    with pytest.raises(SidecarWriteError, match="No space left"):
        atomic.write_bytes(target, b"x" * 64 * 1024)
    assert os.listdir(tiny_tmpfs) == []
    atomic.write_bytes(target, b"fits")  # once space is there, the write succeeds
    assert target.read_bytes() == b"fits"


def test_stale_temps_are_removed(tmp_path):
    (tmp_path / f".a.jpg.json{atomic.TEMP_MARK}dead").write_text("{")
    (tmp_path / "keep.jpg").write_text("x")
    assert atomic.remove_stale_temps(tmp_path) == 1
    assert os.listdir(tmp_path) == ["keep.jpg"]


def test_a_folder_swapped_for_a_link_cannot_lead_a_write_out(tmp_path):
    """With the watch roots given, the write goes through descriptors reached from the root, so a
    folder on the way that became a symlink (after every check by path) fails the write instead of
    writing beside the link's target."""
    root, outside = tmp_path / "watch", tmp_path / "outside"
    (root / "day1").mkdir(parents=True)
    outside.mkdir()
    atomic.write_bytes(root / "day1" / "a.jpg.json", b"mine", roots=(root,))
    assert (root / "day1" / "a.jpg.json").read_bytes() == b"mine"
    (root / "day1").rename(root / "day1.moved")
    (root / "day1").symlink_to(outside, target_is_directory=True)
    with pytest.raises(SidecarWriteError, match="not a folder"):
        atomic.write_bytes(root / "day1" / "a.jpg.json", b"evil", roots=(root,))
    assert os.listdir(outside) == []  # not even a temp file
    with pytest.raises(SidecarWriteError, match="not under any watch folder"):
        atomic.write_bytes(outside / "b.json", b"evil", roots=(root,))
    assert os.listdir(outside) == []


def test_the_xmp_merge_neither_reads_nor_writes_through_a_linked_folder(tmp_path):
    from bbsd.engine.labels import Labels
    from bbsd.sidecars import xmp

    root, outside = tmp_path / "watch", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "p.jpg.xmp").write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'>secret</x:xmpmeta>")
    (root / "day1").symlink_to(outside, target_is_directory=True)
    labels = Labels(characters=("Koschei",), props=(), caption="c", scene="s", visible_text=())
    with pytest.raises(xmp.XmpNotRegularError):
        xmp.write(root / "day1" / "p.jpg.xmp", xmp.proposal_for(labels, "BBS", {}), roots=(root,))
    assert os.listdir(outside) == ["p.jpg.xmp"] and "secret" in (outside / "p.jpg.xmp").read_text()


def test_a_folder_bbsd_may_pass_but_not_list_still_takes_sidecars():
    """A photographer's folder of mode 0711 on the way (enter, not list): reads and writes through
    descriptors still reach the photo's own folder (as the path-based code did)."""
    import pwd
    import sys
    import tempfile
    import traceback

    from bbsd import safefs

    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    base = Path(tempfile.mkdtemp(prefix="bbsd-0711-", dir="/tmp"))  # pytest's own tmp is 0700: nobody can't enter
    try:
        base.chmod(0o755)
        root = base / "watch"
        (root / "private" / "day1").mkdir(parents=True)
        (root / "private" / "day1" / "p.jpg").write_bytes(b"jpeg")
        nobody = pwd.getpwnam("nobody").pw_uid
        for folder in (root, root / "private" / "day1"):
            os.chown(folder, nobody, -1)
        (root / "private").chmod(0o711)
        pid = os.fork()
        if pid == 0:  # the child acts as an unprivileged user, as the service does
            code = 1
            try:
                os.setuid(nobody)
                atomic.write_bytes(root / "private" / "day1" / "p.jpg.json", b"{}", roots=(root,))
                os.close(safefs.open_beneath((root,), root / "private" / "day1" / "p.jpg"))
                code = 0
            except BaseException:
                traceback.print_exc(file=sys.stderr)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert (root / "private" / "day1" / "p.jpg.json").read_bytes() == b"{}"
    finally:
        shutil.rmtree(base)
