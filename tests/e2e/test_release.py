"""Release smoke test of the venue artefact (build/build.sh): run with no Python environment at all.

Skipped unless BBSD_ARTEFACT names the tarball; `make release` builds it and runs this file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
from pathlib import Path

import jsonschema
import pytest

from bbsd.models import tiny as tiny_model
from bbsd.sidecars import record as sidecar
from tests.conftest import REPO, events, make_photo, wait_until

ARTEFACT = os.environ.get("BBSD_ARTEFACT")
pytestmark = pytest.mark.skipif(not ARTEFACT, reason="set BBSD_ARTEFACT (run `make release`)")
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
OUTSIDE = (str(REPO / ".venv"), str(REPO / "build" / "out" / "venv"), "/root/.pyenv", "site-packages")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The tarball unpacked somewhere new (it must not care where it lives), plus a tiny model."""
    root = tmp_path_factory.mktemp("venue")
    with tarfile.open(ARTEFACT) as tar:
        tar.extractall(root, filter="tar")
    text, mmproj = tiny_model.write_pair(root / "models")
    inbox = root / "inbox"
    inbox.mkdir()
    cfg = root / "config.toml"
    cfg.write_text(f'[watch]\nfolders = ["{inbox}"]\nsettle_seconds = 0.3\n[model]\npath = "{text}"\n'
                   f'mmproj = "{mmproj}"\n[service]\nstate_dir = "{root / "state"}"\n[log]\nformat = "json"\n'
                   '[[characters]]\nname = "Baba Yaga"\n[[props]]\nname = "lantern"\n')
    return root, root / "bbsd" / "bbsd", cfg, inbox


def run(exe: Path, *args: str, home: Path, prefix: tuple[str, ...] = (), timeout: float = 120):
    return subprocess.run([*prefix, str(exe), *args], capture_output=True, text=True, timeout=timeout,
                          env={**CLEAN_ENV, "HOME": str(home)}, cwd=home)


def test_version_verbose_names_llama_cpp_and_its_cpu_variants(bundle):
    root, exe, _, _ = bundle
    r = run(exe, "--version", "--verbose", home=root)
    assert r.returncode == 0, r.stderr
    assert "runtime: PyInstaller bundle" in r.stdout and "llama.cpp@0c1e57098" in r.stdout
    assert "backends: CPU" in r.stdout and "sse42" in r.stdout and "haswell" in r.stdout
    assert "cpu_variant_loaded: " in r.stdout


def test_the_readme_s_links_reach_pages_in_the_artefact(bundle):
    """The README travels with the artefact; the pages it links to (docs/) travel with it."""
    import re

    root = bundle[0] / "bbsd"
    links = [t.partition("#")[0] for t in re.findall(r"\]\(([^)\s:]+)\)", (root / "README.md").read_text())]
    assert links and [t for t in links if t and not (root / t).exists()] == []


def test_convert_says_the_artefact_cannot_and_where_to_convert(bundle):
    """The artefact leaves torch out: `models convert` says so and where to convert, not `pip install`."""
    root, exe, _, _ = bundle
    r = run(exe, "models", "convert", str(root / "InternVL2-8B"), home=root)
    assert r.returncode != 0 and "venue artefact cannot convert" in r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stderr


def test_check_and_label_with_a_clean_environment(bundle):
    root, exe, cfg, inbox = bundle
    r = run(exe, "check", "--config", str(cfg), home=root)
    assert r.returncode == 0, r.stderr
    photo = make_photo(inbox / "IMG_0001.JPG")
    r = run(exe, "label", str(photo), "--config", str(cfg), home=root)
    assert r.returncode == 0 and r.stdout.startswith("labeled  IMG_0001.JPG"), r.stdout + r.stderr
    doc = json.loads(sidecar.path_for(photo).read_text())
    jsonschema.validate(doc, sidecar.json_schema())
    assert doc["status"] == "labeled" and (inbox / "IMG_0001.JPG.xmp").exists()


