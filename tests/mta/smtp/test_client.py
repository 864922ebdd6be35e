"""The sans-I/O SMTP client core against scripted server transcripts (no event loop)."""

from __future__ import annotations

import pytest

from mta.interfaces import Delivered, PermFail, TempFail
from mta.remote.body import prepare_body
from mta.smtp.client import (
    Closed, DataSent, LocalProtocolError, SessionFailed, SessionReady, SMTPClient, StartTLS,
    State, TransactionDone,
)
from mta.smtp.reply_parse import ReplyParser, ReplyProtocolError
from mta.status import Stage

BODY = prepare_body(b"Subject: hi\n\nhello\n")
PEER = "192.0.2.7"


def ehlo_reply(*ext: str) -> bytes:
    lines = ["mx.example hello"] + list(ext)
    out = [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]
    return ("\r\n".join(out) + "\r\n").encode()


def ready_client(*ext: str) -> SMTPClient:
    c = SMTPClient("me.example", PEER)
    assert c.receive_data(b"220 mx.example ESMTP\r\n") == []
    assert c.take_output() == [b"EHLO me.example\r\n"]
    events = c.receive_data(ehlo_reply(*ext))
    assert [type(e) for e in events] == [SessionReady]
    assert c.take_output() == []
    return c


def done(events) -> TransactionDone:
    finals = [e for e in events if isinstance(e, TransactionDone)]
    assert len(finals) == 1, events
    return finals[0]


def test_reply_parser_multiline_and_split_feeds():
    p = ReplyParser()
    assert p.feed(b"250-mx hello\r\n250-PIPE") == []
    assert p.pending
    replies = p.feed(b"LINING\r\n250 SIZE 10\r\n354 go\r\n")
    assert [(r.code, r.lines) for r in replies] == [
        (250, ("mx hello", "PIPELINING", "SIZE 10")), (354, ("go",))]
    assert replies[0].text == "250-mx hello\n250-PIPELINING\n250 SIZE 10"
    assert p.feed(b"250\r\n")[0].text == "250"


@pytest.mark.parametrize("garbage", [b"hello\r\n", b"25\r\n", b"250x\r\n",
                                     b"250-a\r\n251 b\r\n", b"2" * 9000])
def test_reply_parser_rejects_garbage(garbage):
    p = ReplyParser()
    with pytest.raises(ReplyProtocolError):
        p.feed(garbage)
    with pytest.raises(ReplyProtocolError):  # poisoned afterwards
        p.feed(b"250 ok\r\n")


def test_extensions_parsed():
    c = ready_client("PIPELINING", "SIZE 1000", "8BITMIME", "STARTTLS", "ENHANCEDSTATUSCODES")
    ext = c.extensions
    assert (ext.pipelining, ext.size, ext.eightbitmime, ext.starttls) == (True, 1000, True, True)
    assert "ENHANCEDSTATUSCODES" in ext.names


def test_pipelined_transaction_one_write_then_body():
    c = ready_client("PIPELINING", "SIZE 0", "8BITMIME")
    assert c.start_transaction("list-a=b.example@l.example", ["a@b.example", "c@d.example"],
                               BODY) == []
    assert c.take_output() == [
        f"MAIL FROM:<list-a=b.example@l.example> SIZE={len(BODY)}\r\n"
        "RCPT TO:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n".encode()]
    # replies may come split anywhere
    assert c.receive_data(b"250 ok\r\n250 ok\r") == []
    events = c.receive_data(b"\n250 ok\r\n354 go\r\n")
    assert [type(e) for e in events] == [DataSent]
    out = c.take_output()
    assert out == [BODY] and out[0] is BODY  # the body is handed over, never copied
    tx = done(c.receive_data(b"250 2.0.0 queued as X\r\n"))
    assert tx.dot_sent
    assert tx.outcomes == (Delivered(f"{PEER} accepted message.\n"
                                     "Remote host said: 250 2.0.0 queued as X"),) * 2
    assert c.state == State.READY
    # a completed DATA needs no RSET before the next transaction
    c.start_transaction("s@x", ["r@y"], BODY)
    assert c.take_output()[0].startswith(b"MAIL FROM:<s@x>")


