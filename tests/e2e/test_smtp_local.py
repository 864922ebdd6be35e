"""Issue 4 acceptance through ``mta start``: smtplib in, dot-qmail deliveries out.

Maildir delivery readable with ``mailbox.Maildir`` (Delivered-To, Received, Return-Path);
program delivery with qmail-local's environment; exit 100 bounces (QSBMF to the
sender, through a sink), exit 111 defers until fixed and flushed; LP1, LP3, BS1, BS2.
"""

from __future__ import annotations

import json
import smtplib
import sys

import pytest


MSG = "From: bob@t.example\r\nSubject: {subject}\r\nMessage-ID: <{mid}@t.example>\r\n\r\nhello\r\n"


def send(system, rcpts, subject="hi", mid="1", sender="bob@t.example", body=None):
    with smtplib.SMTP("127.0.0.1", system.port, timeout=30) as s:
        return s.sendmail(sender, rcpts, body or MSG.format(subject=subject, mid=mid))


def test_maildir_delivery_readable_with_mailbox(system):
    box = system.maildir("alice")
    system.alias("alice", "./alice/\n")
    system.start()
    assert send(system, ["alice@local.test"], subject="first") == {}
    system.wait_until(lambda: len(box) == 1, 20, "one message in alice's Maildir")
    msg = box.messages()[0]
    assert msg["Subject"] == "first"
    assert msg["Delivered-To"] == "alice@local.test"
    assert msg["Return-Path"] == "<bob@t.example>"
    received = msg.get_all("Received")
    assert received and "127.0.0.1" in received[0], received
    assert msg.get_payload().strip() == "hello"
    system.wait_empty()


def test_private_token_field_from_outside_is_removed_at_smtp_ingress(system):
    """An outsider cannot plant ezlist's X-Mta-Rcpt-Token field: the listener strips it,
    so local delivery finds none and leaves the placeholder as the sender wrote it."""
    box = system.maildir("alice")
    system.alias("alice", "./alice/\n")
    system.start()
    planted = ("X-Mta-Rcpt-Token: " + "ab" * 32 + " @@RCPT_TOKEN@@\r\n"
               "X-Link: <https://evil.example/?@@RCPT_TOKEN@@>\r\n" + MSG.format(subject="t", mid="2"))
    assert send(system, ["alice@local.test"], body=planted) == {}
    system.wait_until(lambda: len(box) == 1, 20, "one message in alice's Maildir")
    msg = box.messages()[0]
    assert msg["X-Mta-Rcpt-Token"] is None
    assert msg["X-Link"] == "<https://evil.example/?@@RCPT_TOKEN@@>"  # not filled in
    system.wait_empty()


def test_program_sees_qmail_local_environment(system):
    out = system.tmp / "env.json"
    system.alias("prog-default", f"|{sys.executable} -c "
                 f"'import json,os,sys; sys.stdin.read(); json.dump(dict(os.environ), "
                 f"open(\"{out}\", \"w\"))'\n")
    system.start()
    send(system, ["Prog-Foo-Bar@local.test"])
    system.wait_until(out.exists, 20, "the program to write its environment")
    system.wait_empty()
    env = json.loads(out.read_text())
    assert env["SENDER"] == "bob@t.example"
    assert env["NEWSENDER"] == "bob@t.example"
    # qmail keeps the local part's case (only the dot-qmail lookup is lower-cased)
    assert env["LOCAL"] == "Prog-Foo-Bar"
    assert env["HOST"] == "local.test"
    # as for qmail's alias user (users/assign "+:alias:...:-::"), EXT is the whole local part
    assert env["EXT"] == "Prog-Foo-Bar"
    assert env["EXT2"] == "Foo-Bar"
    assert env["EXT3"] == "Bar"
    assert env["DEFAULT"].lower() == "foo-bar"
    assert env["DTLINE"] == "Delivered-To: Prog-Foo-Bar@local.test\n"
    assert env["RPLINE"] == "Return-Path: <bob@t.example>\n"
    assert env["RECIPIENT"] == "Prog-Foo-Bar@local.test"


