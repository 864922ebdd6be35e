"""A read-only progress endpoint: how far queued (or finished) messages have got.

A list host that handed parts of a post to delivery machines over QMQP learns each
part's queue id from the ``K`` reply (``ok TIME qp ID``). ``ezlist status`` then asks
each machine here for those ids. The endpoint only reads ``queue.db``; it cannot
change anything.

Protocol (netstrings, like QMQP, on its own port; ``mta start --progress HOST:PORT``):
the client sends one netstring holding queue ids separated by spaces; the server
answers one netstring holding a JSON object, one entry per id::

    {"12": {"state": "queued", "pending": 10, "deferred": 2, "delivered": 900,
            "failed": 1, "nrcpt": 913, "failures": [["example.org", "550 ...", 1]]},
     "13": {"state": "finished", "delivered": 5000, "failed": 3, "nrcpt": 5003},
     "14": {"state": "unknown"}}

and closes. Who may ask is decided by ``control/qmqpaccess`` (default: loopback).
At most 10,000 ids a request; anything malformed closes the connection.

Public: progress_of(conn, ids) -> dict; open_progress_server(host, port, *, root,
access) -> asyncio.Server; query_progress(host, port, ids, timeout) -> dict.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Callable, Iterable

from mta.netstring import NetstringDecoder, NetstringError, encode_netstring
from mta.queue import message_counts, open_queue

__all__ = ["progress_of", "open_progress_server", "query_progress"]

MAX_IDS = 10_000
MAX_REQUEST = 200_000


def progress_of(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for i in ids:
        row = conn.execute("SELECT nrcpt FROM messages WHERE id = ?", (i,)).fetchone()
        if row:
            out[str(i)] = {"state": "queued", "nrcpt": row[0], **message_counts(conn, i),
                           "failures": _failures(conn, "recipients", "msg = ? AND state >= 3", i)}
            continue
        row = conn.execute("SELECT nrcpt, delivered, failed FROM finished WHERE id = ?",
                           (i,)).fetchone()
        if row:
            out[str(i)] = {"state": "finished", "nrcpt": row[0], "delivered": row[1],
                           "failed": row[2], "pending": 0, "deferred": 0,
                           "failures": _failures(conn, "failures", "msg = ?", i)}
        else:
            out[str(i)] = {"state": "unknown"}
    return out


def _failures(conn: sqlite3.Connection, table: str, where: str, msg_id: int) -> list:
    """[domain, reason, count] for the most common failures (top 20)."""
    rows = conn.execute(f"SELECT domain, coalesce(text, ''), count(*) AS n FROM {table}"
                        f" WHERE {where} GROUP BY domain, text ORDER BY n DESC LIMIT 20",
                        (msg_id,))
    return [[d, t.strip()[:120], n] for d, t, n in rows]


class _Session(asyncio.Protocol):
    def __init__(self, root: Path, access: Callable[[str], bool]):
        self.root, self.access = root, access
        self.decoder = NetstringDecoder(MAX_REQUEST)

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("",)
        if not self.access(peer[0]):
            transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            items = self.decoder.feed(data)
        except NetstringError:
            self.transport.close()
            return
        if not items:
            return
        words = items[0].split()
        if len(words) > MAX_IDS or not all(w.isdigit() for w in words):
            self.transport.close()
            return
        conn = open_queue(self.root, create=False)
        try:
            answer = progress_of(conn, [int(w) for w in words])
        finally:
            conn.close()
        self.transport.write(encode_netstring(json.dumps(answer).encode()))
        self.transport.close()


async def open_progress_server(host: str, port: int, *, root: Path,
                               access: Callable[[str], bool]) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Session(root, access), host, port)


async def query_progress(host: str, port: int, ids: Iterable[int], timeout: float = 10.0) -> dict:
    """Ask one machine; raises OSError / asyncio.TimeoutError / ValueError on trouble."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(encode_netstring(" ".join(str(i) for i in ids).encode()))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    items = NetstringDecoder(64 * 1024 * 1024).feed(data)
    if not items:
        raise ValueError(f"no answer from {host}:{port}")
    return json.loads(items[0])


def main(argv: list[str] | None = None) -> int:
    from mta.access import LOOPBACK_ONLY, Action, load_access

    ap = argparse.ArgumentParser(prog="mta.progress")
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--listen", required=True)
    args = ap.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    rules = load_access(args.root, "qmqpaccess", LOOPBACK_ONLY)
    from mta.privsep import drop_to

    drop_to(args.root, "queue")  # reading a WAL database needs write access to its -shm

    def access(ip: str) -> bool:
        return rules.lookup(ip) in (Action.ALLOW, Action.RELAY)

    async def serve() -> None:
        server = await open_progress_server(host.strip("[]"), int(port), root=args.root,
                                            access=access)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
