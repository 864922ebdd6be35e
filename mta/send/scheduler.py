"""The scheduler (qmail-send's job): who is due, where to, results, retries, bounces.

Theory of operation
-------------------
The queue holds one row a recipient. The scheduler walks the due rows in
``(next_try, id)`` order with a cursor (a "pass"), a batch of a few thousand at a
time, and keeps at most ``window`` recipients in flight, so a million-recipient
fan-out is streamed, never loaded. Each row is routed:

- local (``locals`` / ``virtualdomains``): to the local worker (``mta.lspawn``);
- remote: its domain is resolved (``smtproutes`` first, else DNS; cached by TTL)
  to a list of receiving hosts, and the row goes to the remote worker that owns
  the first host (``mta.send.owners``: by IP), so one worker holds every connection
  to a host, reuses them across messages and domains and alone enforces its limit;
  when that worker's hosts fail and the MX list goes on with hosts another worker
  owns, it answers F and the row is handed on (``_forward``). At most ``per_dest`` rows
  for one host are in flight, so a slow host cannot starve the others. Lookups
  run as tasks: the answers that come at once (cached) are dispatched together;
  a domain whose name servers are slow is dispatched when its answer comes, and
  holds up nothing else (security matrix DN2).

Workers answer K/Z/D per recipient. Results are buffered and committed every
``flush_interval`` seconds in one transaction; only after the commit does a row
leave the in-flight set, so it can never be fetched twice at once. A crash between
a delivery and its commit re-delivers it after restart (at least once); the ids
handed out are noted in ``queue/lock/inflight`` (``mta.send.journal``) so the
restart logs each such re-send as a "possible duplicate". At most ``window``
recipients are in flight, which bounds the duplicates a crash can cause.

Z (temporary) sets ``next_try`` by qmail's schedule; if the attempt was made after
``queuelifetime`` it is converted to a failure with qmail's "too long" text. D
(permanent) marks the row failed. Failures are reported by ``Bouncer``: per
recipient as soon as they happen for VERPed messages (each goes to its own VERP
address), in one QSBMF for the others once the message has nothing left to try.
A message with nothing left is removed ("end msg N"): all those a result batch
finishes go in one commit, so a burst of one-recipient messages costs one WAL flush
a batch, not one a message. A bounce that cannot be queued keeps its message
(``finish_later``), logged, for another try ``FINISH_RETRY`` seconds later or on
SIGALRM. A batch of results that cannot be committed (sqlite3.Error: the lock held
past the busy timeout, a disk error) goes back to the pending results, logged as an
alert, and is tried again after 1 s, doubling up to ``FLUSH_RETRY_MAX``; its rows stay
in flight meanwhile, so nothing is fetched or delivered again.

A pass ends when the cursor runs off the end; a new one starts on a trigger (an
injection pokes ``queue/lock/trigger``), SIGALRM (everything deferred becomes due
now, as qmail), the time of the next due row, or when capacity freed up after rows
were skipped for a busy host.

Signals: ALRM reschedules now; HUP re-reads control files (a bad file keeps the old
ones and logs an alert); TERM stops fetching, lets workers finish, commits, exits.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections import Counter, defaultdict
from pathlib import Path

from mta.control import load_control
from mta.crashpoint import crash_point
from mta.interfaces import PermFail, TempFail
from mta.privsep import drop_to, privsep_active
from mta.queue import clean_queue, open_queue
from mta.send import store
from mta.send.bouncer import Bouncer
from mta.send.journal import InflightJournal
from mta.send.log import SendLog
from mta.send.owners import Handover
from mta.send.router import DNS_TIMEOUT, Router
from mta.send.schedule import TOO_LONG, expired, next_retry
from mta.send.supervise import Flight, Supervision
from mta.verp import is_verp

__all__ = ["Scheduler"]

START = (-1.0, 0)
FINISH_RETRY = 60.0  # seconds before a bounce that could not be queued is tried again
FLUSH_RETRY_MAX = 30.0  # longest wait between tries to commit results (doubling from 1 s)


class Scheduler(Handover, Supervision):
    def __init__(self, root: Path, *, workers: int | None = None, echo: bool = False,
                 window: int = 20000, batch: int = 5000, per_dest: int = 3000,
                 flush_interval: float = 0.1, clock=time.time, local_ips=(),
                 resolve_wait: float = 0.05, dns_timeout: float = DNS_TIMEOUT):
        """``local_ips``: addresses to count as ours besides this machine's interfaces
        (``mta.ipme``, always counted): a best MX among them is #5.4.6 (qmail perm_ambigmx);
        ``resolve_wait``: how long a fetch waits for DNS before dispatching what it has;
        ``dns_timeout``: how long one domain's lookup may take before it is deferred."""
        self.root = Path(root)
        self.local_ips = tuple(local_ips)
        self.resolve_wait = resolve_wait
        self.dns_timeout = dns_timeout
        self.resolving: set[int] = set()
        self.routing: set[asyncio.Task] = set()
        self.nworkers = workers or os.cpu_count() or 1
        self.window, self.batch, self.per_dest = window, batch, per_dest
        self.flush_interval = flush_interval
        self.clock = clock
        self.echo = echo
        self.inflight: dict[int, Flight] = {}
        self.dest_inflight: Counter = Counter()
        self.pending: list[tuple] = []
        self.cursor = START
        self.pass_open = True
        self.pass_wanted = True
        self.skipped = False
        self.stopping = False
        self.privsep = False
        self.wake = asyncio.Event()
        self.msgs: dict[int, store.MessageInfo] = {}
        self.msg_inflight: Counter = Counter()
        self.unreported: set[int] = set()
        self.left: dict[int, int] = {}
        self.finish_later: set[int] = set()  # finished, but a bounce could not be queued
        self.finish_retry_at = 0.0

    # -- lifecycle ---------------------------------------------------------------
    async def run(self) -> None:
        self.ctl = load_control(self.root)
        if privsep_active(self.root):
            # as root: start the workers (each becomes its role's user), then become
            # the queue user before touching the queue (qmail-start's order)
            await self._start_workers()
            self.privsep = drop_to(self.root, "queue")
        clean_queue(self.root)
        self.conn = open_queue(self.root)
        self.log = SendLog(self.root / "log" / "send", echo=self.echo, clock=self.clock)
        self.router = Router(self.ctl, timeout=self.dns_timeout, local_ips=self.local_ips)
        self.journal = InflightJournal(self.root / "queue" / "lock" / "inflight")
        self._report_interrupted()
        self.bouncer = Bouncer(self.root, self.ctl, self.conn, self.log)
        self.left = store.remaining(self.conn)
        (self.root / "queue" / "lock" / "sendpid").write_text(f"{os.getpid()}\n")
        if not self.privsep:
            await self._start_workers()
        self._install_signals()
        trigger_fd = self._open_trigger()
        flusher = asyncio.create_task(self._flush_loop())
        try:
            self._finish_idle_messages()
            await self._main_loop()
        finally:
            flusher.cancel()
            await self._shutdown(trigger_fd)

    async def _main_loop(self) -> None:
        while not self.stopping:
            self._announce_new()
            self._retry_finishing()
            await self._fill()
            timeout = self._sleep_time()
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except asyncio.TimeoutError:
                self.pass_wanted = True

    def _report_interrupted(self) -> None:
        """Log the recipients an earlier run had in flight when it died."""
        for rid, msg, addr in store.still_due(self.conn, self.journal.previous()):
            self.log.line(f"warning: msg {msg} to {addr} was in flight when the scheduler "
                          f"stopped; it will be retried (possible duplicate)")
        self.journal.clear()
        self.log.flush()

    def _busy(self) -> int:
        return len(self.inflight) + len(self.resolving)

    def _sleep_time(self) -> float:
        if self.pass_open and self._busy() < self.window:
            return 0.05
        nxt = store.next_due_time(self.conn)
        if self.finish_later:
            nxt = self.finish_retry_at if nxt is None else min(nxt, self.finish_retry_at)
        if nxt is None:
            return 5.0
        return min(5.0, max(0.05, nxt - self.clock()))

    # -- fetching and dispatching -------------------------------------------------
    def _announce_new(self) -> None:
        new = store.new_messages(self.conn)
        if new:
            crash_point("after_preprocess")
        for info in new:
            self.msgs[info.msg_id] = info
            self.left.setdefault(info.msg_id, info.nrcpt)
            self.log.new_msg(info.msg_id)
            self.log.info_msg(info.msg_id, info.bytes, info.sender, info.qp, info.uid)
        self._finish_messages([info.msg_id for info in new if info.nrcpt == 0])

    async def _fill(self) -> None:
        if not self.pass_open:
            if not self.pass_wanted:
                return
            self.cursor, self.pass_open, self.pass_wanted, self.skipped = START, True, False, False
        while self.pass_open and self._busy() < self.window and not self.stopping:
            # never more than the window in flight: it bounds a crash's duplicates
            limit = min(self.batch, self.window - self._busy())
            rows = store.fetch_due(self.conn, self.clock(), self.cursor, limit)
            if rows:
                self.cursor = (rows[-1].next_try, rows[-1].rcpt_id)
            if len(rows) < limit:
                self.pass_open = False
                self.pass_wanted = self.skipped
            fresh = [r for r in rows
                     if r.rcpt_id not in self.inflight and r.rcpt_id not in self.resolving]
            if fresh:
                await self._dispatch(fresh)
        self.log.flush()

    def _info(self, msg_id: int) -> store.MessageInfo | None:
        info = self.msgs.get(msg_id)
        if info is None:
            info = store.message_info(self.conn, msg_id)
            if info is not None:
                self.msgs[msg_id] = info
        return info

    async def _dispatch(self, rows: list[store.Due]) -> None:
        local_jobs: dict[int, list] = defaultdict(list)
        by_domain: dict[str, list[store.Due]] = defaultdict(list)
        for r in rows:
            local = self.ctl.local_part_for(r.addr)
            if local is not None:
                local_jobs[r.msg_id].append(r)
                self._fly(r, False, None, "local", r.addr)
            else:
                by_domain[r.domain].append(r)
        if local_jobs:
            self.journal.record(r.rcpt_id for rs in local_jobs.values() for r in rs)
            self.local.send_jobs([
                {"m": m, "s": self._info(m).sender,
                 "r": [[r.rcpt_id, r.addr, self.ctl.local_part_for(r.addr)] for r in rs]}
                for m, rs in local_jobs.items()])
        if by_domain:
            await self._dispatch_remote(by_domain)

    async def _dispatch_remote(self, by_domain: dict[str, list[store.Due]]) -> None:
        tasks = {}
        for domain, rows in by_domain.items():
            self._reserve(rows, 1)
            tasks[asyncio.ensure_future(self._resolve(domain))] = domain
        done, slow = await asyncio.wait(tasks, timeout=self.resolve_wait)
        await self._route([(by_domain[tasks[t]], t.result()) for t in done])
        for t in slow:  # DN2: a slow domain is dispatched on its own when it answers
            task = asyncio.create_task(self._route_later(by_domain[tasks[t]], t))
            self.routing.add(task)
            task.add_done_callback(self.routing.discard)

    def _reserve(self, rows: list[store.Due], n: int) -> None:
        """Rows being resolved: not fetched again, and their message is busy (no bounce yet)."""
        for r in rows:
            self.msg_inflight[r.msg_id] += n
            if n > 0:
                self.resolving.add(r.rcpt_id)
            else:
                self.resolving.discard(r.rcpt_id)

    async def _resolve(self, domain: str):
        try:
            return await self.router.resolve(domain)
        except Exception as e:  # a resolver bug must not wedge the rows: retry later
            return TempFail(f"DNS lookup of {domain} crashed: {e!r} (#4.3.0)", "4.3.0")

    async def _route_later(self, rows: list[store.Due], lookup: asyncio.Future) -> None:
        dest = await lookup
        if not self.stopping:
            await self._route([(rows, dest)])
            self.log.flush()

    async def _route(self, answers: list[tuple[list[store.Due], object]]) -> None:
        """Send rows whose destinations are known to the workers (or fail them)."""
        jobs: dict[int, dict[tuple, list]] = defaultdict(lambda: defaultdict(list))
        for rows, dest in answers:
            self._reserve(rows, -1)  # no await from here on: they are flown at once
            if isinstance(dest, (TempFail, PermFail)):
                code = "Z" if isinstance(dest, TempFail) else "D"
                for r in rows:
                    self._fly(r, True, None, "remote", r.addr)
                    self.pending.append([r.rcpt_id, code, dest.reason, dest.dsn])
                continue
            key = tuple(dest[0])
            room = self.per_dest - self.dest_inflight[key]
            if room < len(rows):
                self.skipped = True
                rows = rows[:max(0, room)]
            for r in rows:
                self._fly(r, True, key, "remote", r.addr)
                jobs[self._worker_index(key)][(r.msg_id, tuple(map(tuple, dest)))].append(
                    [r.rcpt_id, r.addr])
        for groups in jobs.values():
            self.journal.record(rid for rs in groups.values() for rid, _ in rs)
        self._send_remote(jobs)
        for w in self.remote:
            if w.alive:
                await w.drain()

    def _fly(self, r: store.Due, remote: bool, dest, channel: str, addr: str) -> None:
        d = self.log.starting(r.msg_id, channel, addr)
        self.inflight[r.rcpt_id] = Flight(d, r.msg_id, remote, dest)
        self.msg_inflight[r.msg_id] += 1
        if dest is not None:
            self.dest_inflight[dest] += 1

    # -- results ------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        delay = self.flush_interval
        while True:
            await asyncio.sleep(delay)
            if not self.pending:
                continue
            try:
                self._flush()
            except sqlite3.Error as e:  # the results wait in memory; nothing is re-sent
                delay = min(max(delay * 2, 1.0), FLUSH_RETRY_MAX)
                self.log.line(f"alert: unable to record delivery results: {e};"
                              f" trying again in {delay:.0f} seconds")
                self.log.flush()
                continue
            delay = self.flush_interval
            self.wake.set()

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        if any(r[1] == "F" for r in batch):
            forwards = [r for r in batch if r[1] == "F"]
            batch = [r for r in batch if r[1] != "F"] + self._forward(forwards)
        now = self.clock()
        delivered, deferred, failed, done = [], [], [], []
        verp_failed: dict[int, list[int]] = defaultdict(list)
        said: list[tuple[int, str, str]] = []  # log lines, written once committed
        for rid, code, text, *_ in batch:
            fl = self.inflight.get(rid)
            if fl is None:
                continue
            info = self._info(fl.msg)
            if code == "K":
                delivered.append((text, rid))
                said.append((fl.delivery, "success", text))
            elif code == "Z" and not expired(info.created, now, self.ctl.queuelifetime):
                deferred.append((next_retry(info.created, now, fl.remote), text, rid))
                said.append((fl.delivery, "deferral", text))
                continue
            else:
                text = f"{text}\n{TOO_LONG}" if code == "Z" else text
                failed.append((text, rid))
                said.append((fl.delivery, "failure", text))
                if is_verp(info.sender):
                    verp_failed[fl.msg].append(rid)
                else:
                    self.unreported.add(fl.msg)
            done.append(fl.msg)
        try:
            store.apply_results(self.conn, delivered, deferred, failed)
        except sqlite3.Error:
            self.pending[:0] = batch  # still in flight: tried again with the next flush
            raise
        for delivery, kind, text in said:
            self.log.result(delivery, kind, text)
        for rid, *_ in batch:
            fl = self.inflight.pop(rid, None)
            if fl is None:
                continue
            self.msg_inflight[fl.msg] -= 1
            if fl.dest is not None:
                self.dest_inflight[fl.dest] -= 1
        if deferred or self.skipped:
            self.pass_wanted = True
        if not self.inflight:
            self.journal.clear()
        for msg_id, rids in verp_failed.items():
            self.bouncer.try_report(self._info(msg_id), only=set(rids))
        finished: dict[int, None] = {}
        for msg_id in done:
            self.left[msg_id] = self.left.get(msg_id, 1) - 1
            if self.left[msg_id] <= 0:
                finished[msg_id] = None
        self._finish_messages(list(finished))
        # as qmail-send's messdone(): failures are reported once nothing of the
        # message is in flight, even while other recipients wait for a retry
        for msg_id in [m for m in self.unreported if self.msg_inflight[m] <= 0]:
            self.unreported.discard(msg_id)
            if msg_id in self.left and msg_id not in self.finish_later:
                self.bouncer.try_report(self._info(msg_id))
        remote = sum(self.dest_inflight.values())
        self.log.status(len(self.inflight) - remote, self.ctl.concurrencylocal,
                        remote, self.ctl.concurrencyremote)
        self.log.flush()

    def _finish_idle_messages(self) -> None:
        """Messages left with nothing to try (e.g. a crash after their last result)."""
        rows = self.conn.execute("SELECT id FROM messages WHERE seen = 1").fetchall()
        self._finish_messages([m for (m,) in rows if self.left.get(m, 0) == 0])

    def _finish_messages(self, msg_ids: list[int]) -> None:
        """Bounce and remove messages with nothing left to try, all in one commit.

        A message whose bounce could not be queued stays (``finish_later``) and is
        tried again after ``FINISH_RETRY`` seconds, or at once on SIGALRM."""
        if not msg_ids:
            return
        infos = {m: info for m in msg_ids if (info := self._info(m)) is not None}
        removed = set(self.bouncer.finish(list(infos.values())))
        kept = set(infos) - removed
        if kept:
            self.finish_later |= kept
            self.finish_retry_at = self.clock() + FINISH_RETRY
        for msg_id in msg_ids:
            if msg_id in kept:
                continue
            if msg_id in removed:
                self.log.end_msg(msg_id)
            self.finish_later.discard(msg_id)
            self.left.pop(msg_id, None)
            self.msgs.pop(msg_id, None)
            self.msg_inflight.pop(msg_id, None)
            self.unreported.discard(msg_id)

    def _retry_finishing(self) -> None:
        if self.finish_later and self.clock() >= self.finish_retry_at:
            self._finish_messages(sorted(self.finish_later))
