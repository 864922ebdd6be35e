"""The SMTP listener over real loopback sockets: smtplib, raw sockets, swaks, openssl certs.

The listener runs on its own uvloop in a thread; ``submit`` is a recording fake of
the queue boundary (the queue helper tests the real queue).
"""

from __future__ import annotations

import asyncio
import os
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvloop

from mta.access import parse_access
from mta.received import date822, format_received
from mta.smtp import replies as R
from mta.smtp.policy import SmtpPolicy
from mta.smtpd import SubmitError, load_server_tls, open_smtp_server

ME = "mx.local.test"
USERS = {"alice", "bob", "postmaster"}
RECEIVED = re.compile(
    rb"Received: from unknown \(HELO t\.example\) \((127\.[0-9.]+)\)\n"
    rb"  by mx\.local\.test with (ESMTPS?); \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d -0000\n")


def policy(**kw) -> SmtpPolicy:
    return SmtpPolicy(me=ME, is_local_domain=lambda d: d in ("local.test", ME),
                      rcpt_exists=lambda a: a.partition("@")[0] in USERS, **kw)


class Listener:
    """Our listener on 127.0.0.1:<free port>, served by uvloop in a thread."""

    def __init__(self, pol: SmtpPolicy, *, submit=None, ssl_context=None):
        self.submitted: list[tuple[str, list[str], bytes]] = []
        self.submit = submit or self._record
        self._ready = threading.Event()
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self._run, args=(pol, ssl_context), daemon=True)
        self.thread.start()
        assert self._ready.wait(10), "listener did not start"

    async def _record(self, sender, recipients, data):
        self.submitted.append((sender, recipients, data))
        return 4242

    def _run(self, pol, ssl_context) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            open_smtp_server("127.0.0.1", 0, policy=pol, submit=self.submit, ssl_context=ssl_context))
        self.port = self.server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()
        self.server.close()
        self.loop.run_until_complete(self.server.wait_closed())
        self.loop.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        assert not self.thread.is_alive()

    def connect(self, source: str = "127.0.0.1") -> "Client":
        return Client(socket.create_connection(("127.0.0.1", self.port), timeout=10, source_address=(source, 0)))


