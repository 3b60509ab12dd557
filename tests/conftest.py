"""Shared fixtures: tiny real GGUF models, real photo files, config files, schema validation."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
from PIL import Image, ImageDraw

from bbsd import plugins
from bbsd.models import tiny as tiny_model
from bbsd.sidecars import record as sidecar
from tests import fakes

REPO = Path(__file__).resolve().parent.parent
# Deadlines in these tests bound liveness: a passing test returns as soon as its condition holds
# and never waits for them. They are stretched by this factor so that the suite passes on a
# 2-core machine that a compiler or a second suite shares (measured: up to 4x slower there).
SLACK = float(os.environ.get("BBSD_TEST_SLACK", "3"))

CATALOG = """
[[characters]]
name = "Baba Yaga"
description = "old witch puppet, long nose, patched red shawl"

[[characters]]
name = "Koschei"
description = "skeletal puppet king"

[[props]]
name = "lantern"
description = "brass hand lantern"
"""


def pytest_configure(config):
    """The suite's test doubles are plugins (docs/developer/plugins.md), not in the package: this process
    and every bbsd process a test starts (which finds `tests` on PYTHONPATH) load the fake backend; a
    test that injects faults adds tests.fakes.faults to the process it starts (`fakes.FAULTS`)."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    os.environ[plugins.ENV] = fakes.ENGINE
    plugins.load()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """A real (random-weight) text GGUF + LLaVA mmproj, generated once per test session."""
    return tiny_model.write_pair(tmp_path_factory.mktemp("models"))


def make_photo(path: Path, size=(320, 240), color=(180, 40, 40), fmt: str | None = None,
               orientation: int | None = None) -> Path:
    """Write a real image file; `orientation` sets the EXIF orientation tag."""
    mode = "RGBA" if fmt == "PNG" else "RGB"
    img = Image.new(mode, size, color)
    ImageDraw.Draw(img).rectangle((10, 10, size[0] // 2, size[1] // 2), fill=(250, 250, 250))
    kwargs = {}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt or "JPEG", **kwargs)
    return path


def jpeg_bytes(size=(320, 240), color=(40, 90, 160)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_config(folder: Path, watch: list[Path], models: tuple[Path, Path] | None = None,
                 extra: str = "", backend: str = "llama") -> Path:
    """A config for tests: fast settling, small images, JSON logs."""
    model = ""
    if models:
        model = f'[model]\npath = "{models[0]}"\nmmproj = "{models[1]}"\n'
    text = f"""
[watch]
folders = {json.dumps([str(w) for w in watch])}
settle_seconds = 0.3
incomplete_timeout_seconds = 3
rescan_seconds = 60

{model}
[engine]
backend = "{backend}"
image_max_side = 256
{"threads = 2" if backend == "llama" else ""}

[log]
format = "json"
level = "info"
{extra}
{"" if "[service]" in extra else f'[service]{chr(10)}state_dir = "{folder / "state"}"'}
{CATALOG}
"""
    path = folder / "config.toml"
    path.write_text(text)
    return path


@pytest.fixture
def validate_sidecar() -> Callable[[Path], dict]:
    schema = sidecar.json_schema()

    def check(photo: Path) -> dict:
        doc = json.loads(sidecar.path_for(photo).read_text())
        jsonschema.validate(doc, schema)
        return doc

    return check


def bbsd_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bbsd", *args]


def run_bbsd(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("PYTEST_CURRENT_TEST", None)  # the CLI must behave as in production
    return subprocess.run(bbsd_cmd(*args), capture_output=True, text=True, timeout=timeout * SLACK, env=full_env,
                          cwd=REPO)


class BbsdRun:
    """`bbsd run` as a child process (as in production: no pytest marker), its JSON log in a file."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        full = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
        full.update(env or {})
        self.log_path = log
        self._log = log.open("w")
        self.proc = subprocess.Popen(bbsd_cmd("run", "--config", str(config)), stdout=self._log,
                                     stderr=subprocess.STDOUT, env=full, cwd=REPO)

    def events(self, name: str | None = None) -> list[dict]:
        return [e for e in events(self.log_path.read_text()) if name is None or e.get("event") == name]

    def wait_for(self, name: str, timeout: float = 60, count: int = 1) -> list[dict]:
        wait_until(lambda: len(self.events(name)) >= count or self.proc.poll() is not None, timeout, name)
        assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
        return self.events(name)

    def stop(self, timeout: float = 30) -> int:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout * SLACK)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def bbsd_run(tmp_path):
    """Start `bbsd run` children; any still running at the end of the test are killed."""
    started: list[BbsdRun] = []

    def start(config: Path, name: str = "run", env: dict[str, str] | None = None) -> BbsdRun:
        run = BbsdRun(config, tmp_path / f"{name}.log", env)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll with a deadline (stretched by SLACK): the synchronisation for things in another process."""
    end = time.monotonic() + timeout * SLACK
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout * SLACK:g}s waiting for {what}")


def events(log_text: str) -> list[dict]:
    """Parse JSON-lines log output, ignoring anything that is not a JSON object."""
    out = []
    for line in log_text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


_SUMMARIES: list[str] = []


@pytest.fixture
def summary() -> Callable[[str], None]:
    """Lines a test wants in the run's output (measured figures), printed at the end of the session."""
    return _SUMMARIES.append


def pytest_terminal_summary(terminalreporter):
    if _SUMMARIES:
        terminalreporter.section("bbsd figures")
        for line in _SUMMARIES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def engine(tiny_models, tmp_path_factory):
    """The real llama.cpp engine on the tiny pair, in this process, opened once per test module."""
    from bbsd import config
    from bbsd.engine.registry import open_in_process

    folder = tmp_path_factory.mktemp("engine")
    settings = config.load(write_config(folder, [folder], tiny_models), environ={})
    labeler = open_in_process(settings)
    yield labeler, settings
    labeler.close()


def sha256_of(path: Path) -> str:
    """The file's sha256 computed here, independently of bbsd's own code."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_dng(path: Path, raw, orientation: int, color_matrix: list[list[int]]) -> Path:
    """A real DNG (LibRaw opens it) of 12-bit RGGB Bayer data `raw` (h, w) with an orientation tag and a
    ColorMatrix1 (9 rationals), written by pidng; the file is `path` as given (pidng writes ".dng")."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CalibrationIlluminant, CFAPattern, DNGVersion, PhotometricInterpretation

    h, w = raw.shape
    tags = DNGTags()
    for tag, value in [(Tag.ImageWidth, w), (Tag.ImageLength, h), (Tag.TileWidth, w), (Tag.TileLength, h),
                       (Tag.Orientation, orientation), (Tag.SamplesPerPixel, 1), (Tag.BitsPerSample, 12),
                       (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
                       (Tag.CFARepeatPatternDim, [2, 2]), (Tag.CFAPattern, CFAPattern.RGGB),
                       (Tag.BlackLevel, 0), (Tag.WhiteLevel, 4095), (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]),
                       (Tag.ColorMatrix1, color_matrix), (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65),
                       (Tag.DNGVersion, DNGVersion.V1_4), (Tag.Make, "BBS"), (Tag.Model, "StageCam")]:
        tags.set(tag, value)
    writer = RAW2DNG()
    writer.options(tags, path="", compress=False)
    writer.convert(raw, filename=str(path.with_suffix("")))
    written = path.with_suffix(".dng")  # pidng always writes a lower-case .dng
    if written != path:
        written.rename(path)
    return path
