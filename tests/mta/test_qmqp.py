"""QMQP sans-I/O cores: server parsing and refusals, client encoding and replies."""

import pytest

from mta.interfaces import Delivered, PermFail, TempFail
from mta.netstring import encode_netstring as ns
from mta.qmqp import D_BAD_ADDRESS, QmqpServer, encode_request, parse_reply, qmqp_reply
from mta.qmtp import MessageReceived, MessageRefused, ProtocolError

BODY = b"Subject: hi\r\n\r\nkept as is\n"


def request(sender=b"a@b.example", rcpts=(b"x@y.example",), body=BODY):
    return ns(ns(body) + ns(sender) + b"".join(ns(r) for r in rcpts))


def test_request_from_the_client_core_round_trips_bytewise():
    wire = b"".join(encode_request("a@b.example", iter(["x@y.example", "z@w.example"]), BODY))
    assert wire == request(rcpts=(b"x@y.example", b"z@w.example"))
    server, events = QmqpServer(), []
    for i in range(len(wire)):
        events += server.receive_data(wire[i : i + 1])
    assert events == [MessageReceived("a@b.example", ("x@y.example", "z@w.example"), BODY)]
    assert server.receive_data(b"trailing junk") == []  # one request per connection
    assert server.receive_eof() == []


@pytest.mark.parametrize(
    "rcpts, sender",
    [
        ((b"r" * 1000,), b"a@b"),  # LM-14: a recipient of 1000+ bytes
        ((b"x@y", b"n\x00l@y"), b"a@b"),
        ((b"x@y",), b"a\x00b"),  # sender with NUL
        ((b"x@y",), b"s" * 1200),
        ((), b"a@b"),  # no recipients
    ],
)
def test_bad_addresses_refused_with_qmail_text(rcpts, sender):
    [event] = QmqpServer().receive_data(request(sender=sender, rcpts=rcpts))
    assert isinstance(event, MessageRefused)
    assert event.reply == ns(D_BAD_ADDRESS)
    assert parse_reply(D_BAD_ADDRESS) == PermFail(D_BAD_ADDRESS[1:].decode(), "5.1.3")


@pytest.mark.parametrize(
    "wire",
    [
        b"12a:",
        b"99999999999:",
        b"10:" + ns(BODY) + ns(b"a@b") + b",",  # LM-14: outer length shorter than its contents
        ns(b"5:hello," + b"3:a@b;"),  # missing inner comma
        ns(ns(BODY) + ns(b"a@b") + b"9:x@y"),  # recipient runs past the outer end
        b"0:,",  # no message netstring at all
    ],
)
def test_malformed_requests_are_protocol_errors(wire):
    server = QmqpServer()
    [event] = server.receive_data(wire)
    assert isinstance(event, ProtocolError), event
    assert server.receive_data(request()) == []


def test_request_over_the_limit_refused_from_its_header():
    [event] = QmqpServer(max_request=100).receive_data(b"101:")
    assert isinstance(event, ProtocolError) and "beyond the limit" in event.reason


@pytest.mark.parametrize("cut", [0, 3, 30])
def test_eof_before_the_request_is_complete(cut):
    server = QmqpServer()
    assert server.receive_data(request()[:cut]) == []
    [event] = server.receive_eof()
    assert isinstance(event, ProtocolError)


def test_replies():
    assert qmqp_reply(Delivered("ok 1 qp 2")) == b"10:Kok 1 qp 2,"
    assert qmqp_reply(TempFail("busy (#4.3.0)")) == b"14:Zbusy (#4.3.0),"
    assert parse_reply(b"Kok") == Delivered("ok")
    assert parse_reply(b"Zlater") == TempFail("later", "4.0.0")


def test_twenty_thousand_recipients():
    rcpts = [f"u{i}@d.example" for i in range(20_000)]
    [event] = QmqpServer().receive_data(b"".join(encode_request("", rcpts, BODY)))
    assert event.recipients == tuple(rcpts) and event.sender == ""