class Client:
    """A raw socket speaking line by line, with bounded waits."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buf = sock, b""

    def line(self) -> str:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"connection closed; pending {self.buf!r}")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line.decode("latin-1")

    def reply(self) -> list[str]:
        lines = [self.line()]
        while lines[-1][3:4] == "-":
            lines.append(self.line())
        return lines

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def closed(self) -> bool:
        """True once the server closed: EOF (or reset) within the socket timeout."""
        try:
            return self.buf == b"" and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener():
    made: list[Listener] = []

    def make(pol: SmtpPolicy | None = None, **kw) -> Listener:
        made.append(Listener(pol or policy(), **kw))
        return made[-1]

    yield make
    for lst in made:
        lst.close()


@pytest.fixture(scope="module")
def tls_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tls")
    (root / "control").mkdir()
    key, cert = root / "key.pem", root / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={ME}"],
                   check=True, capture_output=True, timeout=60)
    (root / "control" / "servercert.pem").write_bytes(cert.read_bytes() + key.read_bytes())
    return root


def client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_received_line_is_qmail_style():
    line = format_received(local=ME, remote_ip="192.0.2.1", helo="evil\r\nX-Injected: 1", when=0, protocol="ESMTP")
    assert line == (b"Received: from unknown (HELO evil??X-Injected:?1) (192.0.2.1)\n"
                    b"  by mx.local.test with ESMTP; 1 Jan 1970 00:00:00 -0000\n")
    assert format_received(local=ME, remote_ip="::1", helo="Host.Example", remote_host="host.example",
                           when=812090814, protocol="SMTP") == (
        b"Received: from host.example (::1)\n  by mx.local.test with SMTP; 26 Sep 1995 04:46:54 -0000\n")
    assert date822(1732550000) == "25 Nov 2024 15:53:20 -0000"


def test_smtplib_transaction_is_submitted_with_received_line(listener):
    lst = listener()
    with smtplib.SMTP("127.0.0.1", lst.port, local_hostname="t.example", timeout=10) as c:
        assert c.ehlo()[0] == 250 and c.has_extn("pipelining") and not c.has_extn("starttls")
        assert c.mail("a@t.example")[0] == 250
        assert c.rcpt("alice@local.test")[0] == 250
        code, text = c.data(b"Subject: hi\r\n\r\n.leading dot\r\nbody\r\n")
    assert code == 250 and re.fullmatch(rb"ok \d{10} qp 4242", text), text
    [(sender, rcpts, data)] = lst.submitted
    assert (sender, rcpts) == ("a@t.example", ["alice@local.test"])
    m = RECEIVED.match(data)
    assert m and m.group(1) == b"127.0.0.1" and m.group(2) == b"ESMTP"
    assert data[m.end():] == b"Subject: hi\n\n.leading dot\nbody\n"


def test_swaks_pipelined_transaction(listener):
    lst = listener()
    r = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(lst.port), "--helo", "t.example",
                        "--from", "a@t.example", "--to", "alice@local.test,bob@local.test", "--pipeline",
                        "--body", "hello from swaks", "--timeout", "10"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "<** " not in r.stdout and "250 ok" in r.stdout
    [(sender, rcpts, data)] = lst.submitted
    assert rcpts == ["alice@local.test", "bob@local.test"] and b"hello from swaks" in data


@pytest.mark.parametrize("exc, expected", [
    (SubmitError(True, "qq write error or disk full (#4.3.0)"), (451, b"qq write error or disk full (#4.3.0)")),
    (SubmitError(False, "qq permanent problem (#5.3.0)"), (554, b"qq permanent problem (#5.3.0)")),
    (RuntimeError("bug"), (451, b"qq temporary problem (#4.3.0)")),
])
def test_queue_failures_become_451_or_554(listener, exc, expected):
    async def failing(sender, recipients, data):
        raise exc

    lst = listener(submit=failing)
    with smtplib.SMTP("127.0.0.1", lst.port, local_hostname="t.example", timeout=10) as c:
        c.ehlo()
        c.mail("a@t.example")
        c.rcpt("alice@local.test")
        assert c.data(b"Subject: x\r\n\r\nx\r\n") == expected
        assert c.noop()[0] == 250  # the session goes on


def test_250_only_after_submit_returned(listener):
    log: list[str] = []

    async def slow(sender, recipients, data):
        log.append("start")
        await asyncio.sleep(0.2)  # a queue doing its fsyncs
        log.append("durable")

    lst = listener(submit=slow)
    c = lst.connect()
    c.reply()
    c.send(b"EHLO t.example\r\n")
    c.reply()
    c.send(b"MAIL FROM:<a@t.example>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\n")
    assert [c.line() for _ in range(3)] == ["250 ok", "250 ok", "354 go ahead"]
    c.send(b"hi\r\n.\r\nNOOP\r\n")  # body first in a group is allowed (RFC 2920)
    assert c.line().startswith("250 ok ")
    assert log == ["start", "durable"]
    assert c.line() == "250 ok"
    c.close()


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\n.\r\n"])
def test_bare_lf_smuggling_over_the_wire(listener, fake_end):
    lst = listener()
    c = lst.connect()
    c.reply()
    c.send(b"EHLO t.example\r\n")
    c.reply()
    for cmd in (b"MAIL FROM:<test@t.example>\r\n", b"RCPT TO:<alice@local.test>\r\n", b"DATA\r\n"):
        c.send(cmd)
        c.reply()
    c.send(b"Subject: a\r\n\r\nbody" + fake_end + b"MAIL FROM:<smuggled@t.example>\r\n"
           b"RCPT TO:<alice@local.test>\r\nDATA\r\nSubject: S\r\n\r\nS\r\n.\r\n")
    assert c.line() == R.R451_BARE_LF
    assert c.closed() and lst.submitted == []


def test_sm8_pipelined_body_and_pl2_early_talker(listener):
    lst = listener(policy(greet_delay=0.5))
    early = lst.connect()
    early.send(b"EHLO x\r\n")  # before the 220
    assert early.line() == R.R554_SYNC and early.closed()
    c = lst.connect()
    assert c.line() == f"220 {ME} ESMTP"
    c.send(b"EHLO t.example\r\n")
    c.reply()
    c.send(b"MAIL FROM:<a@t.example>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
    assert [c.line() for _ in range(3)] == ["250 ok", "250 ok", R.R554_SYNC]
    assert c.closed() and lst.submitted == []


def test_relay_and_access_rules_by_client_address(listener):
    rules = parse_access("127.0.0.3:deny\n127.0.0.1:relay\n:allow\n")
    lst = listener(policy(access=rules))
    for source, expected in (("127.0.0.2", "553"), ("127.0.0.1", "250")):
        c = lst.connect(source)
        c.reply()
        c.send(b"EHLO t.example\r\n")
        c.reply()
        c.send(b"MAIL FROM:<a@t.example>\r\n")
        c.reply()
        c.send(b"RCPT TO:<victim@other.example>\r\n")
        assert c.line().startswith(expected), source
        c.close()
    denied = lst.connect("127.0.0.3")
    assert denied.line() == R.R554_ACCESS_DENIED.format(me=ME) and denied.closed()


def test_connection_caps_overall_and_per_address(listener):
    lst = listener(policy(max_per_ip=2, max_connections=4))
    held = [lst.connect("127.0.0.4"), lst.connect("127.0.0.4")]
    assert all(c.line().startswith("220 ") for c in held)
    over = lst.connect("127.0.0.4")
    assert over.line() == R.R421_TOO_MANY_FROM_HOST.format(me=ME) and over.closed()
    held += [lst.connect("127.0.0.5"), lst.connect("127.0.0.6")]
    assert all(c.line().startswith("220 ") for c in held[2:])
    full = lst.connect("127.0.0.7")
    assert full.line() == R.R421_TOO_MANY_CONNECTIONS.format(me=ME) and full.closed()
    held.pop().close()
    deadline = time.monotonic() + 5
    while True:  # the freed slot is counted once the server saw the close
        c = lst.connect("127.0.0.7")
        if c.line().startswith("220 "):
            break
        assert time.monotonic() < deadline, "closed connection never freed its slot"
    for c in held:
        c.close()


def test_idle_client_is_dropped_after_timeoutsmtpd(listener):
    lst = listener(policy(timeoutsmtpd=0.3))
    c = lst.connect()
    started = time.monotonic()
    c.reply()
    assert c.line() == R.R451_TIMEOUT and c.closed()
    assert time.monotonic() - started < 5


def test_lm2_endless_line_closes_and_others_carry_on(listener):
    lst = listener()
    c = lst.connect()
    c.reply()
    chunk, sent = b"x" * 1048576, 0
    with pytest.raises(OSError):
        while sent < 64 * 1048576:
            c.send(chunk)
            sent += len(chunk)
    assert sent < 64 * 1048576
    other = lst.connect()
    assert other.line().startswith("220 ")
    other.send(b"NOOP\r\n")
    assert other.line() == "250 ok"


def test_tl1_starttls_injection_then_transaction(listener, tls_root):
    lst = listener(ssl_context=load_server_tls(tls_root))
    c = lst.connect()
    c.reply()
    c.send(b"EHLO t.example\r\n")
    assert "250 STARTTLS" in c.reply()
    c.send(b"STARTTLS\r\nRSET\r\n")  # one segment: the RSET must never be executed
    assert c.line() == R.R220_STARTTLS
    tls = Client(client_tls().wrap_socket(c.sock, server_hostname=ME))
    tls.send(b"NOOP\r\n")
    assert tls.line() == "250 ok"
    tls.send(b"EHLO t.example\r\n")
    assert "STARTTLS" not in " ".join(tls.reply())
    tls.send(b"MAIL FROM:<a@t.example>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\n")
    assert [tls.line() for _ in range(3)] == ["250 ok", "250 ok", "354 go ahead"]
    tls.send(b"secret\r\n.\r\n")
    assert tls.line().startswith("250 ok ")
    assert RECEIVED.match(lst.submitted[0][2]).group(2) == b"ESMTPS"
    tls.close()


def test_smtplib_starttls(listener, tls_root):
    lst = listener(ssl_context=load_server_tls(tls_root))
    with smtplib.SMTP("127.0.0.1", lst.port, local_hostname="t.example", timeout=10) as c:
        assert c.starttls(context=client_tls())[0] == 220
        assert c.sendmail("a@t.example", ["bob@local.test"], b"Subject: tls\r\n\r\nx\r\n") == {}
    assert lst.submitted[0][1] == ["bob@local.test"]
    assert load_server_tls(tls_root.parent) is None


def test_lo1_500_idle_connections_do_not_stop_a_new_client(listener):
    lst = listener()
    idle = []
    try:
        for i in range(500):
            idle.append(lst.connect(f"127.0.2.{i % 50 + 1}"))
        for c in idle:
            assert c.line().startswith("220 ")
        started = time.monotonic()
        with smtplib.SMTP("127.0.0.1", lst.port, local_hostname="t.example", timeout=5) as s:
            assert s.sendmail("a@t.example", ["alice@local.test"], b"Subject: lo1\r\n\r\nx\r\n") == {}
        assert time.monotonic() - started < 5
        assert len(lst.submitted) == 1
    finally:
        for c in idle:
            c.close()


CRASH_SERVER = r"""
import asyncio, sys
from pathlib import Path
from mta.smtp.policy import SmtpPolicy
from mta.smtpd import open_smtp_server