def test_run_labels_a_dropped_photo_uses_nothing_outside_the_bundle_and_stops_cleanly(bundle):
    root, exe, cfg, inbox = bundle
    log = root / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(exe), "run", "--config", str(cfg)], stdout=out, stderr=subprocess.STDOUT,
                                env={**CLEAN_ENV, "HOME": str(root)}, cwd=root)
    try:
        wait_until(lambda: any(e.get("event") == "daemon.ready" for e in events(log.read_text())), 60, "ready")
        photo = make_photo(inbox / "dropped.jpg", color=(20, 200, 20))
        wait_until(lambda: sidecar.path_for(photo).exists(), 60, "the dropped photo's sidecar")
        worker = next(e["pid"] for e in events(log.read_text()) if e.get("event") == "worker.started")
        for pid in (proc.pid, worker):  # every library either process mapped comes from the bundle or the OS
            mapped = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
                      if line.split()[-1].startswith("/")}
            assert not [m for m in mapped if any(o in m for o in OUTSIDE)], mapped
            assert any(str(root / "bbsd") in m for m in mapped)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert any(e.get("event") == "daemon.stopped" for e in events(log.read_text()))


def nehalem(exe: Path) -> tuple[str, ...]:
    """qemu-user emulating a Nehalem CPU (2008: SSE4.2, no AVX) for the artefact.

    PyInstaller's bootloader re-executes itself once with these variables set, and qemu-user
    runs an execve'd program natively; setting them for the guest (-E) skips that re-exec, so
    the emulator sees every instruction. The environment is otherwise clean: this workplace sets
    OPENBLAS_CORETYPE=Haswell, which would force AVX2 kernels on any CPU.
    """
    home = exe.parent
    return ("qemu-x86_64", "-cpu", "Nehalem", "-E", f"_PYI_ARCHIVE_FILE={exe}", "-E", "_PYI_PARENT_PROCESS_LEVEL=-1",
            "-E", f"LD_LIBRARY_PATH={home / '_internal'}")


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs qemu-user (make release installs it)")
def test_a_native_build_dies_on_that_cpu(tmp_path):
    """The baseline: the development build (llama.cpp with -march=native) hits an illegal instruction."""
    import llama_cpp

    if list((Path(llama_cpp.__file__).parent / "lib").glob("libggml-cpu-*.so")):
        pytest.skip("this environment's llama.cpp is itself a portable build")
    r = subprocess.run(["qemu-x86_64", "-cpu", "Nehalem", str(Path(os.sys.executable)), "-c",
                        "import llama_cpp; print(llama_cpp.llama_print_system_info())"],
                       capture_output=True, text=True, timeout=600, env={**CLEAN_ENV, "HOME": str(tmp_path)})
    assert r.returncode != 0 and "Illegal instruction" in r.stderr


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs qemu-user (make release installs it)")
def test_labels_on_a_cpu_without_avx_using_the_variant_it_supports(bundle, summary):
    """The engine runs in-process (isolate = false) so the emulator sees every instruction."""
    root, exe, cfg, inbox = bundle
    emulated = root / "nehalem.toml"
    emulated.write_text(cfg.read_text().replace("[service]", "[worker]\nisolate = false\n[service]"))
    qemu = nehalem(exe)
    r = run(exe, "--version", "--verbose", home=root, prefix=qemu, timeout=600)
    assert r.returncode == 0, r.stderr
    loaded = next(line for line in r.stdout.splitlines() if line.startswith("cpu_variant_loaded"))
    assert loaded.split(": ")[1] in ("sse42", "x64"), loaded
    photo = make_photo(inbox / "old_cpu.jpg", color=(200, 200, 20))
    r = run(exe, "label", str(photo), "--config", str(emulated), home=root, prefix=qemu, timeout=600)
    assert r.returncode == 0 and r.stdout.startswith("labeled  old_cpu.jpg"), r.stdout + r.stderr[-2000:]
    summary(f"artefact under qemu-x86_64 -cpu Nehalem (no AVX): labelled a photo with the {loaded.split(': ')[1]} "
            "variant")
