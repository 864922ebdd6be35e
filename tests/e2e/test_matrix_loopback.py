"""Security matrix rows over a real socket, through ``mta start`` (issue 4).

The sans-I/O core has one test per row (tests/mta/smtp/test_server.py); here the same
rows are sent as exact bytes to the whole running system on loopback, so the
listener, the queue, the scheduler and local delivery are all in the path:

- SM4, PL3, LM-3, LM-13: what is accepted is delivered byte-exact (maildir file);
- LM-1, LM-5, LM-7, LM-8, LM-9, LM-11, LM-12, TL3: exact replies, nothing queued
  where the row says so;
- RL2 (12 forms x 3 senders, from a client that may not relay and from one that
  may), RL4, LD1 and LD6 through SMTP RCPT, with a sink routed by smtproutes that
  must never see a foreign recipient.

One system per test function; each row opens its own connection.
"""

from __future__ import annotations

import socket

SYNC = b"554 5.5.0 Error: SMTP protocol synchronization\r\n"
QUEUED = b"250 ok "


class Conn:
    """A raw client: exact bytes out, reply lines in (bounded waits)."""

    def __init__(self, port: int, source: str = "127.0.0.1", ehlo: bool = True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                             source_address=(source, 0))
        self.file = self.sock.makefile("rb")
        self.sent = b""
        assert self.line().startswith(b"220 "), "no greeting"
        if ehlo:
            self.send(b"EHLO t.example\r\n")

    def line(self) -> bytes:
        return self.file.readline()

    def reply(self) -> list[bytes]:
        """One (possibly multi-line) reply, each line with its CRLF."""
        try:
            lines = [self.line()]
            while lines[-1][3:4] == b"-":
                lines.append(self.line())
        except TimeoutError:
            raise AssertionError(f"no reply within 10 s after sending {self.sent[:80]!r}") from None
        assert lines[-1].endswith(b"\r\n"), f"connection ended mid-reply: {lines!r}"
        return lines

    def send(self, data: bytes, replies: int = 1) -> list[bytes]:
        self.sent = data
        self.sock.sendall(data)
        return [line for _ in range(replies) for line in self.reply()]

    def one(self, data: bytes) -> bytes:
        [line] = self.send(data)
        return line

    def at_eof(self) -> bool:
        """True if the server closes the connection within 5 s with nothing more to say."""
        self.sock.settimeout(5)
        try:
            return self.file.read() == b""
        except TimeoutError:
            return False

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> "Conn":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def maildir_files(system, name: str) -> list[bytes]:
    box = system.root / "alias" / name
    return [p.read_bytes() for sub in ("new", "cur") for p in sorted((box / sub).iterdir())]


def send_message(c: Conn, mail: bytes, rcpt: bytes, body: bytes) -> bytes:
    assert c.one(mail) == b"250 ok\r\n"
    assert c.one(rcpt) == b"250 ok\r\n"
    assert c.one(b"DATA\r\n") == b"354 go ahead\r\n"
    return c.one(body)


# --- smuggling, pipelining, byte-exact bodies ---------------------------------------


