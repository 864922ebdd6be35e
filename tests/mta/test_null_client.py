"""A null client (mini-qmail): with control/qmqpservers, qmail-queue hands every message
over by QMQP instead of queueing it; exit codes as qmail-qmqpc's."""

import asyncio
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mta.interfaces import PermFail
from mta.net.qmqp_server import open_qmqp_server
from mta.qmtp import SubmitError
from tests.harness import Instance

BIN = Path(sys.executable).parent


class QmqpPeer:
    def __init__(self, refuse: str | None = None):
        self.got, self.refuse = [], refuse

    def __enter__(self):
        ready = threading.Event()

        async def main():
            async def submit(sender, rcpts, data):
                if self.refuse:
                    raise SubmitError(False, self.refuse)
                self.got.append((sender, list(rcpts), data))
                return 7

            self.stop = asyncio.Event()
            server = await open_qmqp_server("127.0.1.31", 0, submit=submit, access=lambda ip: True)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            await self.stop.wait()
            server.close()

        self.loop = asyncio.new_event_loop()
        self.t = threading.Thread(target=self.loop.run_until_complete, args=(main(),), daemon=True)
        self.t.start()
        assert ready.wait(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.t.join(10)


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
    inst.control("qmqpservers", f"127.0.1.32:{dead_port()}\n")
    assert inst.inject("a@mx.test", ["x@y.test"]) == 71
    assert inst.queue() == []
