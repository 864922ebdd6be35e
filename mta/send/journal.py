"""The in-flight journal: which recipients were handed to a worker and not yet settled.

The scheduler commits delivery results in batches, so a crash (SIGKILL, power cut)
loses the results of whatever was in flight: those rows are still pending or
deferred in ``queue.db`` and are delivered again after the restart (at least once,
never lost). This journal lets the restarted scheduler say which re-sends may be
duplicates, so a postmaster reading the log can tell them from fresh deliveries.

``queue/lock/inflight`` holds one recipient id a line. ``record(ids)`` appends
the ids of a dispatch batch (one ``write``, no fsync: the page cache survives the
death of the process, and after a power cut the worst case is a missing warning,
never a missing delivery); ``clear()`` truncates it whenever nothing is in flight
(so it holds at most what went out since the scheduler was last idle);
``previous()`` reads what an earlier run left behind.

Public: InflightJournal(path) with previous(), record(ids), clear(), close().
How it fails: an unreadable or garbled journal yields the ids it can parse; write
errors raise OSError to the scheduler, which logs them and carries on (the journal
only feeds log lines, never decisions about what to deliver).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

__all__ = ["InflightJournal"]


class InflightJournal:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._dirty = os.fstat(self._fd).st_size > 0

    def previous(self) -> list[int]:
        """Recipient ids left by the last run (in order, without repeats)."""
        try:
            text = self.path.read_bytes()
        except OSError:
            return []
        seen: dict[int, None] = {}
        for word in text.split():
            if word.isdigit():
                seen.setdefault(int(word), None)
        return list(seen)

    def record(self, ids: Iterable[int]) -> None:
        data = b"".join(b"%d\n" % i for i in ids)
        if data:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            self._dirty = True

    def clear(self) -> None:
        if self._dirty:
            os.ftruncate(self._fd, 0)
            self._dirty = False

    def close(self) -> None:
        os.close(self._fd)