def test_sm4_pl3_lm3_lm13_bodies_byte_exact_and_no_smuggle(system):
    system.maildir("alice")
    system.alias("alice", "./alice/\n")
    system.start()
    smuggled = (b"MAIL FROM:<smuggled@t.example>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\n"
                b"Subject: S\r\n\r\nS\r\n.\r\n")
    with Conn(system.port) as c:  # SM4: <CR><LF><NUL>.<CR><LF> is data, not an end
        reply = send_message(c, b"MAIL FROM:<test@t.example>\r\n", b"RCPT TO:<alice@local.test>\r\n",
                             b"Subject: a\r\n\r\nbody\r\n\x00.\r\n" + smuggled)
        assert reply.startswith(QUEUED), reply
        assert c.one(b"QUIT\r\n") == b"221 local.test\r\n"
    system.wait_until(lambda: len(maildir_files(system, "alice")) == 1, 20, "the SM4 message")
    sm4_body = b"Subject: a\n\nbody\n\x00.\n" + smuggled[:-3].replace(b"\r\n", b"\n")
    assert maildir_files(system, "alice")[0].endswith(sm4_body)
    system.wait_empty()

    with Conn(system.port, ehlo=False) as c:  # PL3: pipelining after HELO is a sync error
        assert c.one(b"HELO x\r\n") == b"250 local.test\r\n"
        assert c.one(b"MAIL FROM:<a@t.example>\r\nRCPT TO:<alice@local.test>\r\n") == SYNC
        assert c.at_eof()
    assert system.queue() == []

    long_line = (bytes(range(0x21, 0x7f)) * 60)[:5555]  # LM-3: a 5,555-byte line
    assert len(long_line) == 5555
    eight_bit = bytes(range(0x80, 0x100)) + b"\x00after-nul"  # LM-13
    with Conn(system.port) as c:
        reply = send_message(c, b"MAIL FROM:<a@t.example>\r\n", b"RCPT TO:<alice@local.test>\r\n",
                             b"Subject: 3\r\n\r\n" + long_line + b"\r\n.\r\n")
        assert reply.startswith(QUEUED), reply
        reply = send_message(c, b"MAIL FROM:<a@t.example> BODY=8BITMIME\r\n",
                             b"RCPT TO:<alice@local.test>\r\n",
                             b"Subject: 8\r\n\r\n" + eight_bit + b"\r\n.\r\n")
        assert reply.startswith(QUEUED), reply
    system.wait_until(lambda: len(maildir_files(system, "alice")) == 3, 20, "the LM-3/LM-13 messages")
    system.wait_empty()
    files = maildir_files(system, "alice")
    assert sum(f.endswith(b"Subject: 3\n\n" + long_line + b"\n") for f in files) == 1, files
    assert sum(f.endswith(b"Subject: 8\n\n" + eight_bit + b"\n") for f in files) == 1, files
    assert not any(b"Return-Path: <smuggled@" in f for f in files)
    assert not any("smuggled@" in line for line in system.log_lines())


# --- limits and malformed commands ----------------------------------------------------


OK, MAIL = b"250 ok\r\n", b"MAIL FROM:<a@t.example>\r\n"
NUL = b"501 5.5.2 NUL characters are not allowed in SMTP commands\r\n"
TOO_LONG_LINE = b"500 5.5.2 Error: line too long\r\n"
TOO_LONG_ADDRESS = b"501 5.1.3 sorry, that address is too long\r\n"
RCPT_FIRST = b"503 RCPT first (#5.5.1)\r\n"
VRFY = b"252 send some mail, i'll try my best\r\n"
# Rows whose safe behaviour is one exact reply per command: (row, [(bytes, reply)]).
# A trailing DATA answered "503 RCPT first" shows no (truncated) address was kept.
REPLY_ROWS = [
    ("LM-1", [(b"NOOP " + b"a" * 600 + b"\r\n", TOO_LONG_LINE), (b"NOOP\r\n", OK)]),
    ("LM-8", [(b"RCPT TO:<alice@local.test>\r\n", b"503 MAIL first (#5.5.1)\r\n"),
              (b"DATA\r\n", b"503 MAIL first (#5.5.1)\r\n"), (MAIL, OK), (b"DATA\r\n", RCPT_FIRST)]),
    ("LM-9", [(MAIL, OK), (b"RCPT TO:<alice\x00@other.example>\r\n", NUL), (b"HELO \x00\r\n", NUL),
              (b"DATA\r\n", RCPT_FIRST)]),
    ("LM-11", [(MAIL, OK), (b"RCPT TO:<" + b"a" * 65 + b"@local.test>\r\n", TOO_LONG_ADDRESS),
               (b"RCPT TO:<alice@" + b"d." * 147 + b">\r\n", TOO_LONG_ADDRESS),  # a 300-octet path
               (b"RCPT TO:<alice@" + b"d." * 547 + b">\r\n", TOO_LONG_LINE),  # 1,100 octets
               (b"DATA\r\n", RCPT_FIRST)]),
    ("LM-12", [(b"VRFY alice\r\n", VRFY), (b"VRFY nosuchuser\r\n", VRFY),
               (b"EXPN list\r\n", b"502 unimplemented (#5.5.1)\r\n")]),
]


