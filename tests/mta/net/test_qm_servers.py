"""QMTP/QMQP listeners and clients over loopback (uvloop), against each other and
against independent minimal peers written here from the specs (raw socket bytes)."""

import asyncio
import re
import socket
import time

import pytest
import uvloop

from mta.interfaces import Delivered, PermFail, TempFail
from mta.net.qm_client import qmqp_send, qmtp_send
from mta.net.qmqp_server import open_qmqp_server
from mta.net.qmtp_server import open_qmtp_server
from mta.qmtp import SubmitError

BODY = b"Subject: test\n\nhello\n"
WAIT = 10.0  # bound for every network wait; the tests need far less


def run(coro):
    return uvloop.run(asyncio.wait_for(coro, 60))


class Queue:
    """A submit callable that records what it is given (or fails as told)."""

    def __init__(self, fail=None):
        self.fail = fail
        self.messages = []

    async def __call__(self, sender, recipients, data):
        if self.fail is not None:
            raise self.fail
        self.messages.append((sender, recipients, data))
        return len(self.messages)


def rcpthosts(peer_ip, address):
    return address.endswith("@local.test")


def port_of(server):
    return server.sockets[0].getsockname()[1]


def refused_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once closed


async def exchange(port, data, half_close=True):
    """Independent raw client: write bytes, read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if half_close:
            writer.write_eof()
        chunks = []
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), WAIT)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


def ns(data):
    return b"%d:%b," % (len(data), data)


def qmtp_package(sender, rcpts, body=BODY):
    return ns(b"\n" + body) + ns(sender) + ns(b"".join(ns(r) for r in rcpts))


def qmqp_request(sender, rcpts, body=BODY):
    return ns(ns(body) + ns(sender) + b"".join(ns(r) for r in rcpts))


K_REPLY = re.compile(rb"\d+:Kok \d+ qp \d+,")


# --- QMTP -----------------------------------------------------------------


def test_qmtp_round_trip_two_messages_on_one_connection():
    async def main():
        queue = Queue()
        async with await open_qmtp_server("127.0.0.1", 0, submit=queue, rcpt_allowed=rcpthosts,
                                          local_host="mx.local.test") as server:
            results = await qmtp_send("127.0.0.1", port_of(server), [
                ("a@remote.test", ["x@local.test", "y@elsewhere.test"], BODY),
                ("", iter(["z@local.test"]), b"Subject: 2\n\n.\n"),
            ], timeout=WAIT)
        return queue, results

    queue, results = run(main())
    assert [len(r) for r in results] == [2, 1]
    assert isinstance(results[0][0], Delivered) and results[0][0].text.startswith("ok ")
    assert results[0][1] == PermFail(  # RL5: not in rcpthosts
        "sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)", "5.7.1")
    assert isinstance(results[1][0], Delivered)
    assert [(s, r) for s, r, _ in queue.messages] == [("a@remote.test", ("x@local.test",)),
                                                       ("", ("z@local.test",))]
    data = queue.messages[0][2]
    assert re.match(rb"Received: from unknown \(\[127\.0\.0\.1\]\)\n  by mx\.local\.test with QMTP; .+\n", data)
    assert data.endswith(b"\n" + BODY)


@pytest.mark.parametrize("fail, expected", [
    (SubmitError(True, "qq write error or disk full (#4.3.0)"),
     TempFail("qq write error or disk full (#4.3.0)", "4.3.0")),
    (SubmitError(False, "message rejected (#5.3.0)"), PermFail("message rejected (#5.3.0)", "5.3.0")),
    (RuntimeError("bug in the queue"), TempFail("qq temporary problem (#4.3.0)", "4.3.0")),
])
def test_qmtp_submit_failures_become_z_or_d(fail, expected):
    async def main():
        async with await open_qmtp_server("127.0.0.1", 0, submit=Queue(fail),
                                          rcpt_allowed=rcpthosts) as server:
            return await qmtp_send("127.0.0.1", port_of(server),
                                   [("a@b", ["x@local.test", "y@local.test"], BODY)], timeout=WAIT)

    assert run(main()) == [[expected, expected]]


def test_qmtp_independent_raw_client_pipelines_two_packages():
    async def main():
        queue = Queue()
        async with await open_qmtp_server("127.0.0.1", 0, submit=queue, rcpt_allowed=rcpthosts) as server:
            wire = (qmtp_package(b"a@b", [b"x@local.test", b"y@other.test"])
                    + ns(b"\rA: b\r\n\r\nc\r\n") + ns(b"") + ns(ns(b"z@local.test")))
            reply = await exchange(port_of(server), wire)
        return queue, reply

    queue, reply = run(main())
    first, rest = K_REPLY.match(reply), None
    assert first, reply
    rest = reply[first.end():]
    refused = ns(b"Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)")
    assert rest.startswith(refused) and K_REPLY.fullmatch(rest[len(refused):]), reply
    assert queue.messages[1][2].endswith(b"\nA: b\n\nc\n")  # CRLF mode converted


@pytest.mark.parametrize("wire, reply", [
    (b"12a:", b""),
    (b"0:,", b""),
    (b"99999999999:", b""),
    (ns(b"\n" + BODY) + ns(b"a@b") + b"0:,", b""),  # empty recipient list
    (qmtp_package(b"a\x00b@example.org", [b"x@local.test"]), ns(b"Dunacceptable sender (#5.1.7)")),
    (qmtp_package(b"a@b", [b"x" * 1000 + b"@local.test"]),
     ns(b"Dsorry, I can't handle that recipient (#5.1.3)")),
    (qmtp_package(b"a@b", [b"x@local.test"])[:-5], b""),  # client gives up mid-package
])
def test_qmtp_bad_input_refused_nothing_submitted_server_alive(wire, reply):
    async def main():
        queue = Queue()
        async with await open_qmtp_server("127.0.0.1", 0, submit=queue, rcpt_allowed=rcpthosts) as server:
            got = await exchange(port_of(server), wire)
            submitted = list(queue.messages)
            after = await exchange(port_of(server), qmtp_package(b"a@b", [b"x@local.test"]))
        return got, submitted, after

    got, submitted, after = run(main())
    assert got == reply
    assert submitted == []
    assert K_REPLY.fullmatch(after), after


@pytest.mark.parametrize("wire", [b"12a:", b"0:,", b"99999999999:", ns(b"\n" + BODY) + ns(b"a@b") + b"0:,"])
def test_qmtp_bad_netstring_closes_without_half_close(wire):
    async def main():
        async with await open_qmtp_server("127.0.0.1", 0, submit=Queue(), rcpt_allowed=rcpthosts) as server:
            return await exchange(port_of(server), wire, half_close=False)

    assert run(main()) == b""  # the server closed by itself


class SlowFirstQueue(Queue):
    """The first submission takes longer than the server's idle timeout."""

    async def __call__(self, sender, recipients, data):
        if not self.messages:
            await asyncio.sleep(0.5)
        return await super().__call__(sender, recipients, data)


