"""``mta start --smtp-procs 2``: two SMTP listener processes share the port (SO_REUSEPORT);
either one serves, a killed one is restarted, and mail keeps flowing meanwhile."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess

from tests.e2e.conftest import MTA, System, wait_until

MSG = b"From: bob@t.example\r\nSubject: p{n}\r\n\r\nhello\r\n"


class TwoListeners(System):
    def start(self, env=None, timeout: float = 30.0) -> None:
        self.runs += 1
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [MTA, "--root", str(self.root), "start", "--smtp", f"127.0.0.1:{self.port}",
                 "--smtp-procs", "2"], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.groups.append(self.proc.pid)
        wait_until(self.accepting, timeout, lambda: f"port {self.port}: {self.output()[-2000:]}")

    def listener_pids(self) -> list[int]:
        text = self.out_path.read_text()
        found = {}
        for name, pid in re.findall(r"started (smtp listener(?: 2)?) \(pid (\d+)\)", text):
            found[name] = int(pid)  # the latest start of each
        return sorted(found.values())

    def _ss(self) -> str:
        return subprocess.run(["ss", "-Hltnp", f"sport = :{self.port}"], capture_output=True,
                              text=True, timeout=10).stdout

    def listening_pids(self) -> set[int]:
        return {int(p) for p in re.findall(r"pid=(\d+)", self._ss())}

    def only_survivor_listens(self, killed: int, survivor: int) -> bool:
        """One look at the port: ``killed``'s socket is closed, ``survivor``'s is there.

        While a killed process exits, its socket can still be listening after ss stops
        showing the pid (the file table goes before the files are closed): a line without
        a pid means "not closed yet", and the survivor's line proves ss answered."""
        lines = self._ss().splitlines()
        pids = {int(p) for p in re.findall(r"pid=(\d+)", "\n".join(lines))}
        return survivor in pids and killed not in pids and all("pid=" in ln for ln in lines)


def _send(system, n: int) -> None:
    with smtplib.SMTP("127.0.0.1", system.port, timeout=30) as s:
        s.sendmail("bob@t.example", ["alice@local.test"], MSG.replace(b"{n}", str(n).encode()))


def test_two_listeners_share_the_port_and_survive_a_kill(tmp_path):
    system = TwoListeners(tmp_path)
    try:
        box = system.maildir("alice")
        system.alias("alice", "./alice/\n")
        system.start()
        wait_until(lambda: len(system.listener_pids()) == 2, 20, "two listeners started")
        first = system.listener_pids()
        wait_until(lambda: system.listening_pids() >= set(first), 20,
                   lambda: f"both {first} listening: {system.listening_pids()}")
        for n in range(10):
            _send(system, n)
        os.kill(first[0], signal.SIGKILL)
        # connections already queued on the dying socket are reset, as with one listener;
        # once its socket is closed the kernel gives every new connection to the other one
        wait_until(lambda: system.only_survivor_listens(first[0], first[1]), 10,
                   "the killed socket closed")
        for n in range(10, 20):  # the other process takes every new connection meanwhile
            try:
                _send(system, n)
            except (OSError, smtplib.SMTPException) as exc:  # say what the system saw
                raise AssertionError(
                    f"message {n} after killing {first[0]}: {exc!r}; listening now"
                    f" {system.listening_pids()}, listeners {system.listener_pids()};"
                    f" mta start said:\n{system.output()[-3000:]}") from exc
        wait_until(lambda: len(system.listener_pids()) == 2 and system.listener_pids() != first,
                   20, "the killed listener restarted")
        wait_until(lambda: system.listening_pids() >= set(system.listener_pids()), 20,
                   "the restarted listener on the port again")
        system.wait_until(lambda: len(box) == 20, 30, "all 20 messages delivered")
        subjects = sorted(int(m["Subject"][1:]) for m in box.messages())
        assert subjects == list(range(20))
    finally:
        system.cleanup()


def _greeting(src: str, port: int):
    import socket
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(src, 0))
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(200)
        if not chunk:
            break
        data += chunk
    return s, data.decode()


def test_one_client_reaches_one_listener_so_its_cap_is_not_split(tmp_path):
    """Connections are steered by client address: the per-client cap (50) holds whole
    with two listeners, instead of 25 a process plus the luck of the kernel's hash."""
    system = TwoListeners(tmp_path)
    held = []
    try:
        system.start()
        wait_until(lambda: len(system.listener_pids()) == 2, 20, "two listeners started")
        wait_until(lambda: system.listening_pids() >= set(system.listener_pids()), 20,
                   "both listening")
        for i in range(50):
            s, text = _greeting("127.0.0.7", system.port)
            held.append(s)
            assert text.startswith("220 "), f"connection {i + 1} of 50: {text!r}"
        s, text = _greeting("127.0.0.7", system.port)
        held.append(s)
        assert text.startswith("421 ") and "too many connections from your address" in text
        s, text = _greeting("127.0.0.8", system.port)  # another client is unaffected
        held.append(s)
        assert text.startswith("220 ")
    finally:
        for s in held:
            s.close()
        system.cleanup()
