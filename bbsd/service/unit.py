"""The systemd unit: rendered for this install (paths, user, folders) and written by `bbsd service install`.

Invariant: `systemd/bbsd.service` in the repository is exactly `render()` with the reference
values (a test keeps them equal), so the file reviewers read is the file installs get.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from bbsd.engine import registry
from bbsd.engine.registry import UnitNeeds

TEMPLATE = """\
# bbsd — stage-side photo labelling daemon. Reference unit for a CPU-only venue PC.
# `bbsd service install` writes this unit with absolute paths, the right user and folders,
# plus a drop-in for GPU access when the backend uses a GPU, and IP networking only for a remote
# backend (inference servers). See docs/stage/service.md.
[Unit]
Description=bbsd photo labelling daemon (Balanced Blended Space)
After=local-fs.target remote-fs.target
Wants=remote-fs.target

[Service]
Type=notify
# Only the daemon's own process (the main PID) sends READY/STATUS/WATCHDOG/STOPPING; its
# engine worker never notifies. The artefact's onedir bootloader re-executes in place (same PID).
NotifyAccess=main
ExecStart={exec_start}
# The shell's own kill: /bin/kill is procps's, which a minimal Debian lacks (the reload then fails with
# 203/EXEC); /bin/sh is on every Debian. $$ is systemd's escape: sh reads $MAINPID from the environment.
ExecReload=/bin/sh -c 'kill -HUP $$MAINPID'
# A long model load extends the start timeout itself (EXTEND_TIMEOUT_USEC) while it progresses.
TimeoutStartSec=120
TimeoutStopSec=60
WatchdogSec=120
Restart=on-failure
RestartSec=10
# A dedicated user (not DynamicUser): sidecars are shared with the editors through the group.
User={user}
Group={group}
UMask=0002
StateDirectory=bbsd
StateDirectoryMode=0755
Environment=PYTHONUNBUFFERED=1

# Read-only system; only the watch folders (and the state directory) are writable.
ProtectSystem=strict
ReadWritePaths={rw_paths}
ProtectHome={protect_home}
PrivateTmp=yes
PrivateDevices=yes
DevicePolicy=closed
PrivateMounts=yes
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
KeyringMode=private
{network}SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
# MemoryDenyWriteExecute stays off: ctypes callbacks (llama.cpp's log routing) use libffi
# closures, and CUDA JIT-compiles kernels on GPU machines.

[Install]
WantedBy=multi-user.target
"""

GPU_DROPIN = """\
# Written by `bbsd service install` because the backend uses a GPU ([engine] gpu_layers): NVIDIA GPU access.
[Service]
PrivateDevices=no
DevicePolicy=closed
DeviceAllow=/dev/nvidiactl rw
DeviceAllow=/dev/nvidia-uvm rw
DeviceAllow=/dev/nvidia-uvm-tools rw
DeviceAllow=/dev/nvidia-modeset rw
DeviceAllow=char-nvidia-frontend rw
DeviceAllow=char-nvidia-caps rw
# CUDA and NVML read /proc/driver/nvidia.
ProcSubset=all
"""

LOCAL_ONLY = """\
# No network at all: the model is local. Only AF_UNIX, for the notify socket.
PrivateNetwork=yes
IPAddressDeny=any
RestrictAddressFamilies=AF_UNIX
"""


def network_block(needs: UnitNeeds) -> str:
    """No network for a local model; for inference servers IP, and only to their addresses where known."""
    if not needs.network:
        return LOCAL_ONLY
    lines = ["# The backend talks to inference servers over HTTP: IP networking, nothing else but AF_UNIX."]
    if needs.ip_allow:
        lines += ["# Only to the configured endpoints' addresses (and loopback).", "IPAddressDeny=any",
                  f"IPAddressAllow=localhost {' '.join(needs.ip_allow)}"]
    else:
        lines.append("# An endpoint is a host name: its addresses are not known here, so none are filtered.")
    lines.append("RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6")
    return "\n".join(lines) + "\n"


REFERENCE = {"exec_start": "/usr/bin/env bbsd run --config /etc/bbsd/config.toml", "user": "bbsd", "group": "bbsd",
             "rw_paths": "/srv/photos/export", "protect_home": "yes", "network": LOCAL_ONLY}


@dataclass(frozen=True)
class Install:
    unit: str
    gpu_dropin: str | None
    commands: list[str]


def render(exec_start: str, user: str, group: str, rw_paths: list[Path], protect_home: str,
           network: str = LOCAL_ONLY) -> str:
    return TEMPLATE.format(exec_start=exec_start, user=user, group=group, protect_home=protect_home,
                           rw_paths=" ".join(shlex.quote(str(p)) for p in rw_paths), network=network)


def reference() -> str:
    return TEMPLATE.format(**REFERENCE)


def bbsd_executable() -> str:
    """Absolute path of the command that runs this bbsd: the frozen binary or the venv's script."""
    if getattr(sys, "frozen", False):
        return sys.executable
    script = Path(sys.executable).parent / "bbsd"
    return str(script if script.exists() else shutil.which("bbsd") or script)


def plan(settings, user: str, executable: str | None = None) -> Install:
    """The unit (and drop-in) for this configuration, and the commands a tech runs next."""
    exe = executable or bbsd_executable()
    needs = registry.get(settings.engine.backend).unit(settings)
    needed = [Path(exe), settings.source, *settings.watch.folders, *needs.read_paths]
    in_home = any(str(p).startswith(("/home/", "/root/", "/run/user/")) for p in needed)
    unit = render(f"{shlex.quote(exe)} run --config {shlex.quote(str(settings.source))}", user, user,
                  list(settings.watch.folders), "read-only" if in_home else "yes", network_block(needs))
    gpu = GPU_DROPIN if needs.gpu else None
    commands = [
        f"id {user} >/dev/null 2>&1 || sudo useradd --system --home-dir /var/lib/bbsd --shell /usr/sbin/nologin {user}",
        *[f"sudo chgrp {user} {shlex.quote(str(f))} && sudo chmod g+rwxs {shlex.quote(str(f))}"
          for f in settings.watch.folders],
        "sudo systemctl daemon-reload",
        "sudo systemctl enable --now bbsd.service",
        "systemctl status bbsd.service        # READY, queue and last latency in the Status: line",
        "journalctl -u bbsd.service -f        # the structured log",
    ]
    return Install(unit, gpu, commands)


def install(target_dir: Path, item: Install) -> list[Path]:
    target_dir.mkdir(parents=True, exist_ok=True)
    written = [target_dir / "bbsd.service"]
    written[0].write_text(item.unit)
    dropin = target_dir / "bbsd.service.d" / "gpu.conf"
    if item.gpu_dropin:
        dropin.parent.mkdir(exist_ok=True)
        dropin.write_text(item.gpu_dropin)
        written.append(dropin)
    elif dropin.exists():
        dropin.unlink()
    return written


def uninstall(target_dir: Path) -> list[Path]:
    removed = []
    for path in (target_dir / "bbsd.service.d" / "gpu.conf", target_dir / "bbsd.service"):
        if path.exists():
            path.unlink()
            removed.append(path)
    if (target_dir / "bbsd.service.d").is_dir() and not any((target_dir / "bbsd.service.d").iterdir()):
        (target_dir / "bbsd.service.d").rmdir()
    return removed
