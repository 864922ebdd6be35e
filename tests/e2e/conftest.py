"""End-to-end fixtures: a whole ``mta start`` system as a real subprocess.

``System(tmp_path)`` runs ``mta init --me local.test`` in a fresh folder and picks a
free loopback port. ``start()`` runs ``mta start --smtp 127.0.0.1:PORT`` in its own
process group and waits (bounded) until the port answers 220; ``stop()`` sends
SIGTERM and waits for a clean exit; ``kill()`` SIGKILLs the whole group (every
component with it). Helpers: ``alias(local, text)`` writes ``alias/.qmail-LOCAL``
(mode 0644), ``maildir(name)`` creates ``alias/NAME/{tmp,new,cur}`` and returns a ``Box``
(``len()`` counts files; ``messages()`` reads them with ``mailbox.Maildir``); ``queue()`` reads ``mta queue --json``; ``flush()`` runs ``mta
flush``; ``wait_until(pred, timeout, what)`` is a bounded poll with a message that
shows the queue and the supervisor's output; ``component_pid(name)`` reads the pid
the supervisor reported for a component ("smtp listener", "send").
"""

from __future__ import annotations

import json
import mailbox
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.sink import Sink

BIN = Path(sys.executable).parent
MTA = str(BIN / "mta")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what, interval: float = 0.05) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` with ``what()`` or ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            text = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {text}")
        time.sleep(interval)


class System:
    def __init__(self, tmp_path: Path, me: str = "local.test"):
        self.tmp = tmp_path
        self.root = tmp_path / "inst"
        self.env = dict(os.environ, MTA_ROOT=str(self.root))
        self.env.pop("MTA_CRASH_AT", None)
        # --spare-files 0: as tests/harness.py's Instance, for the same reason
        subprocess.run([MTA, "--root", str(self.root), "init", "--me", me,
                        "--spare-files", "0"],
                       check=True, capture_output=True, timeout=60)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.groups: list[int] = []
        self.runs = 0

    # --- instance files -------------------------------------------------
    def control(self, name: str, text: str) -> None:
        (self.root / "control" / name).write_text(text)

    def alias(self, local: str, text: str) -> Path:
        path = self.root / "alias" / f".qmail-{local}"
        path.write_text(text)
        path.chmod(0o644)
        return path

    def maildir(self, name: str) -> "Box":
        base = self.root / "alias" / name
        for sub in ("tmp", "new", "cur"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        return Box(base)

    # --- processes --------------------------------------------------------
    @property
    def out_path(self) -> Path:
        return self.tmp / f"start-{self.runs}.log"

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("start-*.log")))

    def start(self, env: dict | None = None, timeout: float = 20.0) -> None:
        self.runs += 1
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [MTA, "--root", str(self.root), "start", "--smtp", f"127.0.0.1:{self.port}"],
                env=dict(self.env, **(env or {})), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.groups.append(self.proc.pid)
        wait_until(self.accepting, timeout,
                   lambda: f"port {self.port} to answer 220; output:\n{self.output()[-3000:]}")

    def accepting(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"mta start exited with {self.proc.returncode}:\n"
                                 f"{self.output()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.settimeout(5)
                return s.recv(4).startswith(b"220")
        except OSError:
            return False

    def component_pid(self, name: str) -> int:
        pids = re.findall(rf"started {re.escape(name)} \(pid (\d+)\)", self.out_path.read_text())
        assert pids, f"no {name!r} in the supervisor's output:\n{self.output()[-2000:]}"
        return int(pids[-1])

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"mta start ignored SIGTERM for {timeout}s:\n{self.output()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL every process of the running system (the whole process group)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return  # the group is gone already
        self.proc.wait(10)
        # components may outlive their parent for a moment: wait until the group is empty
        wait_until(lambda: not _group_alive(self.proc.pid), 10, "the killed group to vanish")

    def cleanup(self) -> None:
        for pgid in self.groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                continue  # that group exited on its own

    # --- queue ---------------------------------------------------------------
    def queue(self) -> list[dict]:
        p = subprocess.run([MTA, "queue", "--json"], env=self.env, capture_output=True,
                           timeout=60, check=True)
        return [json.loads(line) for line in p.stdout.splitlines()]

    def flush(self) -> None:
        """``mta flush``, once the running scheduler has written its pid file."""
        pidfile = self.root / "queue" / "lock" / "sendpid"
        send = self.component_pid("send")
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() == str(send), 10,
                   f"the scheduler (pid {send}) to write {pidfile}")
        subprocess.run([MTA, "flush"], env=self.env, check=True, capture_output=True, timeout=30)

    def wait_until(self, predicate, timeout: float, what: str) -> None:
        wait_until(predicate, timeout,
                   lambda: f"{what}; queue: {self.queue()[:3]}; send log tail:\n"
                           + "\n".join(self.log_lines()[-15:])
                           + f"\nsupervisor output tail:\n{self.output()[-1500:]}")

    def wait_empty(self, timeout: float = 30) -> None:
        self.wait_until(lambda: not self.queue(), timeout, "an empty queue")

    def log_lines(self) -> list[str]:
        p = self.root / "log" / "send"
        return p.read_text(errors="replace").splitlines() if p.exists() else []


class Box:
    """A Maildir read afresh each time (``mailbox.Maildir`` caches its listing for 2 s)."""

    def __init__(self, path: Path):
        self.path = path

    def __len__(self) -> int:
        return sum(1 for sub in ("new", "cur") for _ in (self.path / sub).iterdir())

    def messages(self) -> list[mailbox.MaildirMessage]:
        return list(mailbox.Maildir(self.path, create=False))


def _group_alive(pgid: int) -> bool:
    """Does any process (zombies aside) of group ``pgid`` still run?"""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # that process ended while we looked
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    s = System(tmp_path)
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def sink():
    """A recording SMTP sink on 127.0.1.1 (a remote host, as far as the system knows)."""
    with Sink("127.0.1.1") as s:
        yield s


@pytest.fixture
def relay_system(system, sink):
    """A started system whose remote mail goes to ``sink``; alice@local.test has a Maildir."""
    system.control("smtproutes", f":{sink.host}:{sink.port}\n")
    system.maildir("alice")
    system.alias("alice", "./alice/\n")
    system.start()
    return system
