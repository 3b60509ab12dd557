"""`bbsd models pull`: fetch a registry pair over plain HTTP in the Hugging Face hub's URL layout.

Invariants: nothing appears in gguf_models/ until it is complete and its sha256 verified (the
download grows in gguf_models/.partial/ and is renamed into place); an interrupted transfer
resumes with an HTTP Range request; the free space is checked before the first byte; with no
network the command fails at once with one clear line. $HF_ENDPOINT selects a mirror (the tests
point it at a local server).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import structlog

from bbsd.errors import ModelError
from bbsd.fingerprint import file_sha256
from bbsd.models.registry import Entry

log = structlog.get_logger("bbsd.download")
CHUNK = 1 << 20
TIMEOUT_S = 20
ATTEMPTS = 3
SPARE_MB = 256  # keep this much free after the download


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _open(url: str, headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, headers={"User-Agent": "bbsd", **(headers or {})})
    try:
        return urllib.request.urlopen(req, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        raise ModelError(f"{url}: HTTP {e.code} {e.reason}",
                         "check the repository and file names in the registry (`bbsd models list`)") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ModelError(f"cannot reach {endpoint()} ({reason})",
                         "`models pull` needs the network: run it on a connected machine and copy gguf_models/ "
                         "over, or set HF_ENDPOINT to a reachable mirror") from None


def list_repo(repo: str) -> list[RemoteFile]:
    with _open(f"{endpoint()}/api/models/{repo}/tree/main") as r:
        items = json.load(r)
    return [RemoteFile(i["path"], int(i.get("lfs", {}).get("size") or i.get("size") or 0),
                       i.get("lfs", {}).get("oid")) for i in items if i.get("type") == "file"]


def choose(entry: Entry, files: list[RemoteFile]) -> tuple[RemoteFile, RemoteFile]:
    """The registry's file names when the repository has them, else the `quant` text file and its mmproj."""
    ggufs = [f for f in files if f.path.endswith(".gguf")]
    by_name = {f.path: f for f in ggufs}
    text = by_name.get(entry.text) or next(
        (f for f in ggufs if not f.path.startswith("mmproj") and entry.quant.casefold() in f.path.casefold()), None)
    mmproj = by_name.get(entry.mmproj) or next((f for f in ggufs if f.path.startswith("mmproj")), None)
    if text is None or mmproj is None:
        raise ModelError(f"{entry.repo} has no {entry.quant or ''} text GGUF and mmproj pair",
                         f"files there: {', '.join(f.path for f in ggufs) or 'none'}")
    return text, mmproj


def pull(entry: Entry, models_dir: Path, progress: bool | None = None) -> list[Path]:
    if entry.status != "runnable":
        raise ModelError(f"{entry.name} is {entry.status}: nothing to pull",
                         entry.notes or "see its row's notes in bbsd/models/models.toml")
    text, mmproj = choose(entry, list_repo(entry.repo))
    wanted = [f for f in (text, mmproj) if not _complete(models_dir / f.path, f, entry)]
    _check_space(models_dir, wanted)
    for f in wanted:
        fetch(entry, f, models_dir, sys.stderr.isatty() if progress is None else progress)
    return [models_dir / text.path, models_dir / mmproj.path]


def _complete(path: Path, remote: RemoteFile, entry: Entry) -> bool:
    return path.is_file() and path.stat().st_size == remote.size and (
        _expected_sha(remote, entry) is None or file_sha256(path) == _expected_sha(remote, entry))


def _expected_sha(remote: RemoteFile, entry: Entry) -> str | None:
    kind = "mmproj" if remote.path.startswith("mmproj") else "text"
    return entry.sha256.get(kind) or remote.sha256


def _check_space(models_dir: Path, files: list[RemoteFile]) -> None:
    models_dir.mkdir(parents=True, exist_ok=True)
    partial = models_dir / ".partial"
    have = sum((partial / (f.path + ".part")).stat().st_size for f in files if (partial / (f.path + ".part")).exists())
    need = sum(f.size for f in files) - have
    free = shutil.disk_usage(models_dir).free
    if need + SPARE_MB * 2**20 > free:
        raise ModelError(f"not enough disk space in {models_dir}: need {need / 2**30:.1f} GiB, "
                         f"{free / 2**30:.1f} GiB free", "free some space or point --dir at a larger disk")


def fetch(entry: Entry, remote: RemoteFile, models_dir: Path, progress: bool) -> Path:
    partial = models_dir / ".partial"
    partial.mkdir(parents=True, exist_ok=True)
    part, target = partial / (remote.path + ".part"), models_dir / remote.path
    url = f"{endpoint()}/{entry.repo}/resolve/main/{quote(remote.path)}"
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _transfer(url, part, remote.size, progress)
            break
        except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError) as e:
            log.warning("download.interrupted", file=remote.path, attempt=attempt, have=part.stat().st_size,
                        error=str(e))
            if attempt == ATTEMPTS:
                raise ModelError(f"download of {remote.path} kept failing ({e})",
                                 "run `bbsd models pull` again: it resumes where it stopped") from None
    expected = _expected_sha(remote, entry)
    actual = file_sha256(part)
    if expected and actual != expected:
        part.unlink()
        raise ModelError(f"{remote.path} is corrupt: sha256 {actual[:12]}… is not {expected[:12]}…",
                         "the partial file was deleted; run `bbsd models pull` again")
    os.replace(part, target)
    log.info("download.done", file=remote.path, size=remote.size, sha256=actual)
    return target


def _transfer(url: str, part: Path, size: int, progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    if size and have >= size:
        return
    headers = {"Range": f"bytes={have}-"} if have else {}
    with _open(url, headers) as r:
        if have and r.status != 206:  # the server ignored Range: start over
            have = 0
        with part.open("ab" if have else "wb") as out, _Bar(part.name, size, have, progress) as bar:
            while chunk := r.read(CHUNK):
                out.write(chunk)
                bar.advance(len(chunk))
        if size and part.stat().st_size < size:
            raise http.client.IncompleteRead(b"", size - part.stat().st_size)


class _Bar:
    """rich's transfer bar on a terminal; silent otherwise (the log has download.* events)."""

    def __init__(self, name: str, total: int, done: int, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

            self._bar = Progress("{task.description}", DownloadColumn(), TransferSpeedColumn(), transient=True)
            self._task = self._bar.add_task(name, total=total or None, completed=done)

    def __enter__(self):
        if self._bar:
            self._bar.start()
        return self

    def advance(self, n: int) -> None:
        if self._bar:
            self._bar.advance(self._task, n)

    def __exit__(self, *exc) -> None:
        if self._bar:
            self._bar.stop()
