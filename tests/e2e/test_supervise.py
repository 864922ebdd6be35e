"""Issue 4 acceptance: ``mta start`` supervision, signals and idle-connection load.

SIGKILL of the SMTP listener: restarted within 5 s, messages acknowledged before
the kill delivered. SIGHUP: a new rcpthosts applies to new connections; a broken
control file keeps the old configuration and logs an alert; the scheduler re-reads
smtproutes (a dead route replaced by a live sink, then ``mta flush`` delivers).
SIGTERM: clean exit, a deferred message survives and is delivered after the
restart; a delivery stalled at the receiving sink after the final dot ends
delivered if the sink answers 250 within the workers' stop window, else it stays
queued (never marked delivered without the 250) and is delivered after the
restart. LO1 through the whole system: 500 idle connections from 50 source
addresses leave room for a new client's full transaction.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import time

import pytest

from conftest import free_port, wait_until
from sink import Sink

BODY = "Subject: {n}\r\nMessage-ID: <{n}@t.example>\r\n\r\nbody {n}\r\n"


def send(port: int, rcpt: str, n: int, source: str | None = None) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30,
                      source_address=(source, 0) if source else None) as s:
        assert s.sendmail("bob@t.example", [rcpt], BODY.format(n=n)) == {}


def rcpt_code(port: int, rcpt: str, source: str = "127.0.3.1") -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as s:
        s.ehlo()
        s.mail("bob@t.example")
        return s.rcpt(rcpt)[0]


def test_listener_sigkill_restarted_within_5s_acknowledged_mail_delivered(system):
    box = system.maildir("alice")
    system.alias("alice", "./alice/\n")
    system.start()
    for n in range(5):
        send(system.port, "alice@local.test", n)
    listener = system.component_pid("smtp listener")
    os.kill(listener, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: not system.accepting(), 5, "the killed listener's port to close")
    wait_until(system.accepting, 5, lambda: f"a new listener within 5 s:\n{system.output()[-1500:]}")
    assert time.monotonic() - killed < 5.5
    assert system.component_pid("smtp listener") != listener
    send(system.port, "alice@local.test", 5)
    system.wait_until(lambda: len(box) == 6, 20, "all six messages in the Maildir")
    subjects = sorted(m["Subject"] for m in box.messages())
    assert subjects == [str(n) for n in range(6)]


def test_sighup_reloads_rcpthosts_and_keeps_old_config_on_a_bad_file(system):
    system.start()
    assert rcpt_code(system.port, "v@other.example") == 553
    system.control("rcpthosts", "local.test\nother.example\n")
    system.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: rcpt_code(system.port, "v@other.example") == 250, 10,
               "the new rcpthosts to apply after SIGHUP")
    # a broken control file: the listener keeps the configuration it has
    system.control("rcpthosts", "local.test\n")
    system.control("databytes", "lots\n")
    system.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "alert: unable to reread controls" in system.output(), 10,
               lambda: f"an alert in the output:\n{system.output()[-1500:]}")
    assert rcpt_code(system.port, "v@other.example") == 250
    assert system.accepting()


def test_sigterm_stops_cleanly_and_deferred_mail_survives(system):
    box = system.maildir("soft")
    dot = system.alias("soft", "|exit 111\n")
    system.start()
    send(system.port, "soft@local.test", 1)
    system.wait_until(lambda: any(m["recipients"]["deferred"] for m in system.queue()), 20,
                      "a deferred recipient")
    assert system.stop() == 0
    assert "all components stopped" in system.output()
    assert len(system.queue()) == 1
    dot.write_text("./soft/\n")
    system.start()
    system.flush()
    system.wait_until(lambda: len(box) == 1, 20, "delivery after the restart")
    system.wait_empty()


def test_lo1_500_idle_connections_from_50_addresses_leave_room(system):
    box = system.maildir("alice")
    system.alias("alice", "./alice/\n")
    system.start()
    idle = []
    try:
        for i in range(500):
            s = socket.socket()
            s.bind((f"127.0.2.{i % 50 + 1}", 0))
            s.settimeout(10)
            s.connect(("127.0.0.1", system.port))
            idle.append(s)
        greeted = sum(1 for s in idle[-50:] if s.recv(4).startswith(b"220"))
        assert greeted == 50, "the last 50 idle connections were not all greeted"
        began = time.monotonic()
        send(system.port, "alice@local.test", 1)
        assert time.monotonic() - began < 5, "a new client waited more than 5 s"
        system.wait_until(lambda: len(box) == 1, 20, "the new client's message delivered")
    finally:
        for s in idle:
            s.close()


def test_sigterm_mid_data_the_session_finishes_and_its_message_is_kept(system):
    """SIGTERM: an idle session gets 421 now; one in DATA gets its 250, then 421."""
    box = system.maildir("alice")
    system.alias("alice", "./alice/\n")
    system.start()
    idle = socket.create_connection(("127.0.0.1", system.port), timeout=20)
    assert idle.recv(4) == b"220 "
    with idle, socket.create_connection(("127.0.0.1", system.port), timeout=20) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        for command in (b"HELO t.example\r\n", b"MAIL FROM:<bob@t.example>\r\n",
                        b"RCPT TO:<alice@local.test>\r\n", b"DATA\r\n"):
            s.sendall(command)
            assert f.readline()[:1] in b"23"
        s.sendall(b"Subject: term\r\nMessage-ID: <term@t.example>\r\n\r\nfirst half\r\n")
        system.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "stopping" in system.output(), 10, "the supervisor to stop")
        idle_said = b""
        while chunk := idle.recv(4096):  # the idle session is told and closed at once
            idle_said += chunk
        assert b"\r\n421 " in idle_said, idle_said
        s.sendall(b"second half\r\n.\r\n")
        reply = f.readline()
        assert f.readline().startswith(b"421"), "the session should end after its 250"
    assert reply.startswith(b"250"), reply
    assert system.proc.wait(30) == 0
    system.start()
    system.wait_until(lambda: len(box) == 1, 20, "the message accepted during SIGTERM")
    (msg,) = box.messages()
    assert msg.get_payload() == "first half\nsecond half\n"


def send_until_accepted(port: int, rcpt: str, n: int, timeout: float) -> None:
    """Send, retrying a refused or 4xx attempt, as any client would (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return send(port, rcpt, n)
        except (OSError, smtplib.SMTPException) as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"message {n} not accepted within {timeout}s: {e!r}")
            time.sleep(0.1)  # back off before the retry


