"""Issue 4 acceptance through ``mta start`` with the other real clients, and LD rows.

Postfix's smtp-source (5 sessions, 100 messages) all land in the Maildir; swaks
``--tls`` delivers over STARTTLS when ``control/servercert.pem`` exists; LD5: one
message to programs exiting 0, 99, 100, 64, 111 and 1 ends in deliveries, one
bounce naming the 100 and 64 recipients and two deferrals; LD4: a group-writable
dot-qmail file defers (#4.7.0) and the message stays queued.
"""

from __future__ import annotations

import smtplib
import subprocess


def test_smtp_source_100_messages_delivered(system):
    box = system.maildir("alice")
    system.alias("alice", "./alice/\n")
    system.start()
    p = subprocess.run(["/usr/sbin/smtp-source", "-s", "5", "-m", "100", "-l", "2000",
                        "-f", "bob@t.example", "-t", "alice@local.test",
                        f"127.0.0.1:{system.port}"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    system.wait_until(lambda: len(box) == 100, 30, "100 smtp-source messages in the Maildir")
    system.wait_empty()


def test_swaks_starttls_delivers(system):
    key, cert = system.tmp / "key.pem", system.tmp / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=local.test"],
                   check=True, capture_output=True, timeout=60)
    (system.root / "control" / "servercert.pem").write_bytes(cert.read_bytes() + key.read_bytes())
    box = system.maildir("alice")
    system.alias("alice", "./alice/\n")
    system.start()
    p = subprocess.run(["swaks", "--server", f"127.0.0.1:{system.port}", "--tls",
                        "--from", "bob@t.example", "--to", "alice@local.test",
                        "--header", "Subject: over tls"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "TLS started" in p.stdout, p.stdout
    system.wait_until(lambda: len(box) == 1, 20, "the swaks --tls message")
    (msg,) = box.messages()
    assert msg["Subject"] == "over tls"


def test_ld5_program_exit_codes(system, sink):
    system.control("smtproutes", f":127.0.1.1:{sink.port}\n")
    box = system.maildir("box")
    for code in (0, 100, 64, 111, 1):
        system.alias(f"ex{code}", f"|exit {code}\n")
    system.alias("ex99", "|exit 99\n./box/\n")  # 99: done, the Maildir line is skipped
    system.alias("ex0", "|exit 0\n./box/\n")  # 0: done, next line runs
    system.start()
    rcpts = [f"ex{c}@local.test" for c in (0, 99, 100, 64, 111, 1)]
    with smtplib.SMTP("127.0.0.1", system.port, timeout=30) as c:
        assert c.sendmail("bob@t.example", rcpts, "Subject: codes\r\n\r\nx\r\n") == {}
    sink.wait_for(1, 20)
    text = sink.messages[0].data.decode(errors="replace")
    assert "<ex100@local.test>:" in text and "<ex64@local.test>:" in text, text
    assert "<ex111@local.test>" not in text and "<ex0@local.test>" not in text
    system.wait_until(lambda: [m["recipients"] for m in system.queue()]
                      == [{"pending": 0, "deferred": 2, "delivered": 2, "failed": 2}], 20,
                      "two deliveries, two failures and two deferrals")
    assert len(box) == 1  # from ex0 only


def test_ld4_writable_dot_qmail_defers(system):
    box = system.maildir("joe")
    dot = system.alias("joe", "./joe/\n")
    dot.chmod(0o664)
    system.start()
    with smtplib.SMTP("127.0.0.1", system.port, timeout=30) as c:
        c.sendmail("bob@t.example", ["joe@local.test"], "Subject: w\r\n\r\nx\r\n")
    system.wait_until(lambda: any(m["recipients"]["deferred"] for m in system.queue()), 20,
                      "a deferral for the writable .qmail-joe")
    assert any("writable" in line and "4.7.0" in line for line in system.log_lines()), \
        system.log_lines()[-5:]
    assert len(box) == 0
    dot.chmod(0o644)
    system.flush()
    system.wait_until(lambda: len(box) == 1, 20, "delivery once the file is fixed")
