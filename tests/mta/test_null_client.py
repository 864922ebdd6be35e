"""A null client (mini-qmail): with control/qmqpservers, qmail-queue hands every message
over by QMQP instead of queueing it; exit codes as qmail-qmqpc's (notqmail
qmail-qmqpc.c: 0 K, 31 D, 71 Z, 72 connect timeout, 73 connection refused, 74
communication failed after connecting, 55 no usable server list)."""

import asyncio
import os
import socket
import sys
import threading
from pathlib import Path

import pytest

from mta.control import ControlError, load_control
from mta.net.qmqp_server import open_qmqp_server
from mta.qmtp import SubmitError
from tests.harness import Instance

BIN = Path(sys.executable).parent


class QmqpPeer:
    def __init__(self, refuse: str | None = None, temporary: bool = False,
                 host: str = "127.0.1.31", port: int = 0):
        self.got, self.refuse, self.temporary = [], refuse, temporary
        self.host, self.port = host, port

    def __enter__(self):
        ready = threading.Event()

        async def main():
            async def submit(sender, rcpts, data):
                if self.refuse:
                    raise SubmitError(self.temporary, self.refuse)
                self.got.append((sender, list(rcpts), data))
                return 7

            self.stop = asyncio.Event()
            try:
                server = await open_qmqp_server(self.host, self.port, submit=submit,
                                                access=lambda ip: True)
            except OSError as exc:
                self.error = exc
                ready.set()
                return
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            await self.stop.wait()
            server.close()

        self.loop = asyncio.new_event_loop()
        self.t = threading.Thread(target=self.loop.run_until_complete, args=(main(),), daemon=True)
        self.t.start()
        assert ready.wait(10)
        if getattr(self, "error", None):
            self.t.join(10)
            raise self.error
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.t.join(10)
        self.loop.close()


def dead_port():
    with socket.socket() as s:
        s.bind(("127.0.1.32", 0))
        return s.getsockname()[1]


@pytest.fixture
def inst(tmp_path):
    return Instance(tmp_path)


def test_handed_over_not_queued(inst):
    with QmqpPeer() as peer:
        inst.control("qmqpservers", f"127.0.1.32:{dead_port()}\n127.0.1.31:{peer.port}\n")
        assert inst.inject("a@mx.test", ["x@y.test", "z@w.test"]) == 0
    [(sender, rcpts, data)] = peer.got
    assert sender == "a@mx.test" and rcpts == ["x@y.test", "z@w.test"]
    assert b"\nReceived: (qmail " in data and data.endswith(b"\n\nhello\n")
    assert inst.queue() == []


def test_permanent_refusal_is_31_temporary_is_71(inst):
    with QmqpPeer(refuse="sorry, no (#5.7.1)") as peer:
        inst.control("qmqpservers", f"127.0.1.31:{peer.port}\n")
        assert inst.inject("a@mx.test", ["x@y.test"]) == 31
    with QmqpPeer(refuse="busy (#4.3.0)", temporary=True) as peer:
        inst.control("qmqpservers", f"127.0.1.31:{peer.port}\n")
        assert inst.inject("a@mx.test", ["x@y.test"]) == 71
    assert inst.queue() == []


def test_connection_refused_is_73(inst):
    inst.control("qmqpservers", f"127.0.1.32:{dead_port()}\n127.0.1.32:{dead_port()}\n")
    assert inst.inject("a@mx.test", ["x@y.test"]) == 73
    assert inst.queue() == []


def test_connect_timeout_is_72(inst):
    """A listener whose accept queue is full drops our SYN: qmail-qmqpc's 10 s timeout."""
    with socket.socket() as full:
        full.bind(("127.0.1.34", 0))
        full.listen(0)
        with socket.create_connection(full.getsockname(), timeout=5):  # fills the queue
            inst.control("qmqpservers", f"127.0.1.32:{dead_port()}\n"
                                        f"127.0.1.34:{full.getsockname()[1]}\n")
            assert inst.inject("a@mx.test", ["x@y.test"]) == 72  # the last server's error
    assert inst.queue() == []


def test_no_reply_after_connecting_is_74_and_next_server_not_tried(inst):
    with socket.socket() as mute, QmqpPeer() as peer:
        mute.bind(("127.0.1.35", 0))
        mute.listen(1)
        inst.control("qmqpservers", f"127.0.1.35:{mute.getsockname()[1]}\n"
                                    f"127.0.1.31:{peer.port}\n")
        got = []

        def read_then_close():  # a machine dying after the request, before its K
            conn, _ = mute.accept()
            with conn:
                conn.settimeout(10)
                while chunk := conn.recv(65536):
                    got.append(chunk)
                    if b"".join(got).endswith(b"x@y.test,,"):
                        break

        t = threading.Thread(target=read_then_close, daemon=True)
        t.start()
        assert inst.inject("a@mx.test", ["x@y.test"]) == 74
        t.join(10)
    assert b"".join(got).endswith(b"x@y.test,,") and peer.got == []  # qmail stops at 74
    assert inst.queue() == []


def test_empty_server_list_is_55(inst):
    inst.control("qmqpservers", "# no servers yet\n")
    assert inst.inject("a@mx.test", ["x@y.test"]) == 55
    inst.control("qmqpservers", "mail.example.test\n")
    assert inst.inject("a@mx.test", ["x@y.test"]) == 55
    assert inst.queue() == []


def test_qmqpservers_bare_ip_means_port_628(inst):
    inst.control("qmqpservers", "127.0.1.36\n# comment\n127.0.1.37:6280\n::1\n")
    assert load_control(inst.root).qmqpservers == (
        ("127.0.1.36", 628), ("127.0.1.37", 6280), ("::1", 628))
    inst.control("qmqpservers", "127.0.1.36:0\n")
    with pytest.raises(ControlError, match="line 1"):
        load_control(inst.root)


@pytest.mark.skipif(os.geteuid() != 0, reason="binding port 628 needs root")
def test_null_client_reaches_bare_ip_server_on_628(inst):
    with QmqpPeer(host="127.0.1.38", port=628) as peer:  # root may bind it; nothing else does
        inst.control("qmqpservers", "127.0.1.38\n")
        assert inst.inject("a@mx.test", ["x@y.test"]) == 0
    assert [(s, r) for s, r, _ in peer.got] == [("a@mx.test", ["x@y.test"])]
