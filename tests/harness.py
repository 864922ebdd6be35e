"""An mta instance in a temporary folder, with `mta send` running as a real process.

``Instance(tmp_path, me="mx.test")`` creates the instance; ``control(name, text)``
writes a control file; ``route([(domain, host, port)])`` writes smtproutes;
``inject(sender, rcpts, body)`` uses the qmail-queue shim
exactly as ezmlm-send would; ``start(*args, env=None)`` / ``stop()`` / ``kill()``
run the scheduler (``kill()`` SIGKILLs its whole process group, workers included;
``kill_scheduler()`` only the scheduler, so its workers are orphaned);
``start_scheduler(**kwargs)`` runs ``Scheduler(root, **kwargs)`` in a child
process for options ``mta send`` does not take; ``cleanup()`` kills every process
group it started; ``queue()`` reads ``mta queue --json``; ``wait_empty(timeout)``
waits (bounded) until the queue holds no message. ``open_fifo_writer(fifo, timeout)``
waits (bounded) until a delivery program blocked on ``fifo`` has it open, and returns a
write end: writing to it releases that program.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


class Instance:
    def __init__(self, tmp_path: Path, me: str = "mx.test"):
        self.root = tmp_path / "inst"
        self.env = dict(os.environ, MTA_ROOT=str(self.root))
        # No spare files: 8192 of them a test instance, created and deleted, would only
        # slow every later file creation of the run (tests/cli/test_mta_cli.py checks them).
        subprocess.run([str(BIN / "mta"), "--root", str(self.root), "init", "--me", me,
                        "--spare-files", "0"],
                       check=True, capture_output=True, timeout=60)
        self.proc: subprocess.Popen | None = None
        self.groups: list[int] = []

    def control(self, name: str, text: str) -> None:
        (self.root / "control" / name).write_text(text)

    def route(self, pairs) -> None:
        """``control/smtproutes`` from (domain, host, port) triples."""
        self.control("smtproutes", "".join(f"{d}:{h}:{p}\n" for d, h, p in pairs))

    def inject(self, sender: str, rcpts, body: bytes = b"Subject: t\n\nhello\n", env=None) -> int:
        envelope = b"F" + sender.encode() + b"\0" + b"".join(
            b"T" + r.encode() + b"\0" for r in rcpts) + b"\0"
        r, w = os.pipe()
        p = subprocess.Popen([str(BIN / "qmail-queue")], stdin=subprocess.PIPE, stdout=r,
                             env=dict(self.env, **(env or {})))
        os.close(r)
        p.stdin.write(body)
        p.stdin.close()
        os.write(w, envelope) if len(envelope) < 60000 else _write_all(w, envelope)
        os.close(w)
        return p.wait(timeout=60)

    def start(self, *args: str, env=None) -> None:
        self._spawn([str(BIN / "mta"), "--root", str(self.root), "send", *args], env)

    def start_scheduler(self, env=None, **kwargs) -> None:
        code = ("import sys, uvloop; from pathlib import Path; "
                "from mta.send.scheduler import Scheduler; "
                f"uvloop.run(Scheduler(Path(sys.argv[1]), **{kwargs!r}).run())")
        self._spawn([sys.executable, "-c", code, str(self.root)], env)

    def _spawn(self, argv: list[str], env) -> None:
        self.proc = subprocess.Popen(argv, env=dict(self.env, **(env or {})),
                                     start_new_session=True)
        self.groups.append(self.proc.pid)

    def kill_scheduler(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def cleanup(self) -> None:
        self.stop()
        for pgid in self.groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # that group is gone already

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def flush(self) -> None:
        subprocess.run([str(BIN / "mta"), "flush"], env=self.env, check=True,
                       capture_output=True, timeout=30)

    def queue(self) -> list[dict]:
        p = subprocess.run([str(BIN / "mta"), "queue", "--json"], env=self.env,
                           capture_output=True, timeout=60, check=True)
        return [json.loads(line) for line in p.stdout.splitlines()]

    def wait_until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"queue: {self.queue()[:3]}")
            time.sleep(0.05)

    def wait_empty(self, timeout: float = 60) -> None:
        self.wait_until(lambda: not self.queue(), timeout, "an empty queue")

    def log_lines(self) -> list[str]:
        p = self.root / "log" / "send"
        return p.read_text().splitlines() if p.exists() else []


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def open_fifo_writer(fifo: Path, timeout: float = 30.0) -> int:
    """A write end of ``fifo``, once a reader (a delivery program blocked on it) has it
    open; non-blocking opens until then, bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: nobody has opened it for reading yet
            if time.monotonic() > deadline:
                raise AssertionError(f"nobody opened {fifo} within {timeout}s") from None
            time.sleep(0.02)
