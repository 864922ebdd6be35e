"""Scale-out when a delivery machine dies mid-handover, through ezlist and ``mta start``.

The dying machine is a raw QMQP peer written here from the spec: it reads a whole
request (the part) and closes without answering ``K``, as a machine that crashed
between reading a part and committing it would. The part must stay the list host's:
handed to the next machine at once, or kept pending (``sends/NUM.parts``) and handed
over later when a machine answers; every subscriber then receives the post exactly
once from a real delivery machine (tests/e2e/test_scaleout_e2e.py's ``Machine``).
"""

import json
import socket
import threading
import time

import pytest

from ezlist.fanout import read_send_record, resume_handovers
from ezlist.listdir import load_list
from tests.e2e.test_scaleout_e2e import Machine, delivered, ezlist, mta, wait_total
from tests.sink import Sink

N = 2_000


class DyingMachine:
    """Accepts QMQP connections on ``ip``; reads each whole request, then closes."""

    def __init__(self, ip: str):
        self.sock = socket.socket()
        self.sock.bind((ip, 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.ip, self.port = ip, self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                self.requests.append(_read_request(conn))

    def line(self) -> str:
        return f"{self.ip}:{self.port}\n"

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.sock.close()


def _read_request(conn: socket.socket) -> bytes:
    """One outer netstring: ``LEN:`` then LEN bytes and the comma."""
    data = b""
    while b":" not in data:
        data += conn.recv(64) or b"?:"  # EOF in the header: return what came
    head, _, rest = data.partition(b":")
    want = int(head) + 1 if head.isdigit() else 0
    while len(rest) < want and (chunk := conn.recv(65536)):
        rest += chunk
    return head + b":" + rest


@pytest.fixture
def lists(tmp_path):
    host = tmp_path / "listhost"
    mta(host, "init", "--me", "lists.test", "--spare-files", "0")
    ezlist(host, "make", "news@lists.test")
    ezlist(host, "sub", "news", input="".join(f"u{i}@d{i % 40}.test\n" for i in range(N)).encode())
    post = tmp_path / "post.eml"
    post.write_bytes(b"From: editor@lists.test\nSubject: issue 2\n\nnews again\n")
    dying = DyingMachine("127.0.0.4")
    with Sink("127.0.1.54") as sink:
        machine = Machine(tmp_path, "127.0.0.2", sink)
        try:
            yield host, post, dying, machine, sink
        finally:
            machine.stop()
            dying.stop()


def parts_of(host, number=1):
    return json.loads((host / "lists" / "news" / "sends" / f"{number}.parts").read_text())


def assert_each_once(sink):
    got = delivered(sink)
    assert len(got) == N and len({r for _, r in got}) == N, f"{len(got)} deliveries"
    assert all(s == f"news-return-1-{r.replace('@', '=')}@lists.test" for s, r in got[:200])


def test_part_read_then_unanswered_goes_to_next_machine(lists):
    host, post, dying, machine, sink = lists
    machine.start()
    (host / "lists" / "news" / "qmqpservers").write_text(dying.line() + machine.line())
    out = ezlist(host, "send", "news", str(post), "--no-wait")
    assert "handed over to the delivery machines" in out, out
    assert len(dying.requests) == 1 and dying.requests[0].endswith(b",,")  # read it all
    wait_total([sink], N, 120)
    assert_each_once(sink)
    assert [(p["state"], p["server"]["host"]) for p in parts_of(host)] == [
        ("accepted", "127.0.0.2")] * 2


def test_part_unanswered_everywhere_stays_pending_then_delivered_once(lists):
    host, post, dying, machine, sink = lists
    servers = host / "lists" / "news" / "qmqpservers"
    servers.write_text(dying.line())  # the only machine dies on every handover
    out = ezlist(host, "send", "news", str(post), "--no-wait")
    assert "no delivery machine took every part yet" in out and "queued as msg" not in out, out
    assert len(dying.requests) == 1 and dying.requests[0].endswith(b",,")
    [part] = parts_of(host)
    assert part["state"] == "pending" and "closed before the QMQP reply" in part["last_error"]
    cfg = load_list(host, "news")
    assert read_send_record(cfg.path, 1)["handover"] == "pending"
    assert sink.messages == []
    machine.start()
    servers.write_text(machine.line())  # the machine is back (replaced): resume hands over
    assert resume_handovers(cfg) == 1
    wait_total([sink], N, 120)
    assert_each_once(sink)
    assert read_send_record(cfg.path, 1)["handover"] == "done"
    assert resume_handovers(cfg) == 0 and len(dying.requests) == 1  # nothing offered twice
    deadline = time.monotonic() + 60
    while machine_queue(machine):
        assert time.monotonic() < deadline, "the delivery machine never drained its queue"
        time.sleep(0.1)
    assert len(delivered(sink)) == N  # drained: no second copy came afterwards


def machine_queue(machine) -> list:
    out = mta(machine.root, "queue", "--json").stdout.decode()
    return [line for line in out.splitlines() if line.strip()]
