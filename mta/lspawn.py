"""The local delivery worker process (qmail-lspawn + qmail-local).

Run by the scheduler as ``python -m mta.lspawn --root DIR``; reads jobs on stdin and
writes K/Z/D results on stdout (protocol in ``mta.send.spawn``). Each recipient is
delivered by ``mta.local.deliver_local`` through the dot-qmail files in ``alias/``,
at most ``concurrencylocal`` at once (a thread each: deliveries wait on disks and
programs, not on the CPU).

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mta.control import load_control
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
        self.pool = ThreadPoolExecutor(max(1, self.ctl.concurrencylocal))
        self.out = sys.stdout.buffer

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
        pending: set[asyncio.Future] = set()
        try:
            async for job in read_jobs(reader):
                for rid, addr, local in job["r"]:
                    fut = loop.run_in_executor(self.pool, self._deliver, job["m"], job["s"],
                                               rid, addr, local)
                    fut.add_done_callback(self._done)
                    pending.add(fut)
                    fut.add_done_callback(pending.discard)
        except SchedulerGone:
            sys.stderr.write("alert: local worker: scheduler gone; exiting\n")
            os._exit(111)
        if pending:
            await asyncio.wait(list(pending))
        self.pool.shutdown()

    def _done(self, fut: asyncio.Future) -> None:
        self.out.write(encode_results([fut.result()]))
        self.out.flush()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="mta.lspawn")
    ap.add_argument("--root", required=True, type=Path)
    args = ap.parse_args(argv)
    drop_to(args.root, "local")
    asyncio.run(LocalWorker(args.root).run())


if __name__ == "__main__":
    main()
