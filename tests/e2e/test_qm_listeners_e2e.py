"""QMTP and QMQP listeners through ``mta start --qmtp/--qmqp`` and the real queue.

- QMTP: our client (mta.net.qm_client) gets ``K`` and the message lands in a local
  Maildir; RL5's QMTP part with raw netstrings from a bound source address: a
  recipient outside rcpthosts gets ``D`` from a client smtpaccess does not let relay
  (127.0.3.1), and is accepted (and relayed to the sink) from one it does (127.0.3.2).
- QMQP: without control/qmqpaccess loopback may hand over; with the file, a client it
  denies (127.0.0.1) and one it does not name (127.0.0.3, fail closed) are disconnected
  with nothing queued, while the client an ``allow`` rule names (127.0.0.2) gets ``K``.
- LM-14 on the wire: ``12a:``, ``0:,``, ``99999999999:``, a truncated stream, a NUL
  in the sender and QMQP's bad-address forms get a closed connection or ``D``; the
  queue stays empty (``mta queue --json``) and nothing is delivered; afterwards both
  listeners still answer a good message with ``K``.

``QmSystem`` is tests/e2e/conftest.py's System started with extra listeners.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import subprocess

import pytest

from tests.e2e.conftest import MTA, System, free_port, wait_until
from mta.interfaces import Delivered
from mta.net.qm_client import qmqp_send, qmtp_send
from mta.netstring import NetstringDecoder

BODY = b"Subject: qm e2e\n\nhello over netstrings\n"
K_OK = b"Kok "
D_RCPTHOSTS = b"Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"
D_QMQP_ADDRESS = b"Dsorry, I can't accept addresses like that (#5.1.3)"


def ns(data: bytes) -> bytes:
    return b"%d:%b," % (len(data), data)


def qmtp_package(sender: bytes, rcpts: list[bytes], body: bytes = BODY) -> bytes:
    """From qmtp.txt: message (LF mode byte first), sender, recipient list."""
    return ns(b"\n" + body) + ns(sender) + ns(b"".join(map(ns, rcpts)))


def qmqp_request(sender: bytes, rcpts: list[bytes], body: bytes = BODY) -> bytes:
    """From qmail-qmqpc: one netstring of message, sender and recipient netstrings."""
    return ns(ns(body) + ns(sender) + b"".join(map(ns, rcpts)))


def talk(port: int, data: bytes, source: str = "127.0.0.1") -> bytes:
    """Raw client: write ``data`` from ``source``, half-close, read until the server
    closes. A reset (the server closed with our bytes unread) reads as closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=30,
                                  source_address=(source, 0)) as s:
        got = []
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                got.append(chunk)
        except OSError as e:  # reset, broken pipe, or shutdown after the server's close
            if e.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                raise
            got.append(b"")  # closed on us: nothing more can arrive
        return b"".join(got)


def replies(data: bytes) -> list[bytes]:
    return NetstringDecoder(4096).feed(data)


class QmSystem(System):
    """``mta start`` with QMTP and/or QMQP listeners on free loopback ports."""

    def start_listeners(self, qmtp: bool = True, qmqp: bool = True, timeout: float = 30) -> None:
        self.qmtp = free_port() if qmtp else None
        self.qmqp = free_port() if qmqp else None
        extra = [arg for proto, port in (("--qmtp", self.qmtp), ("--qmqp", self.qmqp)) if port
                 for arg in (proto, f"127.0.0.1:{port}")]
        self.runs += 1
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [MTA, "--root", str(self.root), "start", "--smtp", f"127.0.0.1:{self.port}",
                 *extra], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.groups.append(self.proc.pid)
        wait_until(self.accepting, timeout,
                   lambda: f"port {self.port} to answer 220; output:\n{self.output()[-3000:]}")
        for port in filter(None, (self.qmtp, self.qmqp)):
            wait_until(lambda: _listening(port), timeout,
                       lambda: f"port {port} to listen; output:\n{self.output()[-3000:]}")


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture
def qm(tmp_path, sink):
    s = QmSystem(tmp_path)
    s.control("smtproutes", f":{sink.host}:{sink.port}\n")  # the sink of conftest.py
    s.box = s.maildir("alice")
    s.alias("alice", "./alice/\n")
    try:
        yield s
    finally:
        s.cleanup()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_qmtp_k_to_local_maildir_and_rl5_rcpthosts(qm, sink):
    qm.control("smtpaccess", "127.0.3.2:relay\n")  # 127.0.0.1 and 127.0.3.1: allow only
    qm.start_listeners(qmqp=False)
    [[outcome]] = run(qmtp_send("127.0.0.1", qm.qmtp,
                                [("bob@t.example", ["alice@local.test"], BODY)], timeout=30))
    assert isinstance(outcome, Delivered) and " qp " in outcome.text, outcome
    qm.wait_until(lambda: len(qm.box) == 1, 30, "alice's maildir to get the QMTP message")
    [msg] = qm.box.messages()
    assert "with QMTP" in msg["Received"] and msg.get_payload() == "hello over netstrings\n"

    mixed = talk(qm.qmtp, qmtp_package(b"bob@t.example", [b"alice@local.test",
                                                           b"victim@other.example"]),
                 source="127.0.3.1")
    [accepted, refused] = replies(mixed)
    assert accepted.startswith(K_OK) and refused == D_RCPTHOSTS  # RL5: no relay for it
    relayed = replies(talk(qm.qmtp, qmtp_package(b"bob@t.example", [b"victim@other.example"]),
                           source="127.0.3.2"))
    assert len(relayed) == 1 and relayed[0].startswith(K_OK)  # smtpaccess: relay
    qm.wait_until(lambda: len(qm.box) == 2, 30, "alice's copy of the mixed package")
    sink.wait_for(1, 30)
    qm.wait_empty()
    assert [(m.sender, m.rcpts) for m in sink.messages] == [
        ("bob@t.example", ["victim@other.example"])]  # only the relay client's one


