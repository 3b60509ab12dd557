"""The photos in hand, remembered across deaths of the daemon process itself.

Invariant: before a photo is handed to the decoder and the engine its path is written here,
and cleared when it ends in a record (with several worker threads, several photos are in
hand at once). If the daemon dies with photos in hand (kill -9, a native crash, the OOM
killer), the next start finds them; a photo that was in hand at two consecutive deaths is
quarantined instead of being tried a third time, so no single file can hold the service in a
restart loop. The file is tiny and rewritten without fsync: it must survive the process,
not a power cut. It is read only if it is a regular file of at most `READ_LIMIT` bytes (`safefs`):
a FIFO or link put in its place never blocks or redirects the start.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

import structlog

from bbsd import atomic, safefs
from bbsd.errors import SidecarWriteError

log = structlog.get_logger("bbsd.journal")
NAME = "in_hand.json"
DEATHS_TO_QUARANTINE = 2
READ_LIMIT = 1 << 20  # a few paths; anything larger is not ours


class Journal:
    def __init__(self, folder: Path) -> None:
        self.path = folder / NAME
        self._suspects: dict[str, int] = {}  # in hand at the last death(s) -> deaths in a row
        self._in_hand: list[str] = []
        self._lock = threading.Lock()  # worker threads begin and end photos concurrently

    def recover(self) -> list[tuple[Path, int]]:
        """At start: the photos in hand when the daemon last died, each with at how many deaths in a row."""
        with contextlib.suppress(OSError):  # reported by the first write
            self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = self._read()
        in_hand = doc.get("in_hand") or []
        if isinstance(in_hand, str):  # written by a bbsd that had one worker thread
            in_hand = [in_hand]
        before = doc.get("suspects") if isinstance(doc.get("suspects"), dict) else {}
        self._suspects = {p: int(before.get(p, 0)) + 1 for p in in_hand if isinstance(p, str)}
        self._write()
        for photo, deaths in self._suspects.items():
            log.warning("daemon.died_with_photo", path=photo, deaths_in_a_row=deaths,
                        quarantine_at=DEATHS_TO_QUARANTINE)
        return [(Path(p), n) for p, n in self._suspects.items()]

    def begin(self, photo: Path) -> None:
        with self._lock:
            self._in_hand.append(str(photo))
            self._write()

    def end(self, photo: Path) -> None:
        with self._lock:
            self._suspects.pop(str(photo), None)  # it survived this time: the deaths were not its fault
            with contextlib.suppress(ValueError):
                self._in_hand.remove(str(photo))
            self._write()

    def _read(self) -> dict:
        try:
            doc = json.loads(safefs.read_regular(self.path, READ_LIMIT))
        except (OSError, ValueError, RecursionError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _write(self) -> None:
        doc = {"in_hand": self._in_hand, "suspects": self._suspects}
        try:
            atomic.write_bytes(self.path, json.dumps(doc).encode(), durable=False)
        except SidecarWriteError as e:  # the state folder is gone or full: labelling goes on
            log.warning("journal.write_failed", path=str(self.path), message=e.message)
