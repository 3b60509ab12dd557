"""A read-only watch folder's hint fits where bbsd runs: under systemd the unit is what refuses the
write (ProtectSystem=strict allows only the folders it was installed with), elsewhere the user's rights."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import run_bbsd, write_config

NOT_SYSTEMD = {"INVOCATION_ID": "", "NOTIFY_SOCKET": ""}  # empty: as if unset, even when the suite runs in a unit


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder on a read-only tmpfs: the EROFS that the unit's sandbox gives a folder it does not list."""
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    folder = tmp_path / "ro"
    folder.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=16k", "tmpfs", str(folder)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a read-only tmpfs: {r.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def _check_error(tmp_path, folder, env) -> str:
    cfg = write_config(tmp_path, [folder], backend="fake")
    r = run_bbsd("check", "--config", str(cfg), env=env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert f"watch folder {folder} is on a read-only filesystem" in lines[0]
    return lines[0]


@pytest.mark.parametrize("unit", [{"INVOCATION_ID": "0123456789abcdef0123456789abcdef"},
                                  {"NOTIFY_SOCKET": "/run/systemd/notify"}])
def test_under_systemd_the_hint_is_to_install_the_unit_again(tmp_path, read_only_folder, unit):
    line = _check_error(tmp_path, read_only_folder, {**NOT_SYSTEMD, **unit})
    assert f"bbsd service install --config {tmp_path / 'config.toml'}` again" in line, line
    assert "systemctl daemon-reload" in line and "grant the bbsd user" not in line


def test_elsewhere_the_hint_is_the_users_write_access(tmp_path, read_only_folder):
    line = _check_error(tmp_path, read_only_folder, NOT_SYSTEMD)
    assert "grant the bbsd user write access" in line and "service install" not in line, line
