"""Issue 4 acceptance: the whole system killed (SIGKILL of every process) and restarted.

QF1 kill mid-DATA of a 1 MB body: nothing delivered, nothing queued, a resend is
delivered exactly once. QF3 kill right after the client read 250: delivered after
the restart. QF5 the local worker dies at ``maildir_before_link``: after the
restart exactly one complete file in ``new/``. LO3 20 clients x 50 messages with
two kill -9 of the system: every message that got 250 is delivered at least once,
duplicates only for what was in flight at a kill (a client's unanswered message, or
a recipient the scheduler announced as a possible duplicate), the queue drains.
"""

from __future__ import annotations

import re
import smtplib
import socket
import subprocess
import threading
import time
from collections import Counter

from conftest import MTA

KILL_AT = (0.25, 0.6)  # LO3: kill -9 once this share of the messages is acknowledged
KILLS = len(KILL_AT)
BIG = b"Subject: big\r\nMessage-ID: <big@t.example>\r\n\r\n" + b"x" * 998 + b"\r\n"


def maildir_ids(box) -> Counter:
    ids = Counter()
    for sub in ("new", "cur"):
        for p in (box.path / sub).iterdir():
            m = re.search(rb"^Message-ID: <([^>]+)>", p.read_bytes(), re.M | re.I)
            ids[m.group(1).decode() if m else f"?{p.name}"] += 1
    return ids


