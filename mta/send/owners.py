"""Which remote worker owns a receiving host (so per-host limits hold across workers).

Every connection to one IP comes from one worker process: the worker that owns it,
``crc32(ip) % workers`` (the IP alone, so every port and every MX list that names
the host agree; crc32 rather than ``hash`` so the owner is the same after a
restart). A job goes to the owner of its first host with ``n``, the number of
leading hosts of its MX list that worker also owns; it fails over among those
itself and hands the rest of the list back (an F result) for the scheduler to
pass to the next owner. So only the owner's ``HostState`` ever counts connections
to a host, and ``concurrencyperhost`` is a true per-host cap with any number of
workers.

Public: worker_for(ip, workers), owned_prefix(dests, workers) (pure functions);
Handover, mixed into ``mta.send.scheduler.Scheduler`` (it uses the scheduler's
``remote``, ``inflight``, ``dest_inflight`` and ``_info``): ``_worker_index``,
``_send_remote(jobs)`` and ``_forward(rows)`` for F results.
How it fails: an F row whose next owner is not running (it died and is being
restarted) comes back as a Z result (deferred), never lost.
"""

from __future__ import annotations

import zlib
from collections import defaultdict

__all__ = ["worker_for", "owned_prefix", "Handover"]


def worker_for(ip: str, workers: int) -> int:
    """Index of the worker that owns every connection to ``ip``."""
    return zlib.crc32(ip.encode()) % workers


def owned_prefix(dests, workers: int) -> int:
    """How many leading ``(ip, port…)`` of ``dests`` belong to the first one's owner."""
    idx = worker_for(dests[0][0], workers)
    n = 1
    while n < len(dests) and worker_for(dests[n][0], workers) == idx:
        n += 1
    return n


class Handover:
    """Job routing to the owning worker, and F hand-overs, for ``Scheduler`` (a mixin)."""

    def _send_remote(self, jobs: dict[int, dict[tuple, list]]) -> None:
        # "n": how many leading hosts of "d" the worker owns (owned_prefix)
        for idx, groups in jobs.items():
            self.remote[idx].send_jobs([
                {"m": m, "s": self._info(m).sender, "d": [list(d) for d in ds],
                 "n": owned_prefix(ds, len(self.remote)), "r": rs}
                for (m, ds), rs in groups.items()])

    def _worker_index(self, dest: tuple) -> int:
        return worker_for(dest[0], len(self.remote))

    def _forward(self, rows: list[list]) -> list[list]:
        """Hand F rows to the owner of their next host (still in flight); Z if it is down."""
        jobs: dict[int, dict[tuple, list]] = defaultdict(lambda: defaultdict(list))
        stuck = []
        for rid, _, text, dsn, addr, onward in rows:
            fl = self.inflight.get(rid)
            if fl is None:
                continue  # forgotten meanwhile (its worker died): fetched again later
            dests = tuple(map(tuple, onward))
            idx = self._worker_index(dests[0])
            if not self.remote[idx].alive:
                stuck.append([rid, "Z", text, dsn])
                continue
            self.dest_inflight[fl.dest] -= 1
            fl.dest = dests[0]
            self.dest_inflight[fl.dest] += 1
            jobs[idx][(fl.msg, dests)].append([rid, addr])
        self._send_remote(jobs)
        return stuck