def test_qmtp_replies_keep_package_order_behind_a_slow_submit():
    async def main():
        queue = SlowFirstQueue()
        async with await open_qmtp_server("127.0.0.1", 0, submit=queue, rcpt_allowed=rcpthosts,
                                          timeout=0.2) as server:
            return queue, await qmtp_send("127.0.0.1", port_of(server), [
                ("first@x", ["a@local.test"], BODY),
                ("second@x", ["b@remote.test"], BODY),  # refused at once by the core
                ("third@x", ["c@local.test"], BODY),
            ], timeout=WAIT)

    queue, results = run(main())
    assert [type(r[0]) for r in results] == [Delivered, PermFail, Delivered]
    assert results[0][0].text.endswith("qp 1") and results[2][0].text.endswith("qp 2")
    assert [m[0] for m in queue.messages] == ["first@x", "third@x"]


def test_qmtp_idle_client_is_disconnected():
    async def main():
        async with await open_qmtp_server("127.0.0.1", 0, submit=Queue(), rcpt_allowed=rcpthosts,
                                          timeout=0.3) as server:
            started = time.monotonic()
            got = await exchange(port_of(server), b"", half_close=False)
            return got, time.monotonic() - started

    got, elapsed = run(main())
    assert got == b"" and elapsed < WAIT


def test_qmtp_twenty_thousand_recipients_over_loopback():
    rcpts = [f"user{i}@local.test" for i in range(20_000)]

    async def main():
        queue = Queue()
        async with await open_qmtp_server("127.0.0.1", 0, submit=queue, rcpt_allowed=rcpthosts) as server:
            started = time.perf_counter()
            results = await qmtp_send("127.0.0.1", port_of(server), [("l-@x-@[]", iter(rcpts), BODY)],
                                      timeout=WAIT)
            return queue, results, time.perf_counter() - started

    queue, results, elapsed = run(main())
    assert len(results[0]) == 20_000 and all(isinstance(o, Delivered) for o in results[0])
    assert queue.messages[0][1] == tuple(rcpts)
    assert elapsed < 10.0, f"20k-recipient QMTP round trip took {elapsed:.2f}s"


def test_qmtp_client_against_independent_server():
    expected = qmtp_package(b"a@b", [b"x@y", b"z@w"]) + qmtp_package(b"", [b"q@r"])

    async def main():
        seen = []

        async def handle(reader, writer):
            seen.append(await asyncio.wait_for(reader.readexactly(len(expected)), WAIT))
            writer.write(ns(b"Kthanks") + ns(b"Zmailbox busy (#4.2.1)"))  # then hang up early
            writer.close()

        async with await asyncio.start_server(handle, "127.0.0.1", 0) as server:
            results = await qmtp_send("127.0.0.1", port_of(server), [
                ("a@b", ["x@y", "z@w"], BODY), ("", ["q@r"], BODY)], timeout=WAIT)
        return seen, results

    seen, results = run(main())
    assert seen == [expected]
    assert results[0] == [Delivered("thanks"), TempFail("mailbox busy (#4.2.1)", "4.2.1")]
    assert isinstance(results[1][0], TempFail) and "closed" in results[1][0].reason


