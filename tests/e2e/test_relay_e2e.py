"""Issue 4 acceptance through ``mta start``: relay probes, smuggling probes, pipelining.

Open-relay probes (RL1/RL2 forms) are refused from a client that may not relay (a
connection from 127.0.3.1, which the default smtpaccess allows but does not let
relay) and nothing reaches the sink; relaying from 127.0.0.1 (default ``relay``)
reaches the sink. The smuggling probes SM1-SM3 never produce a second message
once the scheduler has drained the queue. swaks ``--pipeline`` and a raw pipelined
batch get their replies in order.
"""

from __future__ import annotations

import smtplib
import socket
import subprocess

import pytest


PROBES = ["victim@other.example", "victim%other.example@local.test",
          '"victim@other.example"@local.test', "@a.example:victim@other.example",
          "@local.test:victim@other.example",
          "victim@other.example@local.test", "other.example!victim@local.test"]


def test_open_relay_probes_refused_without_relay_right(relay_system, sink):
    system = relay_system
    with smtplib.SMTP("127.0.0.1", system.port, timeout=30,
                      source_address=("127.0.3.1", 0)) as s:
        s.ehlo()
        for probe in PROBES:
            assert s.mail("bob@t.example")[0] == 250
            code, text = s.docmd(f"RCPT TO:<{probe}>")  # raw: smtplib rewrites @a:b@c
            assert code >= 400, (probe, code, text)
            s.rset()
        s.mail("bob@t.example")
        assert s.rcpt("alice@local.test")[0] == 250  # local mail is still welcome
        s.rset()
    assert system.queue() == []
    assert sink.messages == []


def test_relay_allowed_from_relay_client_reaches_sink(relay_system, sink):
    with smtplib.SMTP("127.0.0.1", relay_system.port, timeout=30) as s:
        assert s.sendmail("bob@t.example", ["victim@other.example"],
                          "Subject: relayed\r\n\r\nx\r\n") == {}
    sink.wait_for(1, 20)
    assert sink.messages[0].rcpts == ["victim@other.example"]
    assert sink.messages[0].sender == "bob@t.example"
    relay_system.wait_empty()


def test_relay_refused_when_smtpaccess_says_allow_only(system, sink):
    system.control("smtproutes", f":127.0.1.1:{sink.port}\n")
    system.control("smtpaccess", "127.0.0.1:allow\n")
    system.start()
    with smtplib.SMTP("127.0.0.1", system.port, timeout=30) as s:
        s.ehlo()
        s.mail("bob@t.example")
        code, text = s.rcpt("victim@other.example")
    assert 500 <= code < 600 and b"rcpthosts" in text, (code, text)
    assert system.queue() == [] and sink.messages == []


def _converse(port: int, first: bytes, second: bytes) -> bytes:
    """EHLO, send ``first`` a line at a time up to the 354, send ``second``; all replies until close/idle."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"EHLO t.example\r\n")
        while not f.readline().startswith(b"250 "):
            continue
        replies = b""
        for command in first.splitlines(keepends=True):  # one at a time, no pipelining
            s.sendall(command)
            line = f.readline()
            assert line[:1] in b"23", f"{command!r} got {line!r}"
            replies += line
        s.sendall(second)
        closed = _read_until_idle(s, 2.0)
        replies += closed[0]
        if not closed[1]:  # still open: end any DATA still open, then leave
            s.sendall(b"\r\n.\r\nQUIT\r\n")
            replies += _read_until_idle(s, 10.0)[0]
        return replies


def _read_until_idle(s: socket.socket, idle: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or is quiet for ``idle`` s."""
    s.settimeout(idle)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except TimeoutError:
        return data, False
    except ConnectionResetError:
        return data, True
    return data, True


FIRST = b"MAIL FROM:<test@t.example>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\n"
SMUGGLED = (b"MAIL FROM:<smuggled@t.example>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\n"
            b"Subject: S\r\n\r\nS\r\n.\r\n")


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r.\r"],
                         ids=["LF.LF", "LF.CRLF", "CR.CRLF", "CR.CR"])
def test_smuggling_probe_never_yields_a_second_message(relay_system, fake_end):
    system = relay_system
    replies = _converse(system.port, FIRST, b"Subject: a\r\n\r\nbody" + fake_end + SMUGGLED)
    system.wait_empty(20)
    box = system.root / "alias" / "alice"
    messages = [p.read_bytes() for sub in ("new", "cur") for p in (box / sub).iterdir()]
    assert len(messages) <= 1, (replies, messages)
    for m in messages:  # if kept, the smuggled text is data of the one message
        assert b"Subject: a" in m, m
    assert not any("smuggled@" in line for line in system.log_lines()), replies


def test_swaks_pipeline_delivers(relay_system):
    system = relay_system
    p = subprocess.run(["swaks", "--server", f"127.0.0.1:{system.port}", "--pipeline",
                        "--from", "bob@t.example", "--to", "alice@local.test",
                        "--header", "Subject: swaks"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PIPELINING" in p.stdout
    box = system.root / "alias" / "alice" / "new"
    system.wait_until(lambda: len(list(box.iterdir())) == 1, 20, "the swaks message")


def test_pipelined_replies_come_in_order(relay_system):
    system = relay_system
    with socket.create_connection(("127.0.0.1", system.port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO t.example\r\n")
        while not f.readline().startswith(b"250 "):
            continue
        s.sendall(b"MAIL FROM:<bob@t.example>\r\nRCPT TO:<alice@local.test>\r\n"
                  b"RCPT TO:<nosuch@local.test>\r\nRCPT TO:<victim@other.example>\r\n"
                  b"DATA\r\n")
        codes = [f.readline()[:3] for _ in range(5)]
        assert codes == [b"250", b"250", b"550", b"250", b"354"], codes
        s.sendall(b"Subject: p\r\n\r\nx\r\n.\r\nQUIT\r\n")
        assert f.readline().startswith(b"250")
        assert f.readline().startswith(b"221")