def test_scheduler_and_queue_owner_sigkill_restarted_mail_flows(system):
    box = system.maildir("alice")
    system.alias("alice", "./alice/\n")
    system.start()
    for n, name in enumerate(("send", "queue owner")):
        pid = system.component_pid(name)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: system.component_pid(name) != pid, 10,
                   lambda: f"{name} restarted:\n{system.output()[-1500:]}")
        send_until_accepted(system.port, "alice@local.test", n, 15)
    system.wait_until(lambda: len(box) == 2, 20, "both messages delivered")
    system.wait_empty()


@pytest.mark.parametrize("stall, ends", [(2.0, "delivered"), (40.0, "queued")])
def test_sigterm_with_a_delivery_stalled_at_the_sink_loses_nothing(system, stall, ends):
    """The remote worker gets 10 s to finish at SIGTERM: a 2 s stall ends, a 40 s one does not."""
    with Sink("127.0.1.2", delay=stall) as sink:
        system.control("smtproutes", f":127.0.1.2:{sink.port}\n")
        system.start()
        send(system.port, "carol@remote.example", 1)
        sink.wait_until(lambda: sink.holding == 1, 30, "the delivery to stall after the dot")
        assert system.stop(60) == 0
        (first,) = sink.messages
        left = system.queue()
        if ends == "delivered":
            assert first.acked and left == []
        else:
            assert not first.acked, "the sink answered before the worker was stopped"
            assert [m["recipients"]["pending"] + m["recipients"]["deferred"] for m in left] == [1]
        sink.delay = 0.0
        system.start()
        system.flush()
        system.wait_empty()
        assert [m.acked for m in sink.messages] == ([True] if ends == "delivered" else [False, True])
        assert all(b"Subject: 1\r\n" in m.data for m in sink.messages)


def flush_until(system, predicate, timeout: float, what: str) -> None:
    """``mta flush`` until ``predicate`` holds: SIGHUP and the flush's SIGALRM race."""
    deadline = time.monotonic() + timeout
    while True:
        system.flush()
        try:
            return wait_until(predicate, 2, what)
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def test_sighup_makes_the_scheduler_reread_smtproutes(system):
    dead = free_port("127.0.1.3")  # bound and closed again: connections are refused
    system.control("smtproutes", f":127.0.1.3:{dead}\n")
    system.start()
    send(system.port, "dave@remote.example", 1)
    system.wait_until(lambda: any(m["recipients"]["deferred"] for m in system.queue()), 30,
                      "a deferral on the dead route")
    with Sink("127.0.1.4") as sink:
        system.control("smtproutes", f":127.0.1.4:{sink.port}\n")
        system.proc.send_signal(signal.SIGHUP)
        flush_until(system, lambda: sink.rcpt_count() == 1, 20, "delivery on the new route")
        system.wait_empty()
    assert sink.messages[0].rcpts == ["dave@remote.example"]