def test_partial_rcpt_failure_rd4():
    c = ready_client("PIPELINING")
    c.start_transaction("s@x", ["1@y", "2@y", "3@y"], BODY)
    c.take_output()
    c.receive_data(b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n250 ok\r\n354 go\r\n")
    assert c.take_output() == [BODY]
    tx = done(c.receive_data(b"250 ok\r\n"))
    assert isinstance(tx.outcomes[0], Delivered) and isinstance(tx.outcomes[2], Delivered)
    assert tx.outcomes[1] == PermFail(
        f"{PEER} does not like recipient.\nRemote host said: 550 5.1.1 no such user", "5.1.1")


def test_552_after_rcpt_is_temporary():
    c = ready_client("PIPELINING")
    c.start_transaction("s@x", ["1@y"], BODY)
    c.take_output()
    events = c.receive_data(b"250 ok\r\n552 5.2.2 mailbox full\r\n554 no valid recipients\r\n")
    tx = done(events)
    assert tx.outcomes[0] == TempFail(
        f"{PEER} does not like recipient.\nRemote host said: 552 5.2.2 mailbox full", "4.2.2")
    assert not tx.dot_sent
    # the aborted transaction is followed by RSET, in the same pipelined write
    c.start_transaction("s@x", ["1@y"], BODY)
    assert c.take_output()[0].startswith(b"RSET\r\nMAIL FROM:<s@x>\r\n")
    c.receive_data(b"250 flushed\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    assert c.take_output() == [BODY]


def test_all_rcpts_fail_but_data_gets_354_sends_lone_dot():
    c = ready_client("PIPELINING")
    c.start_transaction("s@x", ["1@y", "2@y"], BODY)
    c.take_output()
    c.receive_data(b"250 ok\r\n550 no\r\n450 later\r\n354 go ahead\r\n")
    assert c.take_output() == [b".\r\n"]  # RFC 2920: never the body
    tx = done(c.receive_data(b"554 no recipients\r\n"))
    assert isinstance(tx.outcomes[0], PermFail) and isinstance(tx.outcomes[1], TempFail)


def test_mail_failure_applies_to_every_recipient_pipelined():
    c = ready_client("PIPELINING")
    c.start_transaction("s@x", ["1@y", "2@y"], BODY)
    c.take_output()
    tx = done(c.receive_data(b"451 4.3.0 try later\r\n503 no\r\n503 no\r\n503 no\r\n"))
    want = TempFail(f"Connected to {PEER} but sender was rejected.\n"
                    "Remote host said: 451 4.3.0 try later", "4.3.0")
    assert tx.outcomes == (want, want)


def test_lockstep_without_pipelining():
    c = ready_client("8BITMIME")
    c.start_transaction("s@x", ["1@y", "2@y"], BODY + b"")
    assert c.take_output() == [b"MAIL FROM:<s@x>\r\n"]
    c.receive_data(b"250 ok\r\n")
    assert c.take_output() == [b"RCPT TO:<1@y>\r\n"]
    c.receive_data(b"250 ok\r\n")
    assert c.take_output() == [b"RCPT TO:<2@y>\r\n"]
    c.receive_data(b"250 ok\r\n")
    assert c.take_output() == [b"DATA\r\n"]
    c.receive_data(b"354 go\r\n")
    assert c.take_output() == [BODY]
    tx = done(c.receive_data(b"250 ok\r\n"))
    assert all(isinstance(o, Delivered) for o in tx.outcomes)


def test_lockstep_all_rcpts_fail_no_data_then_rset():
    c = ready_client()
    c.start_transaction("s@x", ["1@y"], BODY)
    c.take_output()
    c.receive_data(b"250 ok\r\n")
    c.take_output()
    tx = done(c.receive_data(b"550 no\r\n"))
    assert c.take_output() == []  # DATA never sent
    assert isinstance(tx.outcomes[0], PermFail)
    c.start_transaction("s@x", ["1@y"], BODY)
    assert c.take_output() == [b"RSET\r\n"]
    c.receive_data(b"250 ok\r\n")
    assert c.take_output() == [b"MAIL FROM:<s@x>\r\n"]


def test_lockstep_mail_5xx_stops_early():
    c = ready_client()
    c.start_transaction("s@x", ["1@y"], BODY)
    c.take_output()
    tx = done(c.receive_data(b"553 5.7.1 sender refused\r\n"))
    assert c.take_output() == []
    assert tx.outcomes[0].dsn == "5.7.1" and isinstance(tx.outcomes[0], PermFail)


def test_ehlo_5xx_falls_back_to_helo():
    c = SMTPClient("me.example", PEER)
    c.receive_data(b"220 old smtpd\r\n")
    c.take_output()
    assert c.receive_data(b"502 unknown command\r\n") == []
    assert c.take_output() == [b"HELO me.example\r\n"]
    events = c.receive_data(b"250 hi\r\n")
    assert [type(e) for e in events] == [SessionReady]
    assert not c.extensions.pipelining


@pytest.mark.parametrize("greeting,kind", [(b"554 go away\r\n", PermFail),
                                           (b"421 busy\r\n", TempFail)])
def test_greeting_failure_is_session_level(greeting, kind):
    c = SMTPClient("me.example", PEER)
    events = c.receive_data(greeting)
    assert len(events) == 1 and isinstance(events[0], SessionFailed)
    assert events[0].stage == Stage.GREETING and isinstance(events[0].outcome, kind)
    assert events[0].outcome.reason.startswith(f"Connected to {PEER} but greeting failed.")
    assert c.take_output() == [b"QUIT\r\n"]
    assert c.state == State.CLOSED


def test_garbage_reply_defers_everything_in_flight():
    c = ready_client("PIPELINING")
    c.start_transaction("s@x", ["1@y", "2@y"], BODY)
    c.take_output()
    events = c.receive_data(b"250 ok\r\nHTTP/1.1 400 Bad\r\n")
    tx = done(events)
    assert all(isinstance(o, TempFail) and o.dsn == "4.4.2" for o in tx.outcomes)
    assert isinstance(events[-1], SessionFailed) and events[-1].stage == Stage.RCPT


def test_reply_out_of_sequence():
    c = ready_client()
    c.start_transaction("s@x", ["1@y"], BODY)
    c.take_output()
    events = c.receive_data(b"250 ok\r\n250 extra\r\n")  # lock-step: only one was asked
    assert isinstance(done(events).outcomes[0], TempFail)
    assert "out of sequence" in done(events).outcomes[0].reason
    events = ready_client().receive_data(b"250 unsolicited\r\n")
    assert isinstance(events[0], SessionFailed) and events[0].stage == Stage.IDLE
    # an idle connection the server dropped is reported, but as IDLE, not as a host fault
    events = ready_client().connection_lost()
    assert [type(e) for e in events] == [SessionFailed] and events[0].stage == Stage.IDLE


def test_connection_lost_after_dot_is_possible_duplicate():
    c = ready_client("PIPELINING")
    c.start_transaction("s@x", ["1@y"], BODY)
    c.take_output()
    c.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert c.take_output() == [BODY]
    events = c.connection_lost()
    tx = done(events)
    assert tx.dot_sent
    assert tx.outcomes[0].reason.startswith("Possible duplicate! Connected to")
    assert events[-1].stage == Stage.DOT


def test_timeout_and_421_mid_transaction():
    c = ready_client("PIPELINING")
    c.start_transaction("s@x", ["1@y"], BODY)
    c.take_output()
    events = c.timed_out()
    assert "timed out" in done(events).outcomes[0].reason
    c = ready_client("PIPELINING")
    c.start_transaction("s@x", ["1@y", "2@y"], BODY)
    c.take_output()
    events = c.receive_data(b"250 ok\r\n550 no\r\n421 4.3.2 shutting down\r\n")
    tx = done(events)
    assert isinstance(tx.outcomes[0], PermFail)  # the 550 stands
    assert isinstance(tx.outcomes[1], TempFail)
    assert isinstance(events[-1], SessionFailed) and events[-1].outcome.dsn == "4.3.2"


def test_size_limit_and_8bitmime():
    c = ready_client("PIPELINING", "SIZE 10", "8BITMIME")
    tx = done(c.start_transaction("s@x", ["1@y"], BODY))
    assert isinstance(tx.outcomes[0], PermFail) and tx.outcomes[0].dsn == "5.3.4"
    assert c.take_output() == []
    c = ready_client("PIPELINING", "8BITMIME")
    c.start_transaction("s@x", ["1@y"], prepare_body("caf\u00e9\n".encode()))
    assert c.take_output()[0].startswith(b"MAIL FROM:<s@x> BODY=8BITMIME\r\n")


def test_line_breaks_in_addresses_never_reach_the_wire():
    c = ready_client("PIPELINING")
    events = c.start_transaction("s@x", ["a@y>\r\nRSET", "b@y"], BODY)
    assert events == []
    out = c.take_output()[0]
    assert out == b"MAIL FROM:<s@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n"
    c.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    tx = done(c.receive_data(b"250 ok\r\n"))
    assert isinstance(tx.outcomes[0], PermFail) and isinstance(tx.outcomes[1], Delivered)


def test_starttls_then_ehlo_again_and_injection_refused():
    c = SMTPClient("me.example", PEER, starttls=True)
    c.receive_data(b"220 mx\r\n")
    c.take_output()
    assert c.receive_data(ehlo_reply("STARTTLS", "PIPELINING")) == []
    assert c.take_output() == [b"STARTTLS\r\n"]
    assert [type(e) for e in c.receive_data(b"220 go ahead\r\n")] == [StartTLS]
    c.tls_established()
    assert c.take_output() == [b"EHLO me.example\r\n"]
    assert [type(e) for e in c.receive_data(ehlo_reply("PIPELINING"))] == [SessionReady]
    assert c.tls_active
    # a reply smuggled after the 220 (CVE-2011-0411 style) ends the session
    c = SMTPClient("me.example", PEER, starttls=True)
    c.receive_data(b"220 mx\r\n")
    c.receive_data(ehlo_reply("STARTTLS"))
    events = c.receive_data(b"220 go ahead\r\n250 injected\r\n")
    assert isinstance(events[-1], SessionFailed)


def test_starttls_refused_continues_in_plaintext():
    c = SMTPClient("me.example", PEER, starttls=True)
    c.receive_data(b"220 mx\r\n")
    c.receive_data(ehlo_reply("STARTTLS", "PIPELINING"))
    events = c.receive_data(b"454 TLS not available\r\n")
    assert [type(e) for e in events] == [SessionReady] and not c.tls_active


def test_quit_and_misuse():
    c = ready_client()
    c.send_quit()
    assert c.take_output() == [b"QUIT\r\n"]
    assert [type(e) for e in c.receive_data(b"221 bye\r\n")] == [Closed]
    with pytest.raises(LocalProtocolError):
        c.start_transaction("s@x", ["r@y"], BODY)
    with pytest.raises(LocalProtocolError):
        ready_client().start_transaction("s@x", [], BODY)


def test_ehlo_and_helo_refused_is_session_level():
    c = SMTPClient("me.example", PEER)
    c.receive_data(b"220 mx\r\n")
    c.receive_data(b"550 no EHLO for you\r\n")
    assert c.take_output()[-1] == b"HELO me.example\r\n"
    events = c.receive_data(b"550 5.7.1 nor HELO\r\n")
    assert isinstance(events[0], SessionFailed) and events[0].stage == Stage.EHLO
    assert isinstance(events[0].outcome, PermFail) and events[0].outcome.dsn == "5.7.1"
    assert "my name was rejected" in events[0].outcome.reason
