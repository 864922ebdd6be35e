"""Delivery worker processes and the line protocol between them and the scheduler.

As qmail-send talks to qmail-rspawn and qmail-lspawn over pipes, the scheduler runs
each delivery worker as a child process (``python -m mta.remote.worker`` or
``python -m mta.lspawn``) and talks to it over its stdin/stdout, one JSON object a
line:

    scheduler -> worker   {"jobs": [{"m": msg, "s": sender, "d": [[ip, port], ...], "n": k,
                                      "r": [[rcpt_id, address, local], ...]}, ...]}
    scheduler -> worker   {"flush": 1}  forget which hosts looked down (``mta flush``)
    scheduler -> worker   {"reload": 1} re-read the control files (SIGHUP); a remote
                          worker's also says its new share: {"reload": 1, "connections": N}
    scheduler -> worker   {"stop": 1}   then end of input: finish what you hold, exit
    worker -> scheduler   {"res": [[rcpt_id, "K"|"Z"|"D", text, dsn], ...]}
    worker -> scheduler   {"res": [[rcpt_id, "F", text, dsn, address, [[ip, port], ...]]]}

``d`` (destinations, remote only) lists the receiving hosts in MX order, of which
the worker may connect to the first ``n`` (default all; ``mta.send.owners``); F
means those failed temporarily and the rest of the list (the last field) is for
another worker: the scheduler hands the recipient on, it is no result. ``local``
(local only) is the local part after locals/virtualdomains mapping. K, Z and D are
qmail's success, temporary and permanent reports. JSON rather than pickle: a worker
parses untrusted network input and may run under another uid, so what it sends back
must not be able to run code in the scheduler.

End of input without ``stop`` means the scheduler died: nobody can record what
the worker would still deliver, and a restarted scheduler hands the same rows out
again, so the worker exits at once (``read_jobs`` raises ``SchedulerGone``) rather
than deliver them a second time in parallel (security matrix QF10).

Public: WorkerProcess (start, send_jobs, send_flush, send_reload, results(), stop),
read_jobs(reader, on_flush, on_reload) (worker side, asyncio); from ``mta.send.wire``
(no asyncio there): encode_results, parse_line, iter_jobs (worker side, blocking
reads), SchedulerGone.
A worker that dies is reported by ``results()`` ending; the scheduler then forgets
what it had in flight there (it is fetched again: at least once, never lost).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import AsyncIterator

from mta.send.wire import SchedulerGone, encode_results, parse_line

__all__ = ["WorkerProcess", "encode_results", "read_jobs", "SchedulerGone"]

_LIMIT = 64 * 1024 * 1024


async def read_jobs(reader: asyncio.StreamReader, on_flush=None,
                    on_reload=None) -> AsyncIterator[dict]:
    """Worker side: yield each job until a stop request; SchedulerGone on a bare EOF."""
    while line := await reader.readline():
        jobs = parse_line(line, on_flush, on_reload)
        if jobs is None:
            return
        for job in jobs:
            yield job
    raise SchedulerGone


class WorkerProcess:
    """One child worker; ``module`` is the ``python -m`` module to run."""

    def __init__(self, module: str, args: list[str], name: str):
        self.module, self.args, self.name = module, args, name
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = dict(os.environ)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, *self.args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=_LIMIT, env=env)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def send_jobs(self, jobs: list[dict]) -> None:
        assert self.proc and self.proc.stdin
        self.proc.stdin.write(json.dumps({"jobs": jobs}, separators=(",", ":")).encode() + b"\n")

    def send_flush(self) -> None:
        self._send_control(b'{"flush":1}\n')

    def send_reload(self, **extra) -> None:
        self._send_control(json.dumps({"reload": 1, **extra}, separators=(",", ":")).encode()
                           + b"\n")

    def _send_control(self, line: bytes) -> None:
        if self.alive and self.proc.stdin and not self.proc.stdin.is_closing():
            self.proc.stdin.write(line)

    async def drain(self) -> None:
        assert self.proc and self.proc.stdin
        await self.proc.stdin.drain()

    async def results(self) -> AsyncIterator[list[list]]:
        """Yield each batch of results until the worker's stdout closes."""
        assert self.proc and self.proc.stdout
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                return
            try:
                yield json.loads(line)["res"]
            except (ValueError, KeyError, TypeError):
                sys.stderr.write(f"alert: {self.name} sent a mangled report line; ignored\n")

    async def stop(self, timeout: float = 10.0) -> None:
        """Close its input (it finishes what it has, then exits); kill it if it lingers."""
        if not self.proc:
            return
        if self.proc.stdin and not self.proc.stdin.is_closing():
            self.proc.stdin.write(b'{"stop":1}\n')
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
