"""The scheduler's plumbing: worker processes, signals and the injection trigger.

``Supervision`` is mixed into ``mta.send.scheduler.Scheduler`` (it uses the
scheduler's state: ``inflight``, ``remote``, ``local``, ``log``...). It starts one
local and N remote worker processes (``mta.send.spawn``) and restarts a worker that
dies, after putting what it had in flight back to due (delivered again: possibly a
duplicate, never lost); it maps qmail-send's signals (ALRM: everything deferred
is due now and the workers forget hosts marked down; HUP: re-read control files,
keeping the old ones if a file is bad, and ask every worker to do the same (the
local one applies a new ``concurrencylocal``; remote ones a new helohost, timeouts,
per-host concurrency and rate, and its new share of ``concurrencyremote``, divided
among the workers started with the scheduler, at least one connection each); TERM/INT:
stop); it reads the
``queue/lock/trigger`` FIFO that injections poke; and it shuts everything down in
order (workers finish, results are committed, the log is closed).

Public: Flight (one recipient in flight), Supervision (mixin).
How it fails: a worker that dies is logged ("alert: ... died; restarting it") and
restarted; a trigger FIFO that cannot be opened is logged and the scheduler polls.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass

from mta.control import ControlError, load_control
from mta.send import store
from mta.send.router import Router
from mta.send.spawn import WorkerProcess

__all__ = ["Flight", "Supervision"]


@dataclass(slots=True)
class Flight:
    delivery: int
    msg: int
    remote: bool
    dest: tuple | None


class Supervision:
    """Worker processes, signals and the trigger for ``Scheduler`` (a mixin)."""

    async def _start_workers(self) -> None:
        n = max(1, min(self.nworkers, self.ctl.concurrencyremote or 1))
        self.remote = [WorkerProcess("mta.remote.worker", self._remote_args(n),
                                     f"remote worker {i}") for i in range(n)]
        self.local = WorkerProcess("mta.lspawn", ["--root", str(self.root)], "local worker")
        self.readers = []
        for w in self.remote + [self.local]:
            await w.start()
            self.readers.append(asyncio.create_task(self._read_results(w)))

    def _remote_share(self, n: int) -> int:
        """Connections each of ``n`` remote workers may hold: concurrencyremote / n."""
        return max(1, self.ctl.concurrencyremote // n)

    def _remote_args(self, n: int) -> list[str]:
        return ["--root", str(self.root), "--connections", str(self._remote_share(n))]

    async def _read_results(self, worker: WorkerProcess) -> None:
        while True:
            async for batch in worker.results():
                self.pending.extend(batch)
            if self.stopping:
                return
            if self.privsep:  # no longer root: cannot start it under its own uid again
                self.log.line(f"alert: {worker.name} died; exiting so mta start restarts us")
                self._forget_worker(worker)
                self.exit_code = 111
                self._on_term()
                return
            self.log.line(f"alert: {worker.name} died; restarting it")
            self._forget_worker(worker)
            await asyncio.sleep(0.5)
            await worker.start()

    def _forget_worker(self, worker: WorkerProcess) -> None:
        """Rows in flight at a dead worker go back to being due (maybe delivered twice)."""
        local = worker is self.local
        idx = None if local else self.remote.index(worker)
        def owned(fl: Flight) -> bool:
            if local:
                return not fl.remote
            return fl.dest is not None and self._worker_index(fl.dest) == idx

        lost = [rid for rid, fl in self.inflight.items() if owned(fl)]
        for rid in lost:
            fl = self.inflight.pop(rid)
            self.msg_inflight[fl.msg] -= 1
            if fl.dest is not None:
                self.dest_inflight[fl.dest] -= 1
            self.log.result(fl.delivery, "deferral", "worker died; will retry (possible duplicate)")
        self.pass_wanted = True

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGALRM, self._on_alarm)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        loop.add_signal_handler(signal.SIGTERM, self._on_term)
        loop.add_signal_handler(signal.SIGINT, self._on_term)

    def _on_alarm(self) -> None:
        store.reschedule_all(self.conn, self.clock())
        self.finish_retry_at = 0.0  # and bounces that could not be queued are tried again
        self.router.forget()
        for w in self.remote:
            w.send_flush()
        self._want_pass()

    def _on_hup(self) -> None:
        try:
            self.ctl = load_control(self.root)
        except ControlError as e:
            self.log.line(f"alert: unable to reread controls, keeping the old ones: {e}")
            return
        self.router = Router(self.ctl, timeout=self.dns_timeout, local_ips=self.local_ips)
        self.bouncer.ctl = self.ctl
        self.local.send_reload()  # concurrencylocal
        n = len(self.remote)  # fixed while running: hosts are assigned to workers
        for w in self.remote:  # helohost, timeouts, per-host concurrency and rate, its share
            w.args = self._remote_args(n)  # a worker restarted later starts with them too
            w.send_reload(connections=self._remote_share(n))
        self._want_pass()

    def _on_term(self) -> None:
        self.stopping = True
        self.wake.set()

    def _want_pass(self) -> None:
        self.pass_wanted = True
        self.wake.set()

    def _open_trigger(self) -> int | None:
        path = self.root / "queue" / "lock" / "trigger"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            # keep a writer open ourselves so the FIFO never reports EOF
            self._trigger_w = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            self.log.line(f"warning: trouble opening {path}: {e}; polling instead")
            return None
        asyncio.get_running_loop().add_reader(fd, self._on_trigger, fd)
        return fd

    def _on_trigger(self, fd: int) -> None:
        try:
            os.read(fd, 4096)
        except BlockingIOError:
            pass
        self._want_pass()

    async def _shutdown(self, trigger_fd: int | None) -> None:
        for t in list(self.routing):
            t.cancel()
        for w in self.remote + [self.local]:
            await w.stop()
        # the workers have exited: let the readers take their last results first
        await asyncio.wait(self.readers, timeout=5)
        for r in self.readers:
            r.cancel()
        self._flush()
        if trigger_fd is not None:
            asyncio.get_running_loop().remove_reader(trigger_fd)
            os.close(trigger_fd)
            os.close(self._trigger_w)
        self.log.line("status: exiting")
        if not self.inflight:
            self.journal.clear()
        self.journal.close()
        self.log.close()
        self.conn.close()
