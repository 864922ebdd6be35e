"""The read-only progress endpoint: counts for queued, finished and unknown ids."""

import asyncio

import pytest

from mta.instance import init_instance
from mta.netstring import encode_netstring
from mta.progress import open_progress_server, query_progress
from mta.queue import enqueue, open_queue, remove_message


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def root(tmp_path):
    init_instance(tmp_path, "mx.test")
    return tmp_path


async def _ask(root, ids, access=lambda ip: True, raw=None):
    server = await open_progress_server("127.0.0.1", 0, root=root, access=access)
    port = server.sockets[0].getsockname()[1]
    try:
        if raw is None:
            return await query_progress("127.0.0.1", port, ids, timeout=5)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return data
    finally:
        server.close()


def test_queued_finished_and_unknown(root):
    a = enqueue(root, "l@mx.test", ["x@a.test", "y@b.test"], b"\nhi\n")
    b = enqueue(root, "l@mx.test", ["z@c.test"], b"\nhi\n")
    conn = open_queue(root)
    with conn:
        conn.execute("UPDATE recipients SET state = 2 WHERE msg = ?", (b,))
        conn.execute("UPDATE recipients SET state = 1 WHERE addr = 'y@b.test'")
    remove_message(root, conn, b)
    got = run(_ask(root, [a, b, 999]))
    assert got[str(a)] == {"state": "queued", "nrcpt": 2, "pending": 1, "deferred": 1,
                           "delivered": 0, "failed": 0, "failures": []}
    assert got[str(b)]["state"] == "finished" and got[str(b)]["delivered"] == 1
    assert got["999"] == {"state": "unknown"}


def test_refused_client_and_garbage_get_nothing(root):
    assert run(_ask(root, [], access=lambda ip: False, raw=encode_netstring(b"1"))) == b""
    assert run(_ask(root, [], raw=b"12a:xx,")) == b""
    assert run(_ask(root, [], raw=encode_netstring(b"1 two"))) == b""
