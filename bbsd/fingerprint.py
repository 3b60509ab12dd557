"""What tells two model files with one name apart: each file's size and the sha256 of its whole content.

Invariant: a digest names the bytes that were hashed, never a guess from the name. The whole file
is hashed, not the GGUF header and tensor table: a fine-tune of a model has the same header,
tensor names, shapes and offsets as its base, and only the weights differ. Hashing gigabytes
takes seconds, so a digest is kept in the state folder (`model-digests.json`) under the file's
path, size, inode, mtime and ctime, and is hashed again only when one of them changes (ctime
cannot be set by hand, so a same-size copy with its old mtime restored is still noticed). A cache
that cannot be read or written costs a hash, never the start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import structlog

from bbsd import safefs

log = structlog.get_logger("bbsd.fingerprint")
CACHE = "model-digests.json"


def files(named: dict[str, Path | None], state: Path | None) -> tuple[tuple[str, int, str], ...]:
    """(role, size, sha256) of each file given (a None path is left out), in the order given."""
    cache = _read(state / CACHE) if state else {}
    out, changed = [], False
    for role, path in named.items():
        if path is None:
            continue
        try:
            st = os.stat(path)
        except OSError:  # gone: opening it says so (ModelError); there is nothing to name
            continue
        key, stamp = str(Path(path).resolve()), [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]
        known = cache.get(key)
        if not (isinstance(known, dict) and known.get("stamp") == stamp and isinstance(known.get("sha256"), str)):
            try:
                known = {"stamp": stamp, "sha256": file_sha256(path)}
            except OSError:
                continue
            cache[key], changed = known, True
            log.info("model.hashed", file=str(path), size=st.st_size)
        out.append((role, st.st_size, known["sha256"]))
    if changed and state:
        _write(state / CACHE, cache)
    return tuple(out)


def file_sha256(path: Path) -> str:
    """The file's content digest (read, never parsed). Only a regular file is opened (a link the
    configuration names is followed): a FIFO or device named as a model or reference never blocks."""
    with os.fdopen(safefs.open_regular(path, follow=True), "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write(path: Path, cache: dict) -> None:
    """Replace the cache whole (a temp file renamed over it): two processes writing at once lose an
    entry at worst, which is hashed again."""
    tmp = path.with_name(f".{CACHE}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(cache, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        log.debug("model.digest_cache_unwritable", path=str(path), reason=e.strerror)
        with contextlib.suppress(OSError):
            tmp.unlink()