def test_lm_rows_and_tl3_replies_over_the_wire(system):
    system.maildir("alice")
    system.alias("alice", "./alice/\n")
    assert not (system.root / "control" / "servercert.pem").exists()
    system.start()
    with Conn(system.port, ehlo=False) as c:  # TL3: no certificate, no STARTTLS offered
        ehlo = c.send(b"EHLO x\r\n")
        assert ehlo[0] == b"250-local.test\r\n" and not any(b"STARTTLS" in line for line in ehlo), ehlo
        assert c.one(b"STARTTLS\r\n") == b"502 unimplemented (#5.5.1)\r\n"
        assert c.one(b"NOOP\r\n") == OK  # still plaintext, still talking
    for row, script in REPLY_ROWS:
        with Conn(system.port) as c:
            for data, want in script:
                assert c.one(data) == want, (row, data[:60])
    check_lm7_error_flood(system.port)
    assert system.queue() == []
    check_lm5_recipient_flood(system.port)
    system.wait_empty()
    assert len(maildir_files(system, "alice")) == 100


def check_lm7_error_flood(port: int) -> None:
    """The 20th error also gets the 421, then the server closes."""
    with Conn(port) as c:
        for _ in range(19):
            assert c.one(b"FOO\r\n") == b"502 unimplemented (#5.5.1)\r\n"
        assert c.send(b"FOO\r\n", replies=2) == [
            b"502 unimplemented (#5.5.1)\r\n", b"421 4.7.0 local.test Error: too many errors\r\n"]
        assert c.at_eof()


def check_lm5_recipient_flood(port: int) -> None:
    """1,001 pipelined RCPTs: 100 accepted, the rest 452, and the session goes on."""
    with Conn(port) as c:
        assert c.one(MAIL) == OK
        replies = c.send(b"RCPT TO:<alice@local.test>\r\n" * 1001, replies=1001)
        assert replies[:100] == [OK] * 100
        assert replies[100:] == [b"452 4.5.3 Error: too many recipients\r\n"] * 901
        assert c.one(b"DATA\r\n") == b"354 go ahead\r\n"
        assert c.one(b"Subject: flood\r\n\r\nx\r\n.\r\n").startswith(QUEUED)
        assert c.one(b"NOOP\r\n") == OK


# --- relay probes and local-part tricks through RCPT ------------------------------------

NMAP_RCPTS = [
    "to%other.example@[127.0.0.1]", "to%other.example@local.test", '"to@other.example"',
    '"to%other.example"', "to@other.example@[127.0.0.1]", '"to@other.example"@[127.0.0.1]',
    "to@other.example@local.test", "@[127.0.0.1]:to@other.example", "@local.test:to@other.example",
    "other.example!to", "other.example!to@[127.0.0.1]", "other.example!to@local.test",
]
SENDERS = ["", "from@other.example", "from@[127.0.0.1]"]


def rl2_probe(port: int, source: str) -> dict[tuple[str, str], bytes]:
    """Every form with every sender, a session per sender (12 refusals stay under the
    error limit of LM-7); DATA for any accepted one. Returns every RCPT reply."""
    replies = {}
    for sender in SENDERS:
        with Conn(port, source=source) as c:
            for rcpt in NMAP_RCPTS:
                assert c.one(b"RSET\r\n") == b"250 flushed\r\n"
                assert c.one(f"MAIL FROM:<{sender}>\r\n".encode()) == b"250 ok\r\n"
                replies[sender, rcpt] = reply = c.one(f"RCPT TO:<{rcpt}>\r\n".encode())
                if not reply.startswith(b"5"):
                    assert c.one(b"DATA\r\n") == b"354 go ahead\r\n"
                    assert c.one(b"Subject: relay probe\r\n\r\nx\r\n.\r\n").startswith(QUEUED)
            assert c.one(b"QUIT\r\n") == b"221 local.test\r\n"  # not dropped for errors
    return replies


