"""The local delivery worker process (qmail-lspawn + qmail-local).

Run by the scheduler as ``python -m mta.lspawn --root DIR``; reads jobs on stdin and
writes K/Z/D results on stdout (protocol in ``mta.send.spawn``). Each recipient is
delivered by ``mta.local.deliver_local`` through the dot-qmail files in ``alias/``,
at most ``concurrencylocal`` at once (a thread each: deliveries wait on disks and
programs, not on the CPU); the others wait in arrival order. A reload request (the
scheduler's SIGHUP) re-reads the control files: a new ``concurrencylocal`` applies
at once, counting the deliveries already running (a bad file keeps the old values).

Forwards found in dot-qmail files are injected through the queue
(``mta.queue.enqueue``) with the original sender, as qmail-local does through
qmail-queue. A failure to inject fails the delivery temporarily.
A stop request asks the worker to finish what it holds and exit; a bare end of
input (the scheduler died) makes it exit at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mta.control import ControlError, load_control
from mta.interfaces import Delivered, PermFail
from mta.local import LocalJob, deliver_local
from mta.privsep import drop_to
from mta.qq_client import inject
from mta.queue import message_path
from mta.send.spawn import SchedulerGone, encode_results, read_jobs


class LocalWorker:
    def __init__(self, root: Path):
        self.root = root
        self.ctl = load_control(root)
        self.limit = max(1, self.ctl.concurrencylocal)
        self.pool = ThreadPoolExecutor(self.limit)
        self.waiting: deque[tuple] = deque()  # (msg, sender, rid, addr, local) not started yet
        self.running: set[asyncio.Future] = set()
        self.out = sys.stdout.buffer

    def reload(self, _msg: dict | None = None) -> None:
        try:
            self.ctl = load_control(self.root)
        except ControlError as e:
            sys.stderr.write("alert: local worker: unable to reread controls, keeping"
                             f" the old ones: {e}\n")
            return
        limit = max(1, self.ctl.concurrencylocal)
        if limit > self.limit:  # more threads: a new pool; the old one ends with its deliveries
            self.pool.shutdown(wait=False)
            self.pool = ThreadPoolExecutor(limit)
        self.limit = limit
        sys.stderr.write(f"local worker: concurrencylocal now {limit}\n")
        self._start_waiting()

    def _inject(self, sender: str, recipients, message: bytes) -> None:
        inject(self.root, sender, list(recipients), message)

    def _deliver(self, msg: int, sender: str, rid: int, addr: str, local: str) -> list:
        domain = addr.rpartition("@")[2] or self.ctl.envnoathost
        job = LocalJob(alias_dir=self.root / "alias", message_path=message_path(self.root, msg),
                       sender=sender, recipient=f"{local}@{domain}", local=local,
                       domain=domain, inject=self._inject,
                       extra_env=(("MTA_ROOT", str(self.root)),))
        try:
            o = deliver_local(job).outcome
        except Exception as e:  # a bug in one delivery must not kill the others
            return [rid, "Z", f"local delivery crashed: {e!r} (#4.3.0)", "4.3.0"]
        if isinstance(o, Delivered):
            return [rid, "K", o.text or "delivered", "2.0.0"]
        if isinstance(o, PermFail):
            return [rid, "D", o.reason, o.dsn]
        return [rid, "Z", o.reason, o.dsn]

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        try:
            async for job in read_jobs(reader, on_reload=self.reload):
                self.waiting.extend((job["m"], job["s"], rid, addr, local)
                                    for rid, addr, local in job["r"])
                self._start_waiting()
        except SchedulerGone:
            sys.stderr.write("alert: local worker: scheduler gone; exiting\n")
            os._exit(111)
        while self.running:  # a stop request: finish what we hold, the waiting ones too
            await asyncio.wait(list(self.running))
        self.pool.shutdown()

    def _start_waiting(self) -> None:
        loop = asyncio.get_running_loop()
        while self.waiting and len(self.running) < self.limit:
            fut = loop.run_in_executor(self.pool, self._deliver, *self.waiting.popleft())
            self.running.add(fut)
            fut.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future) -> None:
        self.running.discard(fut)
        self.out.write(encode_results([fut.result()]))
        self.out.flush()
        self._start_waiting()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="mta.lspawn")
    ap.add_argument("--root", required=True, type=Path)
    args = ap.parse_args(argv)
    drop_to(args.root, "local")
    asyncio.run(LocalWorker(args.root).run())


if __name__ == "__main__":
    main()
