"""RAW + JPEG pairs: two files of one shot are labelled once.

Invariant: a RAW file whose JPEG (or HEIC) sibling — same folder, same stem, written
within `window_s` of it — exists takes its labels from the sibling's sidecar; it is only
labelled from its own pixels when there is no sibling, or the sibling failed. A sibling is a
regular file: a symlink or FIFO of that name is none.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bbsd import formats


def partner(raw: Path, window_s: float) -> Path | None:
    """The JPEG-like sibling of `raw` written within `window_s`, if any (first by extension preference)."""
    try:
        raw_mtime = os.lstat(raw).st_mtime
        names = os.listdir(raw.parent)
    except OSError:
        return None
    stem = raw.stem.casefold()
    candidates = [raw.parent / n for n in names
                  if Path(n).stem.casefold() == stem and formats.extension(Path(n)) in formats.PAIR_SOURCES]
    for cand in sorted(candidates, key=lambda p: formats.PAIR_SOURCES.index(formats.extension(p))):
        try:
            st = os.lstat(cand)  # a link or a FIFO named like the JPEG is no sibling (never opened)
            if stat.S_ISREG(st.st_mode) and abs(st.st_mtime - raw_mtime) <= window_s:
                return cand
        except OSError:
            continue
    return None
