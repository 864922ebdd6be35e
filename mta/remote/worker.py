"""A remote delivery worker process (qmail-rspawn + qmail-remote in one event loop).

Run by the scheduler as ``python -m mta.remote.worker --root DIR --connections N``;
reads jobs on stdin and writes K/Z/D results on stdout (protocol in
``mta.send.spawn``). It owns every connection to the hosts the scheduler assigns
it, so connections are reused across messages and across domains sharing an MX.

For each job it builds transactions: a VERPed message gets one transaction a
recipient (each with its own ``MAIL FROM``); otherwise up to ``MAX_RCPTS``
recipients of one message share one. Transactions wait in their host's queue
(``HostState``); connection tasks take them in turn, at most ``connections`` at
once in this worker and at most the host's adaptive ceiling per host, and reuse a
connection for up to ``MAX_TXNS_PER_CONN`` transactions (RSET between them).

The body is read from ``queue/mess/N`` and prepared (CRLF, dot-stuffed, final
dot) once per message, then written from that same buffer for every transaction.
A message with the private ``X-Mta-Rcpt-Token`` field (one-click unsubscribe,
``mta.rcpt_token``) is prepared once as a ``TokenBody``: each transaction writes its
segments with that transaction's few bytes of fill between them (QMTP: a copy).

STARTTLS is opportunistic, as Postfix's ``smtp_tls_security_level = may``: when a
server offers it, the session is upgraded before the first ``MAIL``, with no
certificate or name verification (a self-signed or expired certificate still
encrypts; an active attacker can strip the offer, as for every MTA without DANE or
MTA-STS). A server that answers STARTTLS with an error keeps the session in
plaintext. If the TLS handshake itself fails, the connection is dropped and the
worker connects to the same host once more without TLS and delivers in plaintext
(Postfix's fallback to cleartext; ``mta.net.smtp_client``); the mail is never
deferred for want of TLS. The worker then leaves STARTTLS out for that host for
``TLS_RETRY_AFTER`` seconds (an hour; ``mta flush`` forgets it), so a host with a
broken TLS setup does not cost two connections each time. An attacker on the path
gains nothing from this: stripping the STARTTLS offer already forces plaintext.

Failures: a connection that cannot be made or is turned away lowers the host's
ceiling; when nothing to the host works the host is marked down (qmail's timeout
table) and its transactions go to the next MX, or come back as Z (deferred). A
worker connects only to the hosts the scheduler assigned it (a job's ``n`` first
destinations: the scheduler keeps every IP in one worker, so ``concurrencyperhost``
holds across workers); when those are used up and the MX list goes on, it reports
F with the rest of the list and the scheduler hands the recipients to the worker
owning the next host. A
connection that dies mid-transaction reports Z for that transaction's recipients.
A stop request asks the worker to finish what it holds and exit; a bare end of
input (the scheduler died) makes it exit at once, dropping its connections.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import time
from collections import OrderedDict
from pathlib import Path

from mta.control import ControlError, load_control
from mta.interfaces import Delivered, PermFail, TempFail
from mta.net.qm_client import qmtp_send
from mta.net.smtp_client import ConnectionFailed, open_smtp_connection
from mta.privsep import drop_to
from mta.queue import message_path
from mta.rcpt_token import personalize
from mta.remote.body import TokenBody, prepare_message
from mta.remote.hosts import HostState, Txn
from mta.send.spawn import SchedulerGone, encode_results, read_jobs
from mta.verp import is_verp, verp_sender


MAX_RCPTS = 100
MAX_TXNS_PER_CONN = 1000
QMTP_BATCH = 100  # messages handed over on one QMTP connection
BODY_CACHE = 64


def opportunistic_tls_context() -> ssl.SSLContext:
    """The client context for STARTTLS: encrypt when offered, verify nothing (``may``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # TLS 1.2 or later; no CA store to load
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RemoteWorker:
    def __init__(self, root: Path, connections: int, clock=time.monotonic):
        self.root = root
        self.ctl = load_control(root)
        self.connections = connections
        self.clock = clock
        self.hosts: dict[tuple, HostState] = {}
        self.waiting: OrderedDict[tuple, None] = OrderedDict()
        self.total = 0
        self.results: list[list] = []
        self.have_results = asyncio.Event()
        self.bodies: OrderedDict[int, bytes | TokenBody] = OrderedDict()
        self.tasks: set[asyncio.Task] = set()
        self.tls = opportunistic_tls_context()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        w_transport, w_protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, sys.stdout)
        writer = asyncio.StreamWriter(w_transport, w_protocol, None, loop)
        sender = asyncio.create_task(self._send_results(writer))
        try:
            async for job in read_jobs(reader, on_flush=self._forget_down_hosts,
                                       on_reload=self.reload):
                self._take_job(job)
        except SchedulerGone:
            sys.stderr.write("alert: remote worker: scheduler gone; abandoning its deliveries\n")
            os._exit(111)
        while self.tasks:
            await asyncio.wait(list(self.tasks))
        sender.cancel()
        self._write_results(writer)
        await writer.drain()

    def reload(self, msg: dict | None = None) -> None:
        """The scheduler's SIGHUP: re-read the control files. New connections take the
        new helohost and timeouts; every known host takes its new concurrency ceiling
        (a ceiling lowered by the host's own refusals stays lowered) and message rate;
        ``msg["connections"]`` is this worker's new share of concurrencyremote."""
        try:
            ctl = load_control(self.root)
        except ControlError as e:
            sys.stderr.write("alert: remote worker: unable to reread controls, keeping"
                             f" the old ones: {e}\n")
            return
        self.ctl = ctl
        self.connections = max(1, int((msg or {}).get("connections", self.connections)))
        for key, h in self.hosts.items():
            limit, h.rate = self._limits(key)
            h.limit = limit if h.limit >= h.max_limit else min(h.limit, limit)
            h.max_limit = limit
            self._kick(h)
        self._slot_freed()

    def _forget_down_hosts(self) -> None:
        """``mta flush``: the postmaster says try now, so no host stays marked down
        (nor without TLS after a failed handshake)."""
        for h in self.hosts.values():
            h.down_until = h.down_for = h.plain_until = 0.0

    # -- jobs into host queues ------------------------------------------------------
    def _take_job(self, job: dict) -> None:
        dests = [tuple(d) for d in job["d"]]
        n = job.get("n", len(dests))  # the first n are ours; the rest other workers'
        own, onward = dests[:n], job["d"][n:]
        sender, rcpts = job["s"], job["r"]
        if is_verp(sender):
            txns = [Txn(job["m"], verp_sender(sender, addr), [(rid, addr)], own[1:], onward)
                    for rid, addr in rcpts]
        else:
            txns = [Txn(job["m"], sender, [tuple(r) for r in rcpts[i:i + MAX_RCPTS]], own[1:],
                        onward)
                    for i in range(0, len(rcpts), MAX_RCPTS)]
        for t in txns:
            self._queue(dests[0], t)

    def _host(self, key: tuple) -> HostState:
        h = self.hosts.get(key)
        if h is None:
            limit, rate = self._limits(key)
            h = self.hosts[key] = HostState(key, max_limit=limit, rate=rate)
        return h

    def _limits(self, key: tuple) -> tuple[int, float]:
        """The host's concurrency ceiling and message rate from the control files."""
        ip = key[0]
        return (self.ctl.hostconcurrency.get(ip, self.ctl.concurrencyperhost) or 1,
                float(self.ctl.hostrate.get(ip, 0)))

    def _queue(self, key: tuple, txn: Txn) -> None:
        h = self._host(key)
        if h.is_down(self.clock()):
            self._fail_over(txn, TempFail(f"{key[0]} is not answering; will retry later", "4.4.1"))
            return
        h.queue.append(txn)
        self._kick(h)

    def _fail_over(self, txn: Txn, outcome) -> None:
        """Hand a transaction to its next MX (ours, else via the scheduler), or report it."""
        if isinstance(outcome, TempFail) and txn.dests:
            nxt, txn.dests = txn.dests[0], txn.dests[1:]
            self._queue(nxt, txn)
        elif isinstance(outcome, TempFail) and txn.onward:
            for rid, addr in txn.rcpts:
                self.results.append([rid, "F", outcome.reason, outcome.dsn, addr, txn.onward])
            self.have_results.set()
        else:
            self._report(txn, [outcome] * len(txn.rcpts))

    def _kick(self, h: HostState) -> None:
        while h.wanted() > 0:
            if self.total >= self.connections:
                self.waiting[h.key] = None
                return
            h.active += 1
            self.total += 1
            t = asyncio.create_task(self._connection(h))
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    def _slot_freed(self) -> None:
        while self.waiting and self.total < self.connections:
            key, _ = self.waiting.popitem(last=False)
            self._kick(self.hosts[key])

    # -- one connection -------------------------------------------------------------
    async def _connection(self, h: HostState) -> None:
        try:
            await self._converse(h)
        finally:
            h.active -= 1
            self.total -= 1
            if h.queue:
                self._kick(h)
            self._slot_freed()

    async def _converse(self, h: HostState) -> None:
        if len(h.key) > 2 and h.key[2] == "qmtp":
            await self._converse_qmtp(h)
            return
        ctl = self.ctl
        tls = self.tls if h.tls_wanted(self.clock()) else None
        try:
            conn = await open_smtp_connection(
                h.key[0], h.key[1], helo=ctl.helohost, timeout_connect=ctl.timeoutconnect,
                timeout_reply=ctl.timeoutremote, tls_context=tls)
        except ConnectionFailed as cf:
            outcome = cf.outcome
            if isinstance(outcome, PermFail):
                # RD5: a 5xx greeting or EHLO/HELO refusal says "not here", not "no
                # such recipient": next MX, else defer (qmail "greeting failed" is Z;
                # Postfix smtp_skip_5xx_greeting)
                outcome = TempFail(outcome.reason, "4" + outcome.dsn[1:])
            if h.connect_failed(self.clock()):
                while h.queue:
                    self._fail_over(h.queue.popleft(), outcome)
            return
        if conn.tls_failed:
            h.tls_failed(self.clock())
        h.established += 1
        try:
            while h.queue and conn.transactions_done < MAX_TXNS_PER_CONN:
                wait = h.delay_for_rate(self.clock())
                if wait > 0:
                    await asyncio.sleep(wait)  # control/hostrate: pace this host
                    if not h.queue:
                        break
                txn = h.queue.popleft()
                body = self._body(txn.msg)
                if body is None:
                    self._report(txn, [TempFail("unable to read the queued message", "4.3.0")]
                                 * len(txn.rcpts))
                    continue
                addrs = [a for _, a in txn.rcpts]
                if type(body) is not bytes:
                    body = body.for_recipients(addrs)
                outcomes = await conn.send_transaction(txn.sender, addrs, body)
                self._report(txn, outcomes)
                if not conn.usable:
                    break
                h.transaction_done()
            await conn.quit()
        finally:
            h.established -= 1
            conn.close()

    async def _converse_qmtp(self, h: HostState) -> None:
        """Hand a batch of transactions to a QMTP host on one connection (qmtproutes)."""
        txns, messages = [], []
        while h.queue and len(txns) < QMTP_BATCH:
            txn = h.queue.popleft()
            try:
                raw = message_path(self.root, txn.msg).read_bytes()
            except OSError:
                self._report(txn, [TempFail("unable to read the queued message", "4.3.0")]
                             * len(txn.rcpts))
                continue
            txns.append(txn)
            addrs = [a for _, a in txn.rcpts]
            messages.append((txn.sender, addrs, personalize(raw, addrs)))
        if not txns:
            return
        h.established += 1
        try:
            results = await qmtp_send(h.key[0], h.key[1], messages,
                                      timeout=self.ctl.timeoutremote,
                                      connect_timeout=self.ctl.timeoutconnect)
        finally:
            h.established -= 1
        if all(isinstance(o, TempFail) for outs in results for o in outs) and \
                h.connect_failed(self.clock()):
            for txn, outs in zip(txns, results):
                self._fail_over(txn, outs[0])
            while h.queue:
                self._fail_over(h.queue.popleft(), results[0][0])
            return
        for txn, outs in zip(txns, results):
            self._report(txn, outs)
            h.transaction_done()

    def _body(self, msg: int) -> bytes | TokenBody | None:
        body = self.bodies.get(msg)
        if body is not None:
            self.bodies.move_to_end(msg)
            return body
        try:
            raw = message_path(self.root, msg).read_bytes()
        except OSError:
            return None
        body = self.bodies[msg] = prepare_message(raw)
        if len(self.bodies) > BODY_CACHE:
            self.bodies.popitem(last=False)
        return body

    # -- results --------------------------------------------------------------------
    def _report(self, txn: Txn, outcomes) -> None:
        for (rid, _), o in zip(txn.rcpts, outcomes):
            if isinstance(o, Delivered):
                self.results.append([rid, "K", o.text, "2.0.0"])
            elif isinstance(o, PermFail):
                self.results.append([rid, "D", o.reason, o.dsn])
            else:
                self.results.append([rid, "Z", o.reason, o.dsn])
        self.have_results.set()

    async def _send_results(self, writer: asyncio.StreamWriter) -> None:
        while True:
            await self.have_results.wait()
            await asyncio.sleep(0.01)  # gather a batch: one line per ~10 ms
            self.have_results.clear()
            self._write_results(writer)
            await writer.drain()

    def _write_results(self, writer: asyncio.StreamWriter) -> None:
        if self.results:
            batch, self.results = self.results, []
            writer.write(encode_results(batch))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="mta.remote.worker")
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--connections", type=int, default=20)
    args = ap.parse_args(argv)
    import uvloop

    drop_to(args.root, "remote")
    uvloop.run(RemoteWorker(args.root, args.connections).run())


if __name__ == "__main__":
    main()