def test_rl2_rl4_refused_from_a_client_that_may_not_relay(relay_system, sink):
    system = relay_system
    replies = rl2_probe(system.port, "127.0.3.1")  # the default smtpaccess: allow, no relay
    routing = b"553 sorry, source routes, percent, bang and quoted @ addresses are not accepted here (#5.7.1)\r\n"
    assert replies == {key: routing for key in replies} and len(replies) == 36, replies
    assert system.queue() == []

    with Conn(system.port, source="127.0.3.1") as c:  # RL4
        assert c.one(b"MAIL FROM:<a@t.example>\r\n") == b"250 ok\r\n"
        assert c.one(b"RCPT TO:<alice@[192.0.2.1]>\r\n") == (
            b"553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)\r\n")
        assert c.one(b"RCPT TO:<alice@[127.0.0.1]>\r\n") == b"250 ok\r\n"
        assert c.one(b"DATA\r\n") == b"354 go ahead\r\n"
        assert c.one(b"Subject: rl4\r\n\r\nx\r\n.\r\n").startswith(QUEUED)
    system.wait_until(lambda: len(maildir_files(system, "alice")) == 1, 20, "the RL4 message")
    system.wait_empty()
    [rl4] = maildir_files(system, "alice")
    assert b"Delivered-To: alice@local.test\n" in rl4
    assert sink.messages == []  # not one RCPT for to@other.example, in any form


def test_rl2_from_a_relay_client_only_the_real_mailbox_is_relayed(relay_system, sink):
    """127.0.0.1 may relay: a source route is stripped (RFC 5321 4.1.2), so
    ``@x:to@other.example`` is relaying to ``to@other.example``, which this client may do;
    every other form names a local domain and gets no mailbox there: the percent,
    bang and quoted-@ hacks are never turned into a foreign recipient."""
    system = relay_system
    replies = rl2_probe(system.port, "127.0.0.1")
    routed = {"@[127.0.0.1]:to@other.example", "@local.test:to@other.example"}
    no_mailbox = b"550 sorry, no mailbox here by that name (#5.1.1)\r\n"
    assert replies == {(sender, rcpt): b"250 ok\r\n" if rcpt in routed else no_mailbox
                       for sender in SENDERS for rcpt in NMAP_RCPTS}, replies
    sink.wait_for(6, 20)
    system.wait_empty()
    assert sorted(m.sender for m in sink.messages) == sorted(SENDERS * 2)
    assert all(m.rcpts == ["to@other.example"] for m in sink.messages), sink.messages


def test_ld1_ld6_local_part_tricks_through_rcpt(system):
    alias = system.root / "alias"
    system.maildir("joe")
    system.maildir("joefoo")
    trap = system.maildir("trap")
    system.alias("joe-default", "./joe/\n")
    system.alias("joe-foo", "./joefoo/\n")
    # Files a lookup that escaped or kept "/" could reach, each delivering to the trap.
    for where in (alias / ".qmail-joe-::" / "jane", alias / ".qmail-joe-.." / "jane",
                  system.root / "jane", alias / ".qmail-joe-x"):
        where.mkdir(parents=True, exist_ok=True)
    for path in (alias / ".qmail-joe-::" / "jane" / "foo", alias / ".qmail-joe-.." / "jane" / "foo",
                 system.root / "jane" / "foo", system.root / "etc" / "passwd"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{trap.path}/\n")
        path.chmod(0o644)
    system.start()
    with Conn(system.port) as c:
        for rcpt, subject in ((b"joe-../jane/foo", b"ld1-a"), (b"joe-x/../../etc/passwd", b"ld1-b"),
                              (b"Joe-FOO", b"ld6")):
            reply = send_message(c, b"MAIL FROM:<a@t.example>\r\n",
                                 b"RCPT TO:<" + rcpt + b"@local.test>\r\n",
                                 b"Subject: " + subject + b"\r\n\r\nx\r\n.\r\n")
            assert reply.startswith(QUEUED), (rcpt, reply)
    boxes = ("joe", "joefoo", "trap")
    system.wait_until(lambda: sum(len(maildir_files(system, b)) for b in boxes) == 3, 20,
                      "the three messages in joe, joefoo or trap")
    system.wait_empty()
    assert len(trap) == 0, maildir_files(system, "trap")  # no file outside alias/ was used
    joe = maildir_files(system, "joe")
    assert len(joe) == 2 and all(b"Subject: ld1-" in f for f in joe), joe  # via .qmail-joe-default
    [ld6] = maildir_files(system, "joefoo")  # via .qmail-joe-foo, the extension lower-cased
    assert b"Subject: ld6" in ld6 and b"Delivered-To: Joe-FOO@local.test\n" in ld6, ld6
