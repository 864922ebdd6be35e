"""The sans-I/O SMTP server core: bytes in, events out, one test per matrix row."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from mta.smtp import replies as R
from mta.smtp.policy import SmtpPolicy
from mta.smtp.server import (
    CloseConnection, MessageReady, SendBytes, SmtpServer, StartTls, State,
)

LOCAL = {"local.test", "lists.local.test", "mx.local.test"}
USERS = {"alice", "bob", "joe", "jane", "postmaster", "list"}
ME = "mx.local.test"


def exists(address: str) -> bool:
    return address.rpartition("@")[0].lower() in USERS


def policy(**kw) -> SmtpPolicy:
    return SmtpPolicy(me=ME, is_local_domain=lambda d: d.lower() in LOCAL, rcpt_exists=exists, **kw)


class Session:
    """Drives one core; accepts each message at once unless auto_queue is False."""

    def __init__(self, pol: SmtpPolicy | None = None, *, may_relay=False, tls=False,
                 greet=True, auto_queue=True, ehlo=True):
        self.core = SmtpServer(pol or policy(), client_ip="192.0.2.9", local_ip="127.0.0.1",
                               may_relay=may_relay, tls_available=tls)
        self.auto_queue = auto_queue
        self.messages: list[MessageReady] = []
        self.closed = False
        self.starttls = 0
        self.out = b""
        if greet:
            assert self.take(self.core.greet()).startswith("220 ")
            if ehlo:
                assert self.send(b"EHLO t.example\r\n").startswith(f"250-{ME}\r\n")

    def take(self, events) -> str:
        text = b""
        for ev in events:
            if isinstance(ev, SendBytes):
                text += ev.data
            elif isinstance(ev, CloseConnection):
                self.closed = True
            elif isinstance(ev, StartTls):
                self.starttls += 1
            elif isinstance(ev, MessageReady):
                self.messages.append(ev)
                if self.auto_queue:
                    text += self.take(self.core.message_queued(1732550000, 1234)).encode()
        self.out += text
        return text.decode("latin-1")

    def send(self, data: bytes) -> str:
        return self.take(self.core.receive_data(data))

    def lines(self, data: bytes) -> list[str]:
        return self.send(data).splitlines()


ENVELOPE = b"MAIL FROM:<test@t.example>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\n"


def start_data(s: Session) -> None:
    assert s.send(b"MAIL FROM:<test@t.example>\r\n") == "250 ok\r\n"
    assert s.send(b"RCPT TO:<alice@local.test>\r\n") == "250 ok\r\n"
    assert s.send(b"DATA\r\n") == "354 go ahead\r\n"


def test_greeting_and_ehlo_keywords():
    assert Session(ehlo=False).out == f"220 {ME} ESMTP\r\n".encode()
    s = Session(policy(databytes=1000000), ehlo=False)
    assert s.send(b"EHLO t.example\r\n") == (
        f"250-{ME}\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n")
    tls = Session(tls=True, ehlo=False)
    assert tls.send(b"EHLO t.example\r\n").endswith("250-8BITMIME\r\n250 STARTTLS\r\n")
    greeted = SmtpServer(policy(greeting="mx.example.org hi"), client_ip="192.0.2.1")
    assert greeted.greet() == [SendBytes(b"220 mx.example.org hi ESMTP\r\n")]


def test_transaction_unstuffs_and_converts_line_ends():
    s = Session()
    start_data(s)
    reply = s.send(b"Subject: a\r\n\r\n..dot\r\n..\r\nend\r\n.\r\n")
    assert reply == "250 ok 1732550000 qp 1234\r\n"
    [m] = s.messages
    assert (m.sender, m.recipients, m.helo, m.protocol) == ("test@t.example", ("alice@local.test",), "t.example", "ESMTP")
    assert m.data == b"Subject: a\n\n.dot\n.\nend\n"
    assert s.core.state is State.COMMAND and s.core.sender is None


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\n.\r\n"], ids=["SM1-lf-dot-lf", "SM2-lf-dot-crlf"])
def test_bare_lf_smuggling_refused(fake_end):
    s = Session()
    start_data(s)
    smuggle = (b"Subject: a\r\n\r\nbody" + fake_end + b"MAIL FROM:<smuggled@t.example>\r\n"
               b"RCPT TO:<alice@local.test>\r\nDATA\r\nSubject: S\r\n\r\nS\r\n.\r\n")
    assert s.send(smuggle) == R.R451_BARE_LF + "\r\n"
    assert s.closed and s.messages == []
    assert s.send(b"QUIT\r\n") == ""


@pytest.mark.parametrize("fake_end", [b"\r.\r\n", b"\r.\r", b"\r\n\x00.\r\n"], ids=["SM3-crcrlf", "SM3-crcr", "SM4-nul"])
def test_lone_cr_and_nul_lines_are_data(fake_end):
    s = Session()
    start_data(s)
    rest = (b"MAIL FROM:<smuggled@t.example>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\n"
            b"Subject: S\r\n\r\nS\r\n.\r\n")
    assert s.send(b"Subject: a\r\n\r\nbody" + fake_end + rest) == "250 ok 1732550000 qp 1234\r\n"
    [m] = s.messages
    assert m.sender == "test@t.example"
    body = fake_end.replace(b"\r\n", b"\n")
    assert m.data == b"Subject: a\n\nbody" + body + rest[:-3].replace(b"\r\n", b"\n")


def test_sm8_body_pipelined_before_354_is_a_sync_error():
    s = Session()
    assert s.lines(b"MAIL FROM:<a@t.example>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\n"
                   b"Subject: x\r\n\r\nhi\r\n.\r\n") == ["250 ok", "250 ok", R.R554_SYNC]
    assert s.closed and s.messages == []


def test_pl1_valid_group_replies_in_order():
    s = Session()
    assert s.lines(b"MAIL FROM:<a@t.example>\r\nRCPT TO:<alice@local.test>\r\n"
                   b"RCPT TO:<bob@local.test>\r\nDATA\r\n") == ["250 ok", "250 ok", "250 ok", "354 go ahead"]
    assert s.send(b"hi\r\n.\r\n").startswith("250 ok ")
    assert s.messages[0].recipients == ("alice@local.test", "bob@local.test")


def test_pl2_early_talker():
    s = Session(greet=False)
    assert s.send(b"EHLO x\r\n") == R.R554_SYNC + "\r\n"
    assert s.closed and s.core.state is State.CLOSED


@pytest.mark.parametrize("first", [b"HELO x\r\n", b"EHLO x\r\nMAIL FROM:<a@t.example>\r\n"])
def test_pl3_pipelining_without_ehlo_or_after_ehlo(first):
    s = Session(ehlo=False)
    if first.startswith(b"HELO"):
        assert s.send(first) == f"250 {ME}\r\n"
        out = s.lines(b"MAIL FROM:<a@t.example>\r\nRCPT TO:<alice@local.test>\r\n")
    else:
        out = s.lines(first)  # EHLO must end its group (RFC 2920 3.1)
    assert out == [R.R554_SYNC] and s.closed


def test_pipelined_commands_after_the_dot_wait_for_the_queue():
    s = Session(auto_queue=False)
    start_data(s)
    assert s.send(b"hi\r\n.\r\nMAIL FROM:<b@t.example>\r\nRCPT TO:<bob@local.test>\r\nDATA\r\n") == ""
    assert s.core.state is State.WAITING and len(s.messages) == 1
    assert s.take(s.core.message_queued(5, 6)).splitlines() == ["250 ok 5 qp 6", "250 ok", "250 ok", "354 go ahead"]


def test_queue_refusals():
    s = Session(auto_queue=False)
    start_data(s)
    s.send(b"hi\r\n.\r\n")
    assert s.take(s.core.message_refused(True, "qq write error or disk full (#4.3.0)")) == (
        "451 qq write error or disk full (#4.3.0)\r\n")
    start_data(s)
    s.send(b"hi\r\n.\r\n")
    assert s.take(s.core.message_refused(False, "envelope\r\nbroken (#5.3.0)")) == "554 qq envelope broken (#5.3.0)\r\n"
    with pytest.raises(RuntimeError):
        s.core.message_queued(1, 2)


def test_tl1_starttls_discards_pipelined_plaintext_and_resets():
    s = Session(tls=True)
    s.send(b"MAIL FROM:<a@t.example>\r\n")
    assert s.send(b"STARTTLS\r\nRSET\r\n") == R.R220_STARTTLS + "\r\n"
    assert s.starttls == 1
    s.core.tls_started()
    assert s.send(b"NOOP\r\n") == "250 ok\r\n"  # no reply for the RSET ever appears
    assert s.send(b"MAIL FROM:<a@t.example>\r\n") == R.R503_HELLO_FIRST + "\r\n"
    assert "STARTTLS" not in s.send(b"EHLO t.example\r\n")
    assert s.send(b"STARTTLS\r\n") == R.R503_ALREADY_TLS + "\r\n"
    start_data(s)
    s.send(b"hi\r\n.\r\n")
    assert s.messages[0].protocol == "ESMTPS"


def test_tl3_starttls_not_offered_without_a_certificate():
    s = Session(ehlo=False)
    assert "STARTTLS" not in s.send(b"EHLO t.example\r\n")
    assert s.send(b"STARTTLS\r\n") == "502 unimplemented (#5.5.1)\r\n"
    assert not s.starttls


def test_rl1_relay_refused_unless_client_may_relay():
    s = Session()
    s.send(b"MAIL FROM:<a@t.example>\r\n")
    assert s.send(b"RCPT TO:<victim@other.example>\r\n") == R.R553_RCPTHOSTS + "\r\n"
    r = Session(may_relay=True)
    r.send(b"MAIL FROM:<a@t.example>\r\n")
    assert r.send(b"RCPT TO:<victim@other.example>\r\n") == "250 ok\r\n"


NMAP_RCPTS = [
    "to%other.example@[127.0.0.1]", "to%other.example@local.test", '"to@other.example"',
    '"to%other.example"', "to@other.example@[127.0.0.1]", '"to@other.example"@[127.0.0.1]',
    "to@other.example@local.test", "@[127.0.0.1]:to@other.example", "@local.test:to@other.example",
    "other.example!to", "other.example!to@[127.0.0.1]", "other.example!to@local.test",
]


@pytest.mark.parametrize("sender", ["", "from@other.example", "from@[127.0.0.1]"])
def test_rl2_nmap_relay_forms_all_refused(sender):
    s = Session()
    for rcpt in NMAP_RCPTS:
        assert s.send(f"RSET\r\n".encode()) == "250 flushed\r\n"
        assert s.send(f"MAIL FROM:<{sender}>\r\n".encode()) == "250 ok\r\n"
        reply = s.send(f"RCPT TO:<{rcpt}>\r\n".encode())
        assert reply[0] == "5", (rcpt, reply)
    assert s.send(b"DATA\r\n") == R.R503_RCPT_FIRST + "\r\n"


def test_rl3_no_rcpthosts_fails_closed_and_wildcards():
    s = Session(policy(rcpthosts=None))
    s.send(b"MAIL FROM:<a@t.example>\r\n")
    assert s.send(b"RCPT TO:<v@other.example>\r\n").startswith("553 ")
    assert s.send(b"RCPT TO:<alice@local.test>\r\n") == "250 ok\r\n"
    w = Session(policy(rcpthosts=(".example", "local.test")))
    w.send(b"MAIL FROM:<a@t.example>\r\n")
    assert w.send(b"RCPT TO:<v@sub.other.example>\r\n") == "250 ok\r\n"  # secondary MX, not local
    assert w.send(b"RCPT TO:<v@example>\r\n").startswith("553 ")
    assert w.send(b"RCPT TO:<v@lists.local.test>\r\n").startswith("553 ")


def test_rl4_bracketed_own_ip_is_local_foreign_ip_is_not():
    s = Session(policy(localiphost="local.test"))
    s.send(b"MAIL FROM:<a@t.example>\r\n")
    assert s.send(b"RCPT TO:<alice@[127.0.0.1]>\r\n") == "250 ok\r\n"
    assert s.send(b"RCPT TO:<alice@[192.0.2.1]>\r\n") == R.R553_RCPTHOSTS + "\r\n"
    assert s.send(b"RCPT TO:<postmaster>\r\n") == "250 ok\r\n"
    assert s.core.recipients == ["alice@local.test", f"postmaster@{ME}"]


def test_bs1_unknown_local_user_refused_at_rcpt():
    s = Session(may_relay=True)
    s.send(b"MAIL FROM:<a@t.example>\r\n")
    assert s.send(b"RCPT TO:<nosuchuser@local.test>\r\n") == R.R550_NO_MAILBOX + "\r\n"
    assert s.send(b"DATA\r\n") == R.R503_RCPT_FIRST + "\r\n"


def test_lm1_long_command_then_session_goes_on():
    s = Session()
    assert s.send(b"NOOP " + b"a" * 600 + b"\r\n") == R.R500_LINE_TOO_LONG + "\r\n"
    assert s.send(b"NOOP\r\n") == "250 ok\r\n"
    assert s.lines(b"NOOP " + b"a" * 2000 + b"\r\nRSET\r\n") == [R.R500_LINE_TOO_LONG, "250 flushed"]


def test_lm2_endless_command_line_closes_with_bounded_memory():
    s = Session()
    chunk = b"x" * 65536
    tracemalloc.start()
    try:
        fed = 0
        while not s.closed and fed < 64 * 1024 * 1024:
            s.send(chunk)
            fed += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert s.closed and fed <= 4 * len(chunk)
    assert s.out.decode().endswith(R.R500_LINE_TOO_LONG + "\r\n")
    assert peak < 1024 * 1024


def test_lm3_long_data_lines_kept_byte_exact_with_bounded_buffer():
    s = Session()
    start_data(s)
    line = (b"abcdefgh\x80\xff\r" * 30000)[:300000]  # 8-bit bytes and lone CRs
    body = b"Subject: x\r\n\r\n" + b"b" * 5555 + b"\r\n" + line + b"\r\n.tail\r\n"
    for i in range(0, len(body), 10000):
        s.send(body[i:i + 10000])
        assert len(s.core._buf) <= 70000
    assert s.send(b".\r\n").startswith("250 ")
    assert s.messages[0].data == b"Subject: x\n\n" + b"b" * 5555 + b"\n" + line + b"\ntail\n"


def test_lm4_oversize_message_and_size_parameter():
    s = Session(policy(databytes=1000000))
    start_data(s)
    for _ in range(20):
        assert s.send(b"y" * 99998 + b"\r\n") == ""
    assert s.send(b".\r\n") == R.R552_TOO_BIG + "\r\n"
    assert s.messages == [] and not s.closed
    assert s.send(b"MAIL FROM:<a@t.example> SIZE=2000000\r\n") == R.R552_TOO_BIG + "\r\n"
    assert s.send(b"MAIL FROM:<a@t.example> SIZE=1000 BODY=8BITMIME\r\n") == "250 ok\r\n"
    assert s.send(b"RCPT TO:<alice@local.test> NOTIFY=NEVER\r\n").startswith("555 ")


def test_lm5_recipient_flood():
    s = Session()
    s.send(b"MAIL FROM:<a@t.example>\r\n")
    out = s.lines(b"RCPT TO:<alice@local.test>\r\n" * 1001)
    assert out[:100] == ["250 ok"] * 100 and out[100:] == [R.R452_TOO_MANY_RECIPIENTS] * 901
    assert s.send(b"DATA\r\n") == "354 go ahead\r\n"
    assert s.send(b"hi\r\n.\r\n").startswith("250 ")
    assert len(s.messages[0].recipients) == 100


def test_lm7_error_flood():
    s = Session()
    replies = [s.send(b"FOO\r\n") for _ in range(30)]
    assert replies[:19] == ["502 unimplemented (#5.5.1)\r\n"] * 19
    assert replies[19] == "502 unimplemented (#5.5.1)\r\n" + R.R421_TOO_MANY_ERRORS.format(me=ME) + "\r\n"
    assert replies[20:] == [""] * 10 and s.closed


def test_lm8_sequence_errors():
    s = Session()
    assert s.send(b"RCPT TO:<alice@local.test>\r\n") == "503 MAIL first (#5.5.1)\r\n"
    assert s.send(b"DATA\r\n") == "503 MAIL first (#5.5.1)\r\n"
    s.send(b"MAIL FROM:<a@t.example>\r\n")
    assert s.send(b"DATA\r\n") == "503 RCPT first (#5.5.1)\r\n"
    assert s.send(b"MAIL FROM:<a@t.example>\r\n") == R.R503_NESTED_MAIL + "\r\n"
    assert Session(ehlo=False).send(b"MAIL FROM:<a@t.example>\r\n") == R.R503_HELLO_FIRST + "\r\n"


def test_lm9_nul_in_commands():
    s = Session()
    s.send(b"MAIL FROM:<a@t.example>\r\n")
    assert s.send(b"RCPT TO:<alice\x00@other.example>\r\n") == R.R501_NUL + "\r\n"
    assert s.send(b"HELO \x00\r\n") == R.R501_NUL + "\r\n"
    assert s.core.recipients == []


def test_lm11_address_lengths():
    s = Session()
    s.send(b"MAIL FROM:<a@t.example>\r\n")
    assert s.send(b"RCPT TO:<" + b"a" * 65 + b"@local.test>\r\n") == R.R501_ADDRESS_TOO_LONG + "\r\n"
    assert s.send(b"RCPT TO:<alice@" + b"d." * 146 + b"test>\r\n") == R.R501_ADDRESS_TOO_LONG + "\r\n"
    assert s.send(b"RCPT TO:<alice@" + b"d." * 545 + b"test>\r\n") == R.R500_LINE_TOO_LONG + "\r\n"
    assert s.send(b"RCPT TO:<" + b"a" * 64 + b"@local.test>\r\n") == R.R550_NO_MAILBOX + "\r\n"
    assert s.core.recipients == []


def test_lm12_no_user_enumeration():
    s = Session()
    assert s.send(b"VRFY alice\r\n") == "252 send some mail, i'll try my best\r\n"
    assert s.send(b"VRFY nosuchuser\r\n") == "252 send some mail, i'll try my best\r\n"
    assert s.send(b"EXPN list\r\n") == "502 unimplemented (#5.5.1)\r\n"


def test_lm13_8bit_and_nul_body_byte_exact():
    s = Session()
    s.send(b"MAIL FROM:<a@t.example> BODY=8BITMIME\r\n")
    s.send(b"RCPT TO:<alice@local.test>\r\n")
    s.send(b"DATA\r\n")
    body = bytes(range(0x80, 0x100)) + b"\x00after-nul"
    assert s.send(b"Subject: 8\r\n\r\n" + body + b"\r\n.\r\n").startswith("250 ")
    assert s.messages[0].data == b"Subject: 8\n\n" + body + b"\n"


@pytest.mark.parametrize("hops, accepted", [(99, True), (100, False)])
def test_lp2_hop_count(hops, accepted):
    s = Session()
    start_data(s)
    header = b"Received: from x\r\n" * (hops - 1) + b"delivered-to: alice@local.test\r\n"
    reply = s.send(header + b"Subject: loop\r\n\r\nReceived: in the body\r\n.\r\n")
    assert reply.startswith("250 ") if accepted else reply == R.R554_TOO_MANY_HOPS + "\r\n"
    assert len(s.messages) == int(accepted)


def test_every_split_of_the_input_gives_the_same_result():
    data = (b"MAIL FROM:<a@t.example>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\n")
    body = b"Subject: s\r\n\r\n.lead\r\nx\ry\r\n\r.\r\n..\r\n" + b"z" * 70000 + b"\r\n.\r\n"
    rng = random.Random(7)
    for trial in range(20):
        s = Session()
        for line in data.split(b"\r\n")[:-1]:
            s.send(line + b"\r\n")
        i = 0
        while i < len(body):
            n = rng.choice([1, 7, 300, 70000]) if trial else 1
            s.send(body[i:i + n])
            i += n
        [m] = s.messages
        assert m.data == b"Subject: s\n\nlead\nx\ry\n\r.\n.\n" + b"z" * 70000 + b"\n"


def test_timeout_and_bare_lf_in_commands():
    s = Session()
    assert s.send(b"NOOP\n") == "250 ok\r\n"  # commands may end in LF alone (qmail, Postfix)
    assert s.take(s.core.timed_out()) == R.R451_TIMEOUT + "\r\n"
    assert s.closed


def test_refuse_and_quit():
    core = SmtpServer(policy(), client_ip="192.0.2.1")
    events = core.refuse(R.R554_ACCESS_DENIED)
    assert events == [SendBytes(R.R554_ACCESS_DENIED.format(me=ME).encode() + b"\r\n"), CloseConnection()]
    s = Session()
    assert s.send(b"QUIT\r\nNOOP\r\n") == f"221 {ME}\r\n" and s.closed


def test_policy_from_control_files(tmp_path):
    from mta.control import load_control

    control = tmp_path / "control"
    control.mkdir()
    (control / "me").write_text("mx.local.test\n")
    (control / "locals").write_text("local.test\n")
    (control / "virtualdomains").write_text("virt.test:alias-virt\n")
    (control / "databytes").write_text("5000\n")
    (control / "smtpgreeting").write_text("mx.local.test welcome\n")
    pol = SmtpPolicy.from_control(load_control(tmp_path), rcpt_exists=exists)
    assert (pol.me, pol.databytes, pol.rcpthosts) == (ME, 5000, None)
    s = Session(pol, ehlo=False)
    assert "250-SIZE 5000" in s.send(b"EHLO t.example\r\n")
    s.send(b"MAIL FROM:<a@t.example>\r\n")
    assert s.send(b"RCPT TO:<alice@virt.test>\r\n") == "250 ok\r\n"  # virtual domains are ours
    assert s.send(b"RCPT TO:<alice@other.example>\r\n").startswith("553 ")
    assert SmtpServer(pol, client_ip="192.0.2.1").greet() == [SendBytes(b"220 mx.local.test welcome ESMTP\r\n")]


def pump(client, s: Session) -> list:
    """Shuttle bytes between our client core and our server core until both are quiet."""
    events = []
    for _ in range(100):
        out = client.take_output()
        if not out:
            return events
        reply = s.send(b"".join(out))  # one write, as the client transport does
        if reply:
            events += client.receive_data(reply.encode("latin-1"))
    raise AssertionError("client and server never went quiet")


def test_our_client_core_against_our_server_core():
    from mta.interfaces import Delivered, PermFail
    from mta.remote.body import prepare_body
    from mta.smtp.client import SMTPClient
    from mta.smtp.client_events import SessionReady, TransactionDone

    s = Session(ehlo=False)
    client = SMTPClient("t.example", "192.0.2.9")
    events = client.receive_data(s.out) + pump(client, s)
    [ready] = [e for e in events if isinstance(e, SessionReady)]
    assert ready.extensions.pipelining
    for rcpts in (["alice@local.test", "bob@local.test"], ["joe@local.test", "nobody@local.test"]):
        events = client.start_transaction("a@t.example", rcpts, prepare_body(b"Subject: p\n\n.x\nbody\n"))
        events += pump(client, s)
        [done] = [e for e in events if isinstance(e, TransactionDone)]
        assert isinstance(done.outcomes[0], Delivered)
        assert isinstance(done.outcomes[1], Delivered if rcpts[1] != "nobody@local.test" else PermFail)
    assert [m.recipients for m in s.messages] == [("alice@local.test", "bob@local.test"), ("joe@local.test",)]
    assert all(m.data == b"Subject: p\n\n.x\nbody\n" for m in s.messages)
    assert not s.closed