def test_qmtp_client_connection_refused_is_temporary():
    results = run(qmtp_send("127.0.0.1", refused_port(), [("a@b", ["x@y", "z@w"], BODY)],
                            connect_timeout=WAIT))
    assert len(results[0]) == 2
    assert all(isinstance(o, TempFail) and "cannot connect" in o.reason for o in results[0])


# --- QMQP -----------------------------------------------------------------


def allow(peer_ip):
    return peer_ip == "127.0.0.1"


def test_qmqp_client_tries_servers_in_order():
    async def main():
        queue = Queue()
        async with await open_qmqp_server("127.0.0.1", 0, submit=queue, access=allow,
                                          local_host="mx.local.test") as server:
            outcome = await qmqp_send([("127.0.0.1", refused_port()), ("127.0.0.1", port_of(server))],
                                      "a@remote.test", iter(["x@anywhere.test"]), BODY, timeout=WAIT)
        return queue, outcome

    queue, outcome = run(main())
    assert isinstance(outcome, Delivered) and outcome.text.startswith("ok ")
    [(sender, rcpts, data)] = queue.messages
    assert (sender, rcpts) == ("a@remote.test", ("x@anywhere.test",))
    assert b"by mx.local.test with QMQP; " in data and data.endswith(b"\n" + BODY)


def test_qmqp_untrusted_peer_closed_before_anything_is_read():  # RL5
    async def main():
        queue = Queue()
        async with await open_qmqp_server("127.0.0.1", 0, submit=queue, access=lambda ip: False) as server:
            raw = await exchange(port_of(server), qmqp_request(b"from@other.example", [b"to@other.example"]))
            outcome = await qmqp_send([("127.0.0.1", port_of(server))], "a@b", ["c@d"], BODY, timeout=WAIT)
        return queue, raw, outcome

    queue, raw, outcome = run(main())
    assert raw == b"" and queue.messages == []
    assert isinstance(outcome, TempFail)


@pytest.mark.parametrize("wire, reply", [
    (b"12a:", b""),
    (b"10:" + ns(BODY) + ns(b"a@b") + b",", b""),  # LM-14: outer length shorter than its contents
    (qmqp_request(b"a@b", [b"r" * 1000]), ns(b"Dsorry, I can't accept addresses like that (#5.1.3)")),
    (qmqp_request(b"a\x00@b", [b"x@y"]), ns(b"Dsorry, I can't accept addresses like that (#5.1.3)")),
    (qmqp_request(b"a@b", [b"x@y"])[:-3], b""),  # cut short
])
def test_qmqp_bad_input_refused_nothing_submitted_server_alive(wire, reply):
    async def main():
        queue = Queue()
        async with await open_qmqp_server("127.0.0.1", 0, submit=queue, access=allow) as server:
            got = await exchange(port_of(server), wire)
            submitted = list(queue.messages)
            after = await exchange(port_of(server), qmqp_request(b"a@b", [b"x@y"]))
        return got, submitted, after

    got, submitted, after = run(main())
    assert got == reply and submitted == []
    assert K_REPLY.fullmatch(after), after


def test_qmqp_twenty_thousand_recipients_and_submit_error():
    rcpts = [f"user{i}@d{i % 7}.example" for i in range(20_000)]

    async def main():
        queue = Queue()
        async with await open_qmqp_server("127.0.0.1", 0, submit=queue, access=allow) as server:
            ok = await qmqp_send([("127.0.0.1", port_of(server))], "l@x", rcpts, BODY, timeout=WAIT)
        async with await open_qmqp_server("127.0.0.1", 0, submit=Queue(SubmitError(True, "busy (#4.3.0)")),
                                          access=allow) as server:
            busy = await qmqp_send([("127.0.0.1", port_of(server))], "l@x", ["a@b"], BODY, timeout=WAIT)
        return queue, ok, busy

    queue, ok, busy = run(main())
    assert isinstance(ok, Delivered) and queue.messages[0][1] == tuple(rcpts)
    assert busy == TempFail("busy (#4.3.0)", "4.3.0")


def test_qmqp_client_against_independent_server():
    expected = qmqp_request(b"a@b", [b"x@y", b"z@w"])

    async def main():
        seen = []

        async def handle(reader, writer):
            seen.append(await asyncio.wait_for(reader.readexactly(len(expected)), WAIT))
            writer.write(ns(b"Dno thanks (#5.7.1)"))
            writer.close()

        async with await asyncio.start_server(handle, "127.0.0.1", 0) as server:
            outcome = await qmqp_send([("127.0.0.1", port_of(server))], "a@b", ["x@y", "z@w"], BODY,
                                      timeout=WAIT)
        return seen, outcome

    seen, outcome = run(main())
    assert seen == [expected]
    assert outcome == PermFail("no thanks (#5.7.1)", "5.7.1")


def test_qmqp_no_server_reachable_is_temporary():
    outcome = run(qmqp_send([("127.0.0.1", refused_port()), ("127.0.0.1", refused_port())],
                            "a@b", ["c@d"], BODY, connect_timeout=WAIT))
    assert isinstance(outcome, TempFail) and outcome.dsn == "4.4.1"