async def main():
    async def submit(sender, recipients, data):
        Path(sys.argv[1]).write_bytes(data)  # "durable" before the 250
    pol = SmtpPolicy(me="mx.local.test", is_local_domain=lambda d: d == "local.test")
    server = await open_smtp_server("127.0.0.1", 0, policy=pol, submit=submit)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_crash_point_before_250_kills_after_the_queue_has_it(tmp_path):
    marker = tmp_path / "queued"
    proc = subprocess.Popen([sys.executable, "-c", CRASH_SERVER, str(marker)], stdout=subprocess.PIPE,
                            env=dict(os.environ, MTA_CRASH_AT="before_250"))
    try:
        port = int(proc.stdout.readline())
        c = Client(socket.create_connection(("127.0.0.1", port), timeout=10))
        c.reply()
        c.send(b"EHLO t.example\r\n")
        c.reply()
        c.send(b"MAIL FROM:<a@t.example>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\n")
        assert [c.line() for _ in range(3)] == ["250 ok", "250 ok", "354 go ahead"]
        c.send(b"Subject: crash\r\n\r\nx\r\n.\r\n")
        with pytest.raises((EOFError, ConnectionResetError)):
            c.line()  # no 250 ever arrives
        assert proc.wait(10) == -9
        assert marker.read_bytes().endswith(b"Subject: crash\n\nx\n")
    finally:
        proc.kill()
        proc.wait(10)
