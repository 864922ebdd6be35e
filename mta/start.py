"""``mta start``: start and supervise every component (qmail-start + supervise).

Components, each a separate process:

- the queue owner (``python -m mta.queued``), started first: the listeners hand it
  their messages over ``queue/lock/qq.sock`` (group commit). The listeners start
  once its socket answers (or after OWNER_WAIT seconds; until it answers they
  reply 451). On SIGTERM it is stopped last, after the listeners, so a message
  a listener is still handing in gets its commit and its 250;
- the scheduler with its delivery workers (``mta send``);
- one listener process a protocol: SMTP always (``--smtp``, default
  127.0.0.1:2525), QMTP and QMQP when asked (``--qmtp``, ``--qmqp``);
- the read-only progress endpoint when asked (``--progress``, see mta.progress).

A component that exits is restarted after a short pause (doubling up to 30 s while
it keeps dying within seconds of its start, as supervise's back-off). Signals:
SIGHUP is passed to every component (each re-reads its control files and keeps
the old ones if a new file is bad); SIGTERM or SIGINT is passed on, and ``mta
start`` exits once all components have (the scheduler lets in-flight deliveries
end, commits, and exits; nothing accepted is lost because everything accepted is
already in the queue). SIGALRM is passed to the scheduler (retry everything now).

Control files are validated before anything starts: a bad file is an error naming
the file and line, and nothing runs on half a configuration.

Public: Supervisor(root, smtp, qmtp=None, qmqp=None), Component.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Supervisor", "Component"]

QUICK_DEATH = 5.0
MAX_PAUSE = 30.0
OWNER_WAIT = 10.0


@dataclass
class Component:
    name: str
    argv: list[str]
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    pause: float = 0.5
    restarts: int = 0


class Supervisor:
    def __init__(self, root: Path, smtp: tuple[str, int] | None, qmtp=None, qmqp=None,
                 workers: int | None = None, progress=None, smtp_procs: int = 1):
        py = sys.executable
        r = str(root)
        self.root = root
        send = [py, "-m", "cli.mta_cmd", "--root", r, "send"]
        if workers:
            send += ["--workers", str(workers)]
        self.owner = Component("queue owner", [py, "-m", "mta.queued", "--root", r])
        self.components = [self.owner, Component("send", send)]
        for proto, addr in (("smtp", smtp), ("qmtp", qmtp), ("qmqp", qmqp)):
            if addr:
                argv = [py, "-m", "mta.listen", "--root", r, f"--{proto}", f"{addr[0]}:{addr[1]}"]
                procs = smtp_procs if proto == "smtp" else 1
                if procs > 1:
                    argv += ["--share", str(procs)]
                for n in range(procs):  # "smtp listener", "smtp listener 2", ...
                    name = f"{proto} listener" + (f" {n + 1}" if n else "")
                    self.components.append(Component(name, list(argv)))
        if progress:
            self.components.append(Component("progress endpoint", [
                py, "-m", "mta.progress", "--root", r, "--listen", f"{progress[0]}:{progress[1]}"]))
        self.stopping = False

    def _say(self, text: str) -> None:
        sys.stderr.write(f"mta start: {text}\n")
        sys.stderr.flush()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._forward(signal.SIGHUP))
        loop.add_signal_handler(signal.SIGALRM, lambda: self._forward(signal.SIGALRM, "send"))
        owner = asyncio.create_task(self._keep(self.owner))
        await self._wait_owner()
        await asyncio.gather(*(self._keep(c) for c in self.components if c is not self.owner))
        self._forward(signal.SIGTERM, self.owner.name)  # the listeners are gone: now the owner
        await owner
        self._say("all components stopped")
        return 0

    async def _wait_owner(self) -> None:
        """Until the queue owner's socket accepts a connection (bounded)."""
        from mta.qq_client import socket_path

        path = str(socket_path(self.root))
        deadline = time.monotonic() + OWNER_WAIT
        while not self.stopping and time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_unix_connection(path)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            return
        if not self.stopping:
            self._say(f"queue owner not answering on {path} after {OWNER_WAIT:.0f}s;"
                      " starting the listeners anyway")

    async def _keep(self, c: Component) -> None:
        while not self.stopping:
            c.started = time.monotonic()
            c.proc = await asyncio.create_subprocess_exec(*c.argv)
            self._say(f"started {c.name} (pid {c.proc.pid})")
            code = await c.proc.wait()
            if self.stopping:
                break
            lived = time.monotonic() - c.started
            c.pause = min(MAX_PAUSE, c.pause * 2) if lived < QUICK_DEATH else 0.5
            c.restarts += 1
            self._say(f"{c.name} exited with {code} after {lived:.1f}s; restarting in {c.pause:.1f}s")
            await asyncio.sleep(c.pause)

    def _forward(self, sig: int, only: str | None = None) -> None:
        for c in self.components:
            if (only is None or c.name == only) and c.proc and c.proc.returncode is None:
                c.proc.send_signal(sig)

    def _stop(self) -> None:
        if not self.stopping:
            self._say("stopping")
        self.stopping = True
        for c in self.components:
            if c is not self.owner:
                self._forward(signal.SIGTERM, c.name)
