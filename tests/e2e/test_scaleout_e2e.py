"""Issue 6 acceptance: one list host, two delivery machines, QMQP handover, 20,000 recipients.

Three instances: the list host (127.0.0.1) and two delivery machines running
`mta start --qmqp --progress` on 127.0.0.2 and 127.0.0.3, each delivering to its own
receiving server on 127.0.1.x. The list folder's `qmqpservers` names both machines.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sink import Sink

BIN = Path(sys.executable).parent
N = 20_000


def free_port(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def mta(root, *args, **kw):
    return subprocess.run([str(BIN / "mta"), "--root", str(root), *args], check=True,
                          capture_output=True, timeout=120, **kw)


def ezlist(root, *args, **kw):
    p = subprocess.run([str(BIN / "ezlist"), "--root", str(root), *args], capture_output=True,
                       timeout=300, **kw)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout.decode()


class Machine:
    """A delivery machine: its own instance, routed to one sink, QMQP + progress open."""

    def __init__(self, tmp: Path, ip: str, sink: Sink):
        self.ip, self.root = ip, tmp / f"machine-{ip}"
        mta(self.root, "init", "--me", f"mx-{ip}.test", "--spare-files", "0")
        (self.root / "control" / "smtproutes").write_text(f":{sink.host}:{sink.port}\n")
        (self.root / "control" / "qmqpaccess").write_text("127.0.0.0/8:allow\n:deny\n")
        self.qmqp, self.progress = free_port(ip), free_port(ip)
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [str(BIN / "mta"), "--root", str(self.root), "start", "--smtp",
             f"{self.ip}:{free_port(self.ip)}", "--qmqp", f"{self.ip}:{self.qmqp}",
             "--progress", f"{self.ip}:{self.progress}"], start_new_session=True,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        for port in (self.qmqp, self.progress):
            while True:
                try:
                    socket.create_connection((self.ip, port), 0.5).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"{self.ip}:{port} not listening"
                    time.sleep(0.05)

    def kill(self):
        """SIGKILL the whole machine (every component) and wait until its QMQP port is dead."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((self.ip, self.qmqp), 0.5).close()
            except OSError:
                return
            assert time.monotonic() < deadline, f"{self.ip}:{self.qmqp} still answers after kill"
            time.sleep(0.05)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def line(self):
        return f"{self.ip}:{self.qmqp}:{self.progress}\n"


@pytest.fixture
def setup(tmp_path):
    host = tmp_path / "listhost"
    mta(host, "init", "--me", "lists.test", "--spare-files", "0")
    ezlist(host, "make", "news@lists.test")
    subs = "".join(f"u{i}@d{i % 200}.test\n" for i in range(N))
    ezlist(host, "sub", "news", input=subs.encode())
    assert ezlist(host, "count", "news").strip() == str(N)
    post = tmp_path / "post.eml"
    post.write_bytes(b"From: editor@lists.test\nSubject: issue 1\n\nnews for everyone\n")
    with Sink("127.0.1.51") as s2, Sink("127.0.1.52") as s3:
        m2, m3 = Machine(tmp_path, "127.0.0.2", s2), Machine(tmp_path, "127.0.0.3", s3)
        (host / "lists" / "news" / "qmqpservers").write_text(m2.line() + m3.line())
        try:
            yield host, post, (m2, s2), (m3, s3)
        finally:
            m2.stop()
            m3.stop()


def delivered(*sinks):
    return [(m.sender, r) for s in sinks for m in s.messages for r in m.rcpts]


def wait_total(sinks, n, timeout):
    deadline = time.monotonic() + timeout
    while sum(s.rcpt_count() for s in sinks) < n:
        assert time.monotonic() < deadline, \
            f"only {sum(s.rcpt_count() for s in sinks)} of {n} delivered in {timeout}s"
        time.sleep(0.1)


def test_post_split_across_two_machines_each_recipient_once(setup):
    host, post, (m2, s2), (m3, s3) = setup
    m2.start()
    m3.start()
    ezlist(host, "send", "news", str(post), "--no-wait")
    wait_total([s2, s3], N, 240)
    got = delivered(s2, s3)
    assert len(got) == N and len({r for _, r in got}) == N  # each exactly once
    assert s2.rcpt_count() > 0 and s3.rcpt_count() > 0  # both machines worked
    for sender, rcpt in got[:500]:
        box, dom = rcpt.split("@")
        assert sender == f"news-return-1-{box}={dom}@lists.test"
    # a domain is never split across machines (per-host limits hold on each)
    doms2 = {r.split("@")[1] for _, r in delivered(s2)}
    doms3 = {r.split("@")[1] for _, r in delivered(s3)}
    assert not doms2 & doms3

    def finished():
        out = ezlist(host, "status", "news", "1")
        return f"delivered {N}," in out and "finished" in out, out
    deadline = time.monotonic() + 60
    while not (res := finished())[0]:
        assert time.monotonic() < deadline, f"status never showed the finished send:\n{res[1]}"
        time.sleep(0.2)


def test_machine_down_before_handover_other_takes_its_part(setup):
    host, post, (m2, s2), (m3, s3) = setup
    m2.start()
    m3.start()
    m3.kill()  # killed before the handover: down for the whole of it
    ezlist(host, "send", "news", str(post), "--no-wait")
    wait_total([s2], N, 240)
    got = delivered(s2)
    assert len(got) == N and len({r for _, r in got}) == N
    assert s3.rcpt_count() == 0
    parts = (host / "lists" / "news" / "sends" / "1.parts").read_text()
    assert '"127.0.0.3"' not in parts  # both parts recorded as taken by 127.0.0.2
