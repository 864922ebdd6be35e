"""RCPT-time "has this local address a delivery?" answers, cached while alias/ is unchanged.

What it does: ``DeliveryCache(alias_dir)`` is a callable ``(local) -> bool`` with the
answers of ``has_delivery``. Looking a recipient up costs one stat of ``alias/``
instead of opening every candidate ``.qmail-`` file (2-4 per address) on every RCPT.

Theory of operation. Which dot-qmail files exist changes only by creating, removing or
renaming files in ``alias/``, and each of those changes the directory's mtime and ctime.
So the answers are kept while (inode, mtime, ctime) of ``alias/`` stay the same, with two
guards: a directory whose mtime is less than RACY seconds old is not trusted (two changes
within one tick of the file-system clock can leave the same mtime: nothing is cached
until it has settled), and every answer is dropped after MAX_AGE seconds (a candidate that
is a symlink to a file elsewhere can change without touching ``alias/``). At most
MAX_ENTRIES answers are kept (a client probing many addresses cannot grow the process);
past that the cache starts over.

How it fails: it does not raise. When ``alias/`` cannot be stat'ed, every lookup goes to
``has_delivery`` (which treats a temporary problem as "has a delivery").

Public: ``DeliveryCache(alias_dir, clock=time.time)``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from mta.local.dotqmail import has_delivery

__all__ = ["DeliveryCache"]

RACY = 2.0        # seconds: a directory changed more recently than this is not trusted
MAX_AGE = 10.0    # seconds an answer is kept at most
MAX_ENTRIES = 10000


class DeliveryCache:
    def __init__(self, alias_dir: Path | str, clock: Callable[[], float] = time.time) -> None:
        self.alias_dir = Path(alias_dir)
        self._path = os.fspath(alias_dir)
        self._clock = clock
        self._key: tuple[int, int, int] | None = None
        self._since = 0.0  # when the answers were started
        self._answers: dict[str, bool] = {}

    def __call__(self, local: str) -> bool:
        try:
            st = os.stat(self._path)
        except OSError:
            return has_delivery(self.alias_dir, local)
        now = self._clock()
        if now - st.st_mtime < RACY:
            return has_delivery(self.alias_dir, local)
        key = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        if key != self._key or now - self._since > MAX_AGE or len(self._answers) >= MAX_ENTRIES:
            self._key, self._since = key, now
            self._answers = {}
        answer = self._answers.get(local)
        if answer is None:
            answer = self._answers[local] = has_delivery(self.alias_dir, local)
        return answer
