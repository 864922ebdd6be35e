"""The local delivery worker process (qmail-lspawn + qmail-local).

Run by the scheduler as ``python -m mta.lspawn --root DIR``; reads jobs on stdin and
writes K/Z/D results on stdout (protocol in ``mta.send.spawn``). Each recipient is
delivered by ``mta.local.deliver_local`` through the dot-qmail files in ``alias/``,
at most ``concurrencylocal`` at once, each in one of that many threads
(deliveries wait on disks and programs, not on the CPU); the others wait in arrival
order. The main thread only reads stdin (blocking reads, no event loop); a delivery
thread writes its own result line when it is done. A reload request (the
scheduler's SIGHUP) re-reads the control files: a new ``concurrencylocal`` applies
at once, counting the deliveries already running (a bad file keeps the old values).

Forwards found in dot-qmail files are injected through the queue
(``mta.queue.enqueue``) with the original sender, as qmail-local does through
qmail-queue. A failure to inject fails the delivery temporarily.
A stop request asks the worker to finish what it holds and exit; a bare end of
input, or a result that cannot be written (the scheduler died), makes it exit at
once with 111.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections import deque
from pathlib import Path

from mta.control import ControlError, load_control
from mta.interfaces import Delivered, PermFail
from mta.local import LocalJob, deliver_local
from mta.privsep import drop_to
from mta.qq_client import inject
from mta.queue import message_path
from mta.send.wire import SchedulerGone, encode_results, iter_jobs


class LocalWorker:
    def __init__(self, root: Path, out_fd: int = 1):
        self.root = root
        self.alias_dir = root / "alias"
        self.out_fd = out_fd
        self.ctl = load_control(root)
        self.limit = max(1, self.ctl.concurrencylocal)
        self.waiting: deque[tuple] = deque()  # (msg, sender, rid, addr, local) not started yet
        self.running = 0
        self.stopping = False
        self.cond = threading.Condition()
        self.out_lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self._grow()

    def _grow(self) -> None:
        """One thread per allowed delivery (more when the limit grows; never fewer)."""
        while len(self.threads) < self.limit:
            t = threading.Thread(target=self._serve, name=f"local-{len(self.threads)}",
                                 daemon=True)
            self.threads.append(t)
            t.start()

    def reload(self, _msg: dict | None = None) -> None:
        try:
            ctl = load_control(self.root)
        except ControlError as e:
            sys.stderr.write("alert: local worker: unable to reread controls, keeping"
                             f" the old ones: {e}\n")
            return
        with self.cond:
            self.ctl = ctl
            self.limit = max(1, ctl.concurrencylocal)
            self._grow()
            self.cond.notify_all()
        sys.stderr.write(f"local worker: concurrencylocal now {self.limit}\n")

    def _inject(self, sender: str, recipients, message: bytes) -> None:
        inject(self.root, sender, list(recipients), message)

    def _deliver(self, msg: int, sender: str, rid: int, addr: str, local: str) -> list:
        domain = addr.rpartition("@")[2] or self.ctl.envnoathost
        job = LocalJob(alias_dir=self.alias_dir, message_path=message_path(self.root, msg),
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

    def run(self) -> None:
        try:
            # a job line can hold thousands of recipients: read it in large pieces
            stdin = open(sys.stdin.fileno(), "rb", buffering=1 << 20, closefd=False)
            for job in iter_jobs(stdin, on_reload=self.reload):
                with self.cond:
                    self.waiting.extend((job["m"], job["s"], rid, addr, local)
                                        for rid, addr, local in job["r"])
                    self.cond.notify_all()
        except SchedulerGone:
            sys.stderr.write("alert: local worker: scheduler gone; exiting\n")
            os._exit(111)
        with self.cond:  # a stop request: finish what we hold, the waiting ones too
            self.stopping = True
            self.cond.notify_all()
        for t in self.threads:
            t.join()

    def _serve(self) -> None:
        while True:
            with self.cond:
                while not self.waiting or self.running >= self.limit:
                    if self.stopping and not self.waiting:
                        return
                    self.cond.wait()
                item = self.waiting.popleft()
                self.running += 1
            line = encode_results([self._deliver(*item)])
            with self.cond:
                self.running -= 1
                self.cond.notify()
            self._write(line)

    def _write(self, line: bytes) -> None:
        with self.out_lock:
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(self.out_fd, view):]
            except OSError as e:  # nobody reads our results: the scheduler is gone
                sys.stderr.write(f"alert: local worker: cannot report results: {e}; exiting\n")
                os._exit(111)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="mta.lspawn")
    ap.add_argument("--root", required=True, type=Path)
    args = ap.parse_args(argv)
    drop_to(args.root, "local")
    LocalWorker(args.root).run()


if __name__ == "__main__":
    main()
