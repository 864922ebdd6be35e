"""Scale-out: a post's recipients split by domain across QMQP delivery machines."""

import asyncio
import json
import socket

import pytest

from ezlist.scaleout import (
    ScaleoutError, Server, bucket, load_parts, read_servers, resume, split_by_domain,
)
from mta.net.qmqp_server import open_qmqp_server


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Machine:
    """A real QMQP server recording what it was handed."""

    def __init__(self):
        self.got = []

    async def submit(self, sender, recipients, data):
        self.got.append((sender, list(recipients), data))
        return 100 + len(self.got)

    async def start(self, host="127.0.0.1"):
        self.server = await open_qmqp_server(host, 0, submit=self.submit, access=lambda ip: True)
        self.port = self.server.sockets[0].getsockname()[1]
        return Server(host, self.port, 0)


def test_read_servers_forms(tmp_path):
    assert read_servers(tmp_path) is None
    (tmp_path / "qmqpservers").write_text("# delivery machines\n127.0.0.2\n127.0.0.3:6280\n"
                                          "127.0.0.4:6281:7000\n")
    assert read_servers(tmp_path) == [Server("127.0.0.2", 628, 0), Server("127.0.0.3", 6280, 0),
                                      Server("127.0.0.4", 6281, 7000)]
    (tmp_path / "qmqpservers").write_text("127.0.0.2:x\n")
    with pytest.raises(ScaleoutError, match="line 1"):
        read_servers(tmp_path)


def test_split_keeps_each_domain_on_one_part():
    addrs = [f"u{i}@d{i % 50}.test" for i in range(1000)] + ["X@D1.TEST"]
    parts = split_by_domain(addrs, 3)
    assert sum(map(len, parts)) == len(addrs)
    for k, part in enumerate(parts):
        assert all(bucket(a, 3) == k for a in part)
    assert "X@D1.TEST" in parts[bucket("u1@d1.test", 3)]


def test_each_recipient_handed_over_once_with_verp_sender(tmp_path):
    async def go():
        a, b = Machine(), Machine()
        servers = [await a.start(), await b.start()]
        addrs = [f"u{i}@d{i % 20}.test" for i in range(2000)]
        parts = await resume(tmp_path, 7, servers, "l-return-7-@lists.test-@[]", addrs, b"\nhi\n")
        got = [r for m in (a, b) for _, rs, _ in m.got for r in rs]
        assert sorted(got) == sorted(addrs)
        assert all(s == "l-return-7-@lists.test-@[]" for m in (a, b) for s, _, _ in m.got)
        assert [p["state"] for p in parts] == ["accepted", "accepted"]
        assert {p["remote_id"] for p in parts} == {101}
        assert load_parts(tmp_path, 7) == json.loads(json.dumps(parts))
    asyncio.run(go())


def test_dead_machine_part_goes_to_next_and_resume_is_idempotent(tmp_path):
    async def go():
        live = Machine()
        dead = Server("127.0.0.1", free_port(), 0)  # nothing listens there
        servers = [dead, await live.start()]
        addrs = [f"u{i}@d{i % 10}.test" for i in range(500)]
        parts = await resume(tmp_path, 3, servers, "l-@x.test-@[]", addrs, b"\nhi\n")
        assert all(p["state"] == "accepted" for p in parts)
        assert sorted(r for _, rs, _ in live.got for r in rs) == sorted(addrs)
        n = len(live.got)
        await resume(tmp_path, 3, servers, "l-@x.test-@[]", addrs, b"\nhi\n")
        assert len(live.got) == n  # nothing handed over twice
    asyncio.run(go())


def test_no_machine_answers_leaves_parts_pending_for_resume(tmp_path):
    async def go():
        servers = [Server("127.0.0.1", free_port(), 0), Server("127.0.0.1", free_port(), 0)]
        addrs = [f"u{i}@d{i % 10}.test" for i in range(100)]
        with pytest.raises(ScaleoutError) as e:
            await resume(tmp_path, 4, servers, "l-@x.test-@[]", addrs, b"\nhi\n", timeout=2)
        assert not e.value.permanent
        assert {p["state"] for p in load_parts(tmp_path, 4)} == {"pending"}
        live = Machine()
        servers[1] = await live.start()
        await resume(tmp_path, 4, servers, "l-@x.test-@[]", addrs, b"\nhi\n")
        assert sorted(r for _, rs, _ in live.got for r in rs) == sorted(addrs)
    asyncio.run(go())


class DyingMachine:
    """A raw QMQP peer (written here from the spec) that reads a whole request, then
    closes without answering: a delivery machine dying between the handover and its K."""

    def __init__(self):
        self.requests = []

    async def handle(self, reader, writer):
        try:
            head = await asyncio.wait_for(reader.readuntil(b":"), 10)
            body = await asyncio.wait_for(reader.readexactly(int(head[:-1]) + 1), 10)
            self.requests.append(head + body)
        finally:
            writer.close()

    async def start(self, host="127.0.0.1"):
        self.server = await asyncio.start_server(self.handle, host, 0)
        return Server(host, self.server.sockets[0].getsockname()[1], 0)


def handed(machine):
    return [r for _, rs, _ in machine.got for r in rs]


def test_machine_dying_mid_handover_part_goes_to_next_machine(tmp_path):
    async def go():
        dying, live = DyingMachine(), Machine()
        servers = [await dying.start(), await live.start()]
        addrs = [f"u{i}@d{i % 20}.test" for i in range(1000)]
        own = split_by_domain(addrs, 2)[0]  # the dying machine's own part
        assert own and len(own) < len(addrs)
        parts = await resume(tmp_path, 5, servers, "l-@x.test-@[]", addrs, b"\nhi\n")
        [request] = dying.requests  # it read all of its part ...
        assert request.endswith(b"%d:%s,," % (len(own[-1]), own[-1].encode()))
        assert sorted(handed(live)) == sorted(addrs)  # ... which the next machine took
        assert [(p["state"], p["server"]["port"]) for p in parts] == [
            ("accepted", servers[1].port)] * 2
        assert load_parts(tmp_path, 5) == json.loads(json.dumps(parts))
    asyncio.run(go())


def test_part_unanswered_by_every_machine_stays_ours_until_one_accepts(tmp_path):
    async def go():
        first, second = DyingMachine(), DyingMachine()
        servers = [await first.start(), await second.start()]
        addrs = [f"u{i}@d{i % 20}.test" for i in range(600)]
        with pytest.raises(ScaleoutError) as e:
            await resume(tmp_path, 6, servers, "l-@x.test-@[]", addrs, b"\nhi\n", timeout=5)
        assert not e.value.permanent
        assert len(first.requests) == len(second.requests) == 2  # each part offered to both
        record = load_parts(tmp_path, 6)
        assert {p["state"] for p in record} == {"pending"}
        assert all("closed before the QMQP reply" in p["last_error"] for p in record)
        live = Machine()
        servers[0] = await live.start()  # a machine comes back
        parts = await resume(tmp_path, 6, servers, "l-@x.test-@[]", addrs, b"\nhi\n")
        got = handed(live)
        assert sorted(got) == sorted(addrs) and len(set(got)) == len(addrs)  # none lost
        assert {p["state"] for p in parts} == {"accepted"}
        assert len(second.requests) == 3  # still dying: its own part was tried there first
        await resume(tmp_path, 6, servers, "l-@x.test-@[]", addrs, b"\nhi\n")
        assert len(handed(live)) == len(addrs) and len(second.requests) == 3  # nothing resent
    asyncio.run(go())