def test_exit_100_bounces_to_sender(system, sink):
    system.control("smtproutes", f":127.0.1.1:{sink.port}\n")
    system.alias("hard", "|echo no such mailbox here; exit 100\n")
    system.start()
    send(system, ["hard@local.test"], subject="will bounce")
    sink.wait_for(1, 20)
    bounce = sink.messages[0]
    assert bounce.sender == "" and bounce.rcpts == ["bob@t.example"]
    text = bounce.data.decode(errors="replace")
    assert "<hard@local.test>:" in text and "no such mailbox here" in text, text
    assert "will bounce" in text  # the original message is returned
    system.wait_empty()


def test_exit_111_defers_until_fixed_and_flushed(system):
    box = system.maildir("soft")
    dot = system.alias("soft", "|echo disk on fire; exit 111\n")
    system.start()
    send(system, ["soft@local.test"])
    system.wait_until(lambda: any(m["recipients"]["deferred"] == 1 for m in system.queue()),
                      20, "a deferred recipient in mta queue --json")
    assert len(box) == 0
    assert any("disk_on_fire" in line or "disk on fire" in line for line in system.log_lines())
    dot.write_text("./soft/\n")
    system.flush()
    system.wait_until(lambda: len(box) == 1, 20, "delivery after mta flush")
    system.wait_empty()


def test_lp1_own_delivered_to_bounces(system, sink):
    system.control("smtproutes", f":127.0.1.1:{sink.port}\n")
    box = system.maildir("alice")
    system.alias("alice", "./alice/\n")
    system.start()
    body = "Delivered-To: alice@local.test\r\nSubject: loop\r\n\r\nx\r\n"
    send(system, ["alice@local.test"], body=body)
    sink.wait_for(1, 20)
    text = sink.messages[0].data.decode(errors="replace")
    assert "already has my Delivered-To line" in text and "#5.4.6" in text, text
    assert len(box) == 0
    system.wait_empty()


def test_lp3_forward_cycle_one_loop_bounce(system, sink):
    system.control("smtproutes", f":127.0.1.1:{sink.port}\n")
    system.alias("joe", "&jane@local.test\n")
    system.alias("jane", "&joe@local.test\n")
    system.start()
    send(system, ["joe@local.test"], subject="cycle")
    sink.wait_for(1, 30)
    system.wait_empty(30)
    assert len(sink.messages) == 1, [m.rcpts for m in sink.messages]
    bounce = sink.messages[0]
    assert bounce.rcpts == ["bob@t.example"]
    assert "#5.4.6" in bounce.data.decode(errors="replace")


def test_bs1_bs2_unknown_user_refused_at_rcpt_nothing_queued(system, sink):
    system.control("smtproutes", f":127.0.1.1:{sink.port}\n")
    system.start()
    for sender in ("bob@t.example", ""):
        with smtplib.SMTP("127.0.0.1", system.port, timeout=30) as s:
            s.ehlo()
            s.mail(sender)
            code, text = s.rcpt("nosuchuser@local.test")
            assert code == 550, (code, text)
            assert s.docmd("DATA")[0] >= 500
    assert system.queue() == []
    assert sink.messages == []


def test_lp2_hop_count_and_databytes_refused_at_data_nothing_queued(system):
    system.maildir("alice")
    system.alias("alice", "./alice/\n")
    system.control("databytes", "10000\n")
    system.start()
    hops = "".join(f"Received: from h{i} by h{i + 1}\r\n" for i in range(100))
    with smtplib.SMTP("127.0.0.1", system.port, timeout=30) as s:
        with pytest.raises(smtplib.SMTPDataError) as looping:
            s.sendmail("bob@t.example", ["alice@local.test"], hops + "Subject: l\r\n\r\nx\r\n")
        assert looping.value.smtp_code == 554 and b"#5.4.6" in looping.value.smtp_error
    with smtplib.SMTP("127.0.0.1", system.port, timeout=30) as s:
        s.ehlo()
        s.mail("bob@t.example")
        s.rcpt("alice@local.test")
        code, text = s.data("Subject: big\r\n\r\n" + ("y" * 70 + "\r\n") * 200)
        assert code == 552, (code, text)
    assert system.queue() == []