def test_qf1_kill_mid_data_then_resend_once(system):
    box = system.maildir("alice")
    system.alias("alice", "./alice/\n")
    system.start()
    line = b"y" * 998 + b"\r\n"
    body = BIG + line * 1050  # about 1 MB
    with socket.create_connection(("127.0.0.1", system.port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        for command in (b"HELO t.example\r\n", b"MAIL FROM:<bob@t.example>\r\n",
                        b"RCPT TO:<alice@local.test>\r\n", b"DATA\r\n"):
            s.sendall(command)
            assert f.readline()[:1] in b"23"
        s.sendall(body[:len(body) // 2])
        system.kill()
    system.start()
    subprocess.run([MTA, "clean"], env=system.env, check=True, capture_output=True, timeout=30)
    assert system.queue() == []
    assert len(box) == 0
    assert list((system.root / "queue" / "tmp").iterdir()) == []
    with smtplib.SMTP("127.0.0.1", system.port, timeout=30) as c:
        assert c.sendmail("bob@t.example", ["alice@local.test"], body + b".\r\n") == {}
    system.wait_until(lambda: len(box) == 1, 20, "the resent message")
    system.wait_empty()
    assert maildir_ids(box) == Counter({"big@t.example": 1})
    (only,) = box.messages()
    assert len(only.get_payload()) >= 1000 * 1000


def test_qf3_kill_right_after_250_delivered_after_restart(system):
    box = system.maildir("alice")
    system.alias("alice", "|exit 111\n")  # nothing can be delivered before the kill
    system.start()
    with smtplib.SMTP("127.0.0.1", system.port, timeout=30) as c:
        c.sendmail("bob@t.example", ["alice@local.test"],
                   "Subject: qf3\r\nMessage-ID: <qf3@t.example>\r\n\r\nx\r\n")
        system.kill()
    system.alias("alice", "./alice/\n")
    system.start()
    system.flush()
    system.wait_until(lambda: len(box) >= 1, 20, "the acknowledged message after the restart")
    system.wait_empty()
    assert maildir_ids(box)["qf3@t.example"] >= 1


def test_qf5_crash_before_maildir_link_then_exactly_one_file(system):
    box = system.maildir("alice")
    system.alias("alice", "./alice/\n")
    system.start(env={"MTA_CRASH_AT": "maildir_before_link"})
    with smtplib.SMTP("127.0.0.1", system.port, timeout=30) as c:
        c.sendmail("bob@t.example", ["alice@local.test"],
                   "Subject: qf5\r\nMessage-ID: <qf5@t.example>\r\n\r\ncomplete\r\n")
    tmp = box.path / "tmp"
    system.wait_until(lambda: any(tmp.iterdir()), 20, "the worker to die after its tmp write")
    assert len(box) == 0
    system.kill()
    system.start()
    system.flush()
    system.wait_until(lambda: len(box) >= 1, 20, "the delivery after the restart")
    system.wait_empty()
    assert len(box) == 1
    (msg,) = box.messages()
    assert msg["Message-ID"] == "<qf5@t.example>" and msg.get_payload() == "complete\n"


class Clients:
    """``n`` threads each sending ``per`` messages, retrying through outages."""

    def __init__(self, port: int, n: int, per: int, deadline: float):
        self.port, self.n, self.per, self.deadline = port, n, per, deadline
        self.acked: set[str] = set()
        self.attempts = Counter()
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        for t in self.threads:
            t.join(max(1.0, self.deadline - time.monotonic() + 5))
        assert not any(t.is_alive() for t in self.threads), "client threads still running"

    def _run(self, i: int) -> None:
        for k in range(self.per):
            mid = f"lo3-{i}-{k}@t.example"
            while time.monotonic() < self.deadline:
                with self.lock:
                    self.attempts[mid] += 1
                if self._send_one(mid):
                    with self.lock:
                        self.acked.add(mid)
                    break
                time.sleep(0.05)  # back off while the system restarts
            else:
                with self.lock:
                    self.errors.append(f"{mid}: never acknowledged")
                return

    def _send_one(self, mid: str) -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=15) as c:
                c.sendmail("bob@t.example", ["alice@local.test"],
                           f"Subject: {mid}\r\nMessage-ID: <{mid}>\r\n\r\nx\r\n")
            return True
        except (OSError, smtplib.SMTPException):
            return False  # killed, refused or 4xx: try again


def test_lo3_burst_with_two_kills_every_acknowledged_message_delivered(system):
    box = system.maildir("alice")
    system.alias("alice", "./alice/\n")
    system.start()
    clients = Clients(system.port, n=20, per=50, deadline=time.monotonic() + 90)
    clients.start()
    for fraction in KILL_AT:
        system.wait_until(lambda: len(clients.acked) >= 1000 * fraction, 60,
                          f"{fraction:.0%} of the messages acknowledged")
        system.kill()
        system.start()
    clients.join()
    assert clients.errors == []
    assert len(clients.acked) == 1000
    system.flush()
    system.wait_empty(60)
    ids = maildir_ids(box)
    missing = clients.acked - set(ids)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
    assert set(ids) <= clients.acked, set(ids) - clients.acked
    duplicated = {m: c for m, c in ids.items() if c > 1}
    # a client resends only the one message it had in flight at a kill
    resent = {m for m in duplicated if clients.attempts[m] > 1}
    assert len(resent) <= KILLS * 20, resent
    # Each SMTP attempt queues at most one copy; a copy is delivered again only if
    # the scheduler had it in flight at a kill (results are committed in batches),
    # and each restart announces each such recipient once in log/send. So the
    # deliveries beyond the first are bounded by the extra attempts plus the
    # announcements, and one message by its attempts times (1 + kills): a copy
    # still in flight at both kills (slow start under load) is delivered 3 times.
    announced = [line for line in system.log_lines()
                 if "in flight when the scheduler stopped" in line]
    redelivered = set(duplicated) - resent
    assert len(redelivered) <= len(announced), (len(redelivered), len(announced))
    extra = sum(c - 1 for c in ids.values())
    extra_attempts = sum(clients.attempts[m] - 1 for m in ids)
    assert extra <= extra_attempts + len(announced), (extra, extra_attempts, len(announced))
    over = {m: (c, clients.attempts[m]) for m, c in duplicated.items()
            if c > clients.attempts[m] * (1 + KILLS)}
    assert not over, over
