"""Slow clients cannot hold the listener (issue 4, "slow clients cannot hold the server").

Over real loopback sockets with ``timeoutsmtpd`` = 1 s: a client trickling a command
line a byte at a time, or a body below ``min_data_rate``, gets ``451 timeout`` within
a bounded time however steadily it trickles; a client that stops reading our replies
is aborted; clients that pause between commands or send a body in paced chunks are
unaffected. The trickles pace the client (they are the behaviour under test), they do
not synchronize anything: every wait for the server is a bounded poll.
"""

from __future__ import annotations

import asyncio
import select
import smtplib
import socket
import time

import pytest

from mta.smtp import replies as R
from mta.smtpd import open_smtp_server
from test_smtpd import Client, Listener, policy

T = 1.0  # timeoutsmtpd for every test here


class WatchedListener(Listener):
    """``Listener`` that also keeps the shared listener state (to count live sessions)."""

    def _run(self, pol, ssl_context) -> None:
        asyncio.set_event_loop(self.loop)
        self.states: list = []
        self.server = self.loop.run_until_complete(open_smtp_server(
            "127.0.0.1", 0, policy=pol, submit=self.submit, on_listener=self.states.append))
        self.port = self.server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()
        self.server.close()
        self.loop.run_until_complete(self.server.wait_closed())
        self.loop.close()

    def sessions(self) -> int:
        return len(self.states[0].sessions)


@pytest.fixture
def lst():
    # max_junk off: the RSET flood below must meet the write-pause abort, not the junk limit
    listener = WatchedListener(policy(timeoutsmtpd=T, max_junk=10**9))
    yield listener
    listener.close()


def trickle(c: Client, data: bytes, interval: float) -> tuple[str, float]:
    """Send ``data`` a byte every ``interval`` s until the server says something.

    Returns the first line it said and the seconds since the trickle began; fails if
    all of ``data`` went out and no reply came within one more interval.
    """
    began = time.monotonic()
    for i in range(len(data)):
        c.send(data[i:i + 1])
        readable, _, _ = select.select([c.sock], [], [], interval)
        if readable:
            return c.line(), time.monotonic() - began
    raise AssertionError(f"no reply after trickling all {len(data)} bytes")


def session_to(c: Client, commands: list[bytes]) -> None:
    assert c.line().startswith("220 ")
    for command in commands:
        c.send(command)
        c.reply()


def test_trickled_command_line_is_dropped_after_timeoutsmtpd(lst):
    c = lst.connect()
    assert c.line().startswith("220 ")
    line = b"EHLO a-rather-long-client-name.t.example\r\n"  # 42 bytes: 10.5 s at 4 bytes/s
    said, after = trickle(c, line, 0.25)
    assert said == R.R451_TIMEOUT, said
    assert after < T + 2.5, f"dropped only after {after:.1f}s"
    assert c.closed()


def test_trickled_body_below_the_minimum_rate_is_dropped(lst):
    c = lst.connect()
    session_to(c, [b"EHLO t.example\r\n", b"MAIL FROM:<a@t.example>\r\n",
                   b"RCPT TO:<alice@local.test>\r\n", b"DATA\r\n"])
    body = b"Subject: slow\r\n\r\n" + b"x" * 60  # 5 bytes/s, far below 500 bytes/s
    said, after = trickle(c, body, 0.2)
    assert said == R.R451_TIMEOUT, said
    assert after < T + 2.5, f"dropped only after {after:.1f}s"
    assert c.closed() and lst.submitted == []


def test_client_that_stops_reading_replies_is_aborted(lst):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", lst.port))
    c = Client(s)
    session_to(c, [b"EHLO t.example\r\n"])
    s.setblocking(False)
    batch, sent, stuck_since = b"RSET\r\n" * 10000, 0, None
    deadline = time.monotonic() + 30
    while stuck_since is None or time.monotonic() - stuck_since < 0.5:
        assert time.monotonic() < deadline, f"the server kept reading ({sent} bytes sent)"
        try:
            sent += s.send(batch)  # we never read the "250 flushed" replies
            stuck_since = None
        except BlockingIOError:
            stuck_since = stuck_since or time.monotonic()
            select.select([], [s], [], 0.1)
    stopped = time.monotonic()  # the server no longer reads from us
    while lst.sessions():
        assert time.monotonic() - stopped < T + 5, "the session of a non-reading client lives on"
        time.sleep(0.05)
    s.close()


def test_pausing_and_paced_clients_are_unaffected(lst):
    c = lst.connect()
    assert c.line().startswith("220 ")
    for command in (b"EHLO t.example\r\n", b"MAIL FROM:<a@t.example>\r\n",
                    b"RCPT TO:<alice@local.test>\r\n", b"DATA\r\n"):
        time.sleep(0.6 * T)  # each pause is under T; together they are well over it
        c.send(command)
        assert c.reply()[-1][:1] in "23"
    c.send(b"Subject: paced\r\n\r\n")
    for _ in range(6):  # 1000 bytes each 0.5 s: 2000 bytes/s, above min_data_rate
        c.send(b"y" * 998 + b"\r\n")
        time.sleep(0.5 * T)
    c.send(b".\r\n")
    assert c.line().startswith("250 ok ")
    with smtplib.SMTP("127.0.0.1", lst.port, local_hostname="t.example", timeout=10) as s:
        big = b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 2000  # 2 MB at full speed
        assert s.sendmail("a@t.example", ["bob@local.test"], big) == {}
    assert [len(m[2]) > 6000 for m in lst.submitted] == [True, True]
