"""Control files that shape ``mta start``'s sessions and deliveries, end to end.

``smtpgreetdelay`` (PL2, DESIGN decision 2): with a delay set, a client that sends
EHLO before the 220 gets 554 and is dropped, nothing is queued, and a client that
waits delivers. ``concurrencylocal``: eight local deliveries to a program that
records its start and end never overlap more than the cap, all are delivered, and
SIGHUP applies a new cap to the running local worker.

The recording program waits at a gate file (bounded) so that the test can see the
cap filled before letting the deliveries finish: "as many as the cap at once" is
then observed, not hoped for.
"""

from __future__ import annotations

import signal
import smtplib
import socket
import subprocess
from pathlib import Path

from conftest import MTA, wait_until

BODY = "Subject: {n}\r\nMessage-ID: <{n}@t.example>\r\n\r\nbody {n}\r\n"


def send(port: int, rcpt: str, n: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        assert s.sendmail("bob@t.example", [rcpt], BODY.format(n=n)) == {}


def test_smtpgreetdelay_refuses_an_early_talker_and_greets_a_patient_client(system):
    box = system.maildir("alice")
    system.alias("alice", "./alice/\n")
    system.control("smtpgreetdelay", "0.5\n")
    shown = subprocess.run([MTA, "showctl"], env=system.env, capture_output=True, text=True,
                           timeout=60, check=True).stdout
    assert "smtpgreetdelay: 0.5 seconds\n" in shown
    system.start()
    with socket.create_connection(("127.0.0.1", system.port), timeout=20) as early:
        early.sendall(b"EHLO early.t.example\r\nMAIL FROM:<bob@t.example>\r\n")
        said = b""
        while chunk := early.recv(4096):  # bounded by the socket timeout
            said += chunk
    assert said == b"554 5.5.0 Error: SMTP protocol synchronization\r\n", said
    assert system.queue() == []
    send(system.port, "alice@local.test", 1)
    system.wait_until(lambda: len(box) == 1, 20, "the patient client's message delivered")


def recorder(folder: Path, gate: Path) -> str:
    """A dot-qmail program line: note start and end times in its own file, wait at the gate."""
    wait = (f"i=0; while [ ! -e {gate} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done")
    return (f"|f={folder}/$$; date +%s.%N > $f.tmp; mv $f.tmp $f.run; {wait}; "
            f"date +%s.%N >> $f.run; mv $f.run $f.done\n")


def max_overlap(folder: Path) -> int:
    events = []
    for f in folder.glob("*.done"):
        start, end = (float(x) for x in f.read_text().split())
        events += [(start, 1), (end, -1)]
    most = now = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at a tie
        now += step
        most = max(most, now)
    return most


def started(folder: Path) -> int:
    return len(list(folder.glob("*.run"))) + len(list(folder.glob("*.done")))


def run_batch(system, local: str, folder: Path, cap: int, first: int) -> None:
    """Eight messages to ``local`` deferred, then released at once: the cap fills, no more."""
    folder.mkdir()
    dot = system.alias(local, "|exit 111\n")
    for n in range(first, first + 8):
        send(system.port, f"{local}@local.test", n)
    system.wait_until(lambda: sum(m["recipients"]["deferred"] for m in system.queue()) == 8, 30,
                      f"eight deferred deliveries to {local}")
    gate = folder / "gate"
    dot.write_text(recorder(folder, gate))
    system.flush()
    system.wait_until(lambda: started(folder) >= cap, 30, f"{cap} deliveries running at once")
    gate.touch()
    system.wait_empty(60)
    assert len(list(folder.glob("*.done"))) == 8, sorted(p.name for p in folder.iterdir())
    assert max_overlap(folder) == cap


def test_concurrencylocal_caps_simultaneous_deliveries_and_sighup_changes_it(system, tmp_path):
    system.control("concurrencylocal", "2\n")
    system.start()
    run_batch(system, "slow", tmp_path / "two", cap=2, first=0)
    system.control("concurrencylocal", "4\n")
    system.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "concurrencylocal now 4" in system.output(), 20,
               lambda: f"the local worker to take the new cap:\n{system.output()[-1500:]}")
    run_batch(system, "slower", tmp_path / "four", cap=4, first=8)
