"""QMTP sans-I/O cores: server parsing and refusals, client encoding and replies."""

import time

import pytest

from mta.interfaces import Delivered, PermFail, TempFail
from mta.netstring import encode_netstring as ns
from mta.qmtp import (
    D_BAD_RECIPIENT,
    D_BAD_SENDER,
    D_DATABYTES,
    D_RCPTHOSTS,
    MessageReceived,
    MessageRefused,
    ProtocolError,
    QmtpServer,
    ReplyDecoder,
    encode_package,
    outcome_from_reply,
    qmtp_replies,
    received_line,
)

BODY = b"Subject: hi\n\nbody\n"


def allow_all(address):
    return True


def package(sender=b"a@b.example", rcpts=(b"x@y.example",), body=BODY, mode=b"\n"):
    return ns(mode + body) + ns(sender) + ns(b"".join(ns(r) for r in rcpts))


def feed_bytewise(server, data):
    events = []
    for i in range(len(data)):
        events += server.receive_data(data[i : i + 1])
    return events


def test_package_from_the_client_core_round_trips():
    wire = b"".join(encode_package("a@b.example", ["x@y.example", "z@w.example"], BODY))
    assert wire == package(rcpts=(b"x@y.example", b"z@w.example"))
    for events in (QmtpServer(allow_all).receive_data(wire), feed_bytewise(QmtpServer(allow_all), wire)):
        assert events == [MessageReceived("a@b.example", ("x@y.example", "z@w.example"), BODY)]


def test_several_packages_in_one_read_and_clean_eof():
    server = QmtpServer(allow_all)
    events = server.receive_data(package() + package(sender=b""))
    assert [e.sender for e in events] == ["a@b.example", ""]
    assert server.receive_eof() == []


def test_crlf_mode_is_converted_to_lf():
    [event] = QmtpServer(allow_all).receive_data(package(body=b"A: b\r\n\r\nx\ry\r\n", mode=b"\r"))
    assert event.data == b"A: b\n\nx\ry\n"


def test_rcpthosts_refusal_is_per_recipient_and_in_order():
    server = QmtpServer(lambda a: not a.endswith("@relay.example"))
    [event] = server.receive_data(package(rcpts=(b"ok@y.example", b"no@relay.example", b"ok2@y.example")))
    assert event.recipients == ("ok@y.example", "ok2@y.example")
    replies = ReplyDecoder().feed(qmtp_replies(event, Delivered("ok 1 qp 2")))
    assert replies[0] == replies[2] == Delivered("ok 1 qp 2")
    assert replies[1] == PermFail(D_RCPTHOSTS[1:].decode(), "5.7.1")


def test_bad_recipients_get_qmail_text_nul_and_overlong():
    server = QmtpServer(allow_all)
    [event] = server.receive_data(package(rcpts=(b"n\x00l@y.example", b"a" * 1000, b"ok@y.example")))
    assert event.recipients == ("ok@y.example",)
    assert dict(event.refusals) == {0: D_BAD_RECIPIENT, 1: D_BAD_RECIPIENT}


def test_all_recipients_refused_is_nothing_to_submit():
    [event] = QmtpServer(lambda a: False).receive_data(package(rcpts=(b"a@x", b"b@x")))
    assert isinstance(event, MessageRefused)
    assert event.reply == ns(D_RCPTHOSTS) * 2


@pytest.mark.parametrize("sender", [b"a\x00b@example.org", b"s" * 1000, b"\xff@x"])
def test_bad_sender_refuses_each_recipient(sender):
    [event] = QmtpServer(allow_all).receive_data(package(sender=sender, rcpts=(b"x@y", b"z@w")))
    assert event == MessageRefused("unacceptable sender", ns(D_BAD_SENDER) * 2)


def test_oversized_message_refused_and_skipped():
    server = QmtpServer(allow_all, max_message=10)
    events = server.receive_data(package(body=b"x" * 11) + package(body=b"y" * 10))
    assert events[0] == MessageRefused("message too large", ns(D_DATABYTES))
    assert isinstance(events[1], MessageReceived) and events[1].data == b"y" * 10


@pytest.mark.parametrize(
    "wire",
    [
        b"12a:",  # LM-14: non-digit
        b"0:,",  # LM-14: a message needs its LF/CR byte
        b"99999999999:",  # LM-14: absurd length
        b"01:\n,",  # leading zero
        ns(b"xbody") + ns(b"a@b") + ns(ns(b"x@y")),  # first byte neither LF nor CR
        ns(b"\nbody") + ns(b"a@b") + b"0:,",  # empty recipient list
        ns(b"\nbody") + ns(b"a@b") + b"5:9:x@y.example,,",  # recipient overruns the list
        ns(b"\nbody") + ns(b"a@b") + b"6:3:x@y;,",  # missing inner comma
        ns(b"\nbody") + b"3:a@b;",  # missing comma after sender
    ],
)
def test_malformed_packages_are_protocol_errors(wire):
    server = QmtpServer(allow_all)
    events = server.receive_data(wire)
    assert len(events) == 1 and isinstance(events[0], ProtocolError), events
    assert server.receive_data(package()) == []  # dead after the error: nothing more submitted


@pytest.mark.parametrize("cut", [1, 5, 20, 30])
def test_eof_inside_a_package_submits_nothing(cut):
    server = QmtpServer(allow_all)
    assert server.receive_data(package()[:cut]) == []
    [event] = server.receive_eof()
    assert isinstance(event, ProtocolError) and "truncated" in event.reason


def test_outcome_from_reply():
    assert outcome_from_reply(b"Kok 123 qp 9") == Delivered("ok 123 qp 9")
    assert outcome_from_reply(b"Zdisk full (#4.3.0)") == TempFail("disk full (#4.3.0)", "4.3.0")
    assert outcome_from_reply(b"Dno such user (#5.1.1)") == PermFail("no such user (#5.1.1)", "5.1.1")
    assert outcome_from_reply(b"Dgo away") == PermFail("go away", "5.0.0")
    for bad in (b"", b"Xwhat"):
        assert isinstance(outcome_from_reply(bad), TempFail)


def test_reply_decoder_incremental():
    wire = ns(b"Kok") + ns(b"Ztry later (#4.2.1)")
    decoder, got = ReplyDecoder(), []
    for i in range(len(wire)):
        got += decoder.feed(wire[i : i + 1])
    assert got == [Delivered("ok"), TempFail("try later (#4.2.1)", "4.2.1")]


def test_encode_package_needs_a_recipient():
    with pytest.raises(ValueError):
        encode_package("a@b", [], BODY)


def test_twenty_thousand_recipients_linear_both_ways():
    rcpts = (f"user{i}@dest{i % 50}.example" for i in range(20_000))  # an iterator, consumed once
    started = time.perf_counter()
    wire = b"".join(encode_package("list-return-@lists.example-@[]", rcpts, BODY))
    [event] = QmtpServer(allow_all).receive_data(wire)
    replies = ReplyDecoder().feed(qmtp_replies(event, Delivered("ok")))
    elapsed = time.perf_counter() - started
    assert len(event.recipients) == 20_000 and event.recipients[-1] == "user19999@dest49.example"
    assert len(replies) == 20_000
    assert elapsed < 5.0, f"20k recipients took {elapsed:.2f}s"


def test_received_line():
    line = received_line("QMTP", "127.0.0.1", "mx.example", 0.0)
    assert line == b"Received: from unknown ([127.0.0.1])\n  by mx.example with QMTP; 1 Jan 1970 00:00:00 -0000\n"
