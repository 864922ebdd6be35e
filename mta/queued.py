"""The queue owner: one process writes the queue for every listener, with group commit.

``mta start`` runs ``python -m mta.queued --root DIR`` before the listeners. A
listener never writes the queue itself (DESIGN.md): it sends each message over the
unix socket ``queue/lock/qq.sock`` (protocol in mta.qq_client: QMQP framing, replies
``K<id>`` / ``Z<code> <text>`` / ``D<code> <text>``) and answers its client only
after the ``K``.

Theory of operation. The event loop parses requests from every connection into a
pending list. One committer task takes everything pending (up to ``max_batch``
messages) and runs ``mta.queue.enqueue_batch`` in a dedicated thread: bodies written
and fsynced in parallel, one fsync of mess/, one SQLite transaction, one COMMIT,
one trigger poke. Requests that arrive meanwhile wait for the next batch, so under
load a batch holds about one commit's worth of arrivals, and the cost of the
fsyncs is shared (group commit). Only when the batch has returned are the replies
written (crash point ``after_batch_commit_before_reply`` just before), each
connection's replies in the order of its requests. A crash anywhere therefore
loses nothing that was acknowledged; a crash after the COMMIT and before the reply
leaves messages queued whose clients saw a failure (a duplicate on retry, the
accepted worst case, as with qmail-queue killed after its commit).

One queue owner per queue: ``queue/lock/qq.lock`` is flocked for the life of the
process; the socket is then (re)bound with mode 0666, so any local user may hand
in a message (as qmail-queue is setuid): access to it is decided by the
permissions of ``queue/lock/``. At start-up the owner runs ``clean_queue``.

Bad input from a client (garbage framing, a truncated request, a request larger
than ``max_bytes``, no recipient, an address that is not UTF-8) is refused with a
``D`` reply naming the problem, nothing of it is queued, and the connection is
closed once the replies to its earlier requests have been written.

Public:
    QueueOwner(root, *, max_bytes=MAX_BYTES, max_batch=MAX_BATCH, sync=None)
        ``sync``: "syncfs", "fsync" or "auto" (mta.queue.batch); default from the
        environment variable MTA_QUEUE_SYNC, else "auto" (syncfs on Linux). Choose
        "fsync" when the queue shares its file system with heavy writers: syncfs
        waits for their dirty data too. The owner logs, when it stops, how many
        messages it committed in how many batches, and the mean commit time.
        ``await start()``, ``await serve_until_term()``, ``await close()``
    parse_request(payload) -> BatchItem     raises NetstringError (a ValueError)
    main(argv=None) -> exit code            111 if the owner cannot start
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import fcntl
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mta.crashpoint import crash_point
from mta.netstring import NetstringDecoder, NetstringError, encode_netstring, parse_length
from mta.qq_client import socket_path
from mta.queue import BatchItem, QueueError, clean_queue, enqueue_batch, open_queue

__all__ = ["QueueOwner", "parse_request", "main", "MAX_BYTES", "MAX_BATCH"]

log = logging.getLogger("mta.queued")

MAX_BYTES = 64 << 20  # largest request; a message beyond it is refused with D
MAX_BATCH = 256       # messages per commit
MAX_INFLIGHT = 256    # requests one connection may have waiting before we stop reading
FSYNC_THREADS = 8


def parse_request(payload: bytes) -> BatchItem:
    """The inside of one request: netstrings message, sender, recipient, ..."""
    fields, pos = [], 0
    while pos < len(payload):
        parsed = parse_length(payload, pos, len(payload))
        if parsed is None:
            raise NetstringError("request truncated inside a netstring")
        length, start = parsed
        if start + length >= len(payload) or payload[start + length] != 0x2C:
            raise NetstringError("missing comma after netstring body")
        fields.append(payload[start:start + length])
        pos = start + length + 1
    if len(fields) < 3:
        raise NetstringError("a request needs a message, a sender and a recipient")
    try:
        sender, *rcpts = (f.decode() for f in fields[1:])
    except UnicodeDecodeError as exc:
        raise NetstringError(f"address is not UTF-8: {exc}") from exc
    return BatchItem(sender, tuple(rcpts), fields[0])


class _Request:
    __slots__ = ("item", "reply")

    def __init__(self, item: BatchItem | None, reply: bytes | None = None) -> None:
        self.item, self.reply = item, reply


class _Session(asyncio.Protocol):
    """One client connection: parse requests, write replies in request order."""

    def __init__(self, owner: "QueueOwner") -> None:
        self.owner = owner
        self.decoder = NetstringDecoder(owner.max_bytes)
        self.queue: collections.deque[_Request] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.finished = False  # no more requests will be read
        self.paused = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.owner.sessions.add(self)

    def connection_lost(self, exc) -> None:
        self.owner.sessions.discard(self)
        self.finished = True

    def data_received(self, data: bytes) -> None:
        if self.finished:
            return
        try:
            payloads = self.decoder.feed(data)
        except NetstringError as exc:
            return self._refuse(f"bad request framing: {exc.reason}")
        for payload in payloads:
            try:
                item = parse_request(payload)
            except NetstringError as exc:
                return self._refuse(f"bad request: {exc.reason}")
            req = _Request(item)
            self.queue.append(req)
            self.owner.add(req, self)
        if len(self.queue) >= MAX_INFLIGHT and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        if not self.finished and self.decoder.pending:
            self._refuse("request truncated (end of input inside a netstring)")
        self.finished = True
        self.flush()
        return True  # keep the write side open for the replies still due

    def _refuse(self, text: str) -> None:
        self.finished = True
        self.queue.append(_Request(None, b"D91 " + text.encode()))
        self.flush()

    def flush(self) -> None:
        """Write every reply that is due, in order; close when nothing more can come."""
        out = []
        while self.queue and self.queue[0].reply is not None:
            out.append(encode_netstring(self.queue.popleft().reply))
        if out and not self.transport.is_closing():
            self.transport.writelines(out)
        if self.paused and len(self.queue) < MAX_INFLIGHT // 2 and not self.finished:
            self.paused = False
            self.transport.resume_reading()
        if self.finished and not self.queue:
            self.transport.close()


class QueueOwner:
    """The daemon's state: the listening socket, pending requests, the committer."""

    def __init__(self, root: str | os.PathLike, *, max_bytes: int = MAX_BYTES,
                 max_batch: int = MAX_BATCH, sync: str | None = None) -> None:
        self.root = Path(root)
        self.sync = sync or os.environ.get("MTA_QUEUE_SYNC", "auto")
        if self.sync not in ("auto", "syncfs", "fsync"):
            raise QueueError(f"MTA_QUEUE_SYNC must be auto, syncfs or fsync, not {self.sync!r}")
        self.max_bytes, self.max_batch = max_bytes, max_batch
        self.sessions: set[_Session] = set()
        self.pending: list[tuple[_Request, _Session]] = []
        self.batches = 0
        self.batched = 0           # messages in those batches
        self.commit_seconds = 0.0  # wall time spent in enqueue_batch
        self._busy = False
        self._wake = asyncio.Event()
        self._committer_thread = ThreadPoolExecutor(1, thread_name_prefix="qq-commit")
        self._fsync_pool = ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="qq-fsync")
        self._conn = None
        self._lock_fd = -1
        self._server: asyncio.AbstractServer | None = None
        self._committer: asyncio.Task | None = None

    def add(self, req: _Request, session: _Session) -> None:
        self.pending.append((req, session))
        self._wake.set()

    async def start(self) -> None:
        """Take the owner lock, clean the queue, open the database, bind the socket."""
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._committer_thread, open_queue, self.root)
        self._take_lock()
        removed = await loop.run_in_executor(self._committer_thread, clean_queue, self.root)
        if removed:
            log.info("removed %d leftover files of interrupted injections", removed)
        path = socket_path(self.root)
        path.unlink(missing_ok=True)  # stale: we hold the owner lock
        self._server = await loop.create_unix_server(lambda: _Session(self), os.fspath(path))
        os.chmod(path, 0o666)
        self._committer = asyncio.create_task(self._commit_loop())
        log.info("queue owner listening on %s", path)

    def _take_lock(self) -> None:
        lock = self.root / "queue" / "lock" / "qq.lock"
        self._lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise OSError(f"another queue owner holds {lock}") from None

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                batch = self.pending[:self.max_batch]
                del self.pending[:self.max_batch]
                self._busy = True
                try:
                    started = loop.time()
                    results = await loop.run_in_executor(
                        self._committer_thread, self._commit, [req.item for req, _ in batch])
                    self.batches += 1
                    self.batched += len(batch)
                    self.commit_seconds += loop.time() - started
                    crash_point("after_batch_commit_before_reply")
                    self._reply(batch, results)
                finally:
                    self._busy = False

    def _commit(self, items: list[BatchItem]) -> list:
        try:
            return enqueue_batch(self.root, items, conn=self._conn, pool=self._fsync_pool,
                                 sync=self.sync)
        except Exception as exc:  # a bug or a broken connection: fail the batch, go on
            log.exception("batch of %d failed", len(items))
            self._reopen()
            return [QueueError(f"internal error: {exc!r}")] * len(items)

    def _reopen(self) -> None:
        try:
            self._conn.close()
            self._conn = open_queue(self.root)
        except QueueError as exc:
            log.error("cannot reopen the queue database: %s", exc)

    def _reply(self, batch, results) -> None:
        touched = set()
        for (req, session), result in zip(batch, results):
            if isinstance(result, int):
                req.reply = b"K%d" % result
            else:
                kind = "D" if result.permanent else "Z"
                req.reply = f"{kind}{result.exit_code} {result}".encode(errors="replace")
            touched.add(session)
        for session in touched:
            session.flush()

    async def serve_until_term(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # nothing to reload
        await stop.wait()
        await self.close()

    async def close(self) -> None:
        """Stop accepting; let the pending batches commit and be answered; release."""
        if self._server is not None:
            self._server.close()
            socket_path(self.root).unlink(missing_ok=True)
        while self._committer is not None and (self.pending or self._busy):
            await asyncio.sleep(0.01)  # the committer drains what was accepted
        if self._committer is not None:
            self._committer.cancel()
        if self.batches:
            log.info("stopping: %d messages in %d batches (%.1f a batch), %.2f ms a commit",
                     self.batched, self.batches, self.batched / self.batches,
                     self.commit_seconds / self.batches * 1000)
        loop = asyncio.get_running_loop()
        if self._conn is not None:
            await loop.run_in_executor(self._committer_thread, self._conn.close)
        self._committer_thread.shutdown()
        self._fsync_pool.shutdown()
        for session in list(self.sessions):
            session.transport.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


async def _run(root: Path, max_bytes: int) -> None:
    owner = QueueOwner(root, max_bytes=max_bytes)
    await owner.start()
    await owner.serve_until_term()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mta.queued")
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--max-bytes", type=int, default=MAX_BYTES)
    args = ap.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format=f"%(asctime)s queued[{os.getpid()}] %(message)s")
    import uvloop

    from mta.privsep import drop_to

    drop_to(args.root, "queue")
    try:
        uvloop.run(_run(args.root, args.max_bytes))
    except (QueueError, OSError) as exc:
        sys.stderr.write(f"mta.queued: cannot start: {exc}\n")
        return 111
    return 0


if __name__ == "__main__":
    sys.exit(main())