def test_qmqp_default_allows_loopback(qm, sink):
    qm.start_listeners(qmtp=False)
    outcome = run(qmqp_send([("127.0.0.1", qm.qmqp)], "bob@t.example",
                            ["alice@local.test", "victim@other.example"], BODY, timeout=30))
    assert isinstance(outcome, Delivered) and " qp " in outcome.text, outcome
    qm.wait_until(lambda: len(qm.box) == 1, 30, "alice's maildir to get the QMQP message")
    assert "with QMQP" in qm.box.messages()[0]["Received"]
    sink.wait_for(1, 30)  # QMQP relays anywhere: that is why only trusted clients may use it
    assert sink.messages[0].rcpts == ["victim@other.example"]


def test_qmqpaccess_denied_and_unlisted_clients_closed_allowed_one_queues(qm):
    qm.control("qmqpaccess", "127.0.0.1:deny\n127.0.0.2:allow\n")
    qm.start_listeners(qmtp=False)
    request = qmqp_request(b"from@other.example", [b"alice@local.test"])
    assert talk(qm.qmqp, request, source="127.0.0.1") == b""  # RL5: closed, no reply
    assert talk(qm.qmqp, request, source="127.0.0.3") == b""  # not named: fail closed
    assert qm.queue() == [] and len(qm.box) == 0
    [reply] = replies(talk(qm.qmqp, request, source="127.0.0.2"))
    assert reply.startswith(K_OK), reply
    qm.wait_until(lambda: len(qm.box) == 1, 30, "the allowed client's message in alice's maildir")


QMTP_BAD = [
    (b"12a:", []),
    (b"0:,", []),
    (b"99999999999:", []),
    (qmtp_package(b"bob@t.example", [b"alice@local.test"])[:-4], []),  # truncated stream
    (qmtp_package(b"bob\x00@t.example", [b"alice@local.test"]), [b"Dunacceptable sender (#5.1.7)"]),
]
QMQP_BAD = [
    (b"12a:", []),
    (b"0:,", []),
    (b"99999999999:", []),
    (qmqp_request(b"bob@t.example", [b"alice@local.test"])[:-4], []),  # truncated stream
    (b"10:" + ns(BODY) + ns(b"bob@t.example") + b",", []),  # outer shorter than its contents
    (qmqp_request(b"bob@t.example", [b"a" * 1000 + b"@local.test"]), [D_QMQP_ADDRESS]),
    (qmqp_request(b"bob\x00@t.example", [b"alice@local.test"]), [D_QMQP_ADDRESS]),
]


def test_malformed_netstrings_closed_or_d_nothing_queued_listeners_alive(qm):  # LM-14
    qm.start_listeners()
    for port, cases in ((qm.qmtp, QMTP_BAD), (qm.qmqp, QMQP_BAD)):
        for wire, expected in cases:
            got = talk(port, wire)
            assert replies(got) == expected, (port, wire[:40], got)
    assert qm.queue() == []
    assert len(qm.box) == 0 and qm.log_lines() == []  # nothing slipped through and left
    [[ok]] = run(qmtp_send("127.0.0.1", qm.qmtp,
                           [("bob@t.example", ["alice@local.test"], BODY)], timeout=30))
    assert isinstance(ok, Delivered), ok
    [reply] = replies(talk(qm.qmqp, qmqp_request(b"bob@t.example", [b"alice@local.test"])))
    assert reply.startswith(K_OK), reply
    qm.wait_until(lambda: len(qm.box) == 2, 30, "both good messages in alice's maildir")


def test_sighup_rereads_qmtp_smtpaccess_and_qmqpaccess(qm):
    qm.control("smtpaccess", "127.0.3.1:deny\n")
    qm.control("qmqpaccess", "127.0.0.2:allow\n")
    qm.start_listeners()
    package = qmtp_package(b"bob@t.example", [b"alice@local.test"])
    request = qmqp_request(b"from@other.example", [b"alice@local.test"])
    [denied] = replies(talk(qm.qmtp, package, source="127.0.3.1"))
    assert denied.startswith(b"D"), denied  # smtpaccess deny holds for QMTP too
    assert talk(qm.qmqp, request, source="127.0.0.1") == b""
    assert qm.queue() == [] and len(qm.box) == 0
    qm.control("smtpaccess", "127.0.3.1:allow\n")
    qm.control("qmqpaccess", "127.0.0.1:allow\n")
    os.kill(qm.proc.pid, signal.SIGHUP)

    def qmtp_ok() -> bool:
        return replies(talk(qm.qmtp, package, source="127.0.3.1"))[0].startswith(K_OK)

    def qmqp_ok() -> bool:
        got = replies(talk(qm.qmqp, request, source="127.0.0.1"))
        return bool(got) and got[0].startswith(K_OK)

    wait_until(qmtp_ok, 30, "the QMTP listener to re-read smtpaccess after SIGHUP")
    wait_until(qmqp_ok, 30, "the QMQP listener to re-read qmqpaccess after SIGHUP")
    qm.wait_until(lambda: len(qm.box) == 2, 30, "one message by each protocol in alice's maildir")
