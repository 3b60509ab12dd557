"""The photo in hand, remembered across deaths of the daemon process itself.

Invariant: before a photo is handed to the decoder and the engine its path is written here,
and cleared when it ends in a record. If the daemon dies with a photo in hand (kill -9, a
native crash, the OOM killer), the next start finds it; a photo that was in hand at two
consecutive deaths is quarantined instead of being tried a third time, so no single file
can hold the service in a restart loop. The file is tiny and rewritten without fsync: it
must survive the process, not a power cut.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import structlog

from bbsd import atomic
from bbsd.errors import SidecarWriteError

log = structlog.get_logger("bbsd.journal")
NAME = "in_hand.json"
DEATHS_TO_QUARANTINE = 2


class Journal:
    def __init__(self, folder: Path) -> None:
        self.path = folder / NAME
        self._suspect: str | None = None  # in hand at the last death(s)
        self._deaths = 0

    def recover(self) -> tuple[Path, int] | None:
        """At start: the photo that was in hand when the daemon last died, and at how many deaths in a row."""
        with contextlib.suppress(OSError):  # reported by the first write
            self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = self._read()
        in_hand = doc.get("in_hand")
        if not in_hand:
            self._write(None)
            return None
        deaths = int(doc.get("deaths", 0)) + 1 if doc.get("suspect") == in_hand else 1
        self._suspect, self._deaths = in_hand, deaths
        self._write(None)
        log.warning("daemon.died_with_photo", path=in_hand, deaths_in_a_row=deaths,
                    quarantine_at=DEATHS_TO_QUARANTINE)
        return Path(in_hand), deaths

    def begin(self, photo: Path) -> None:
        self._write(str(photo))

    def end(self, photo: Path) -> None:
        if self._suspect == str(photo):  # it survived this time: the deaths were not its fault
            self._suspect, self._deaths = None, 0
        self._write(None)

    def _read(self) -> dict:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _write(self, in_hand: str | None) -> None:
        doc = {"in_hand": in_hand, "suspect": self._suspect, "deaths": self._deaths}
        try:
            atomic.write_bytes(self.path, json.dumps(doc).encode(), durable=False)
        except SidecarWriteError as e:  # the state folder is gone or full: labelling goes on
            log.warning("journal.write_failed", path=str(self.path), message=e.message)
