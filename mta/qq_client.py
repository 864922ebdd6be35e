"""Client side of the queue owner's socket, ``queue/lock/qq.sock`` (see mta.queued).

The protocol is QMQP's framing (cr.yp.to/proto/qmqp.html) on a local stream socket:

    request  = netstring( netstring(message) netstring(sender) netstring(rcpt)... )
    reply    = netstring( "K" id | "Z" code " " text | "D" code " " text )

``K`` means the message is committed to the queue (the reply is written only after
the COMMIT that covers it), ``Z`` a temporary and ``D`` a permanent refusal; ``code``
is the qmail-queue exit code the queue owner would have exited with. A connection
carries any number of requests; they may be pipelined and are answered in order.
A connection that drops before its reply means "temporary failure, maybe queued"
(as qmail-queue killed after its commit: the accepted worst case is a duplicate).

Public:
    socket_path(root) -> Path
    encode_request(sender, recipients, message) -> list[bytes]   (for writelines)
    parse_reply(payload) -> int                 the id, or raises QqError
    QqError(temporary, text, exit_code)         a refusal or a failure to talk
    submit_sync(path, sender, recipients, message, timeout=...) -> int
    QqClient(path, *, connect_wait=5.0, timeout=600.0): ``await submit(...)`` -> id;
        one pipelined connection, re-opened on demand; the requests made in one
        event-loop iteration are sent in one write; ``close()``
    may_write_queue(root) -> bool               can this process write the queue itself?
    inject(root, sender, recipients, message) -> int
        the way in for our own components (local delivery's forwards, the list
        manager): ``mta.queue.enqueue`` when this process may write the queue, else
        the queue owner's socket (privilege separation). Raises QueueError either way.

Failures: every failure is a QqError. Connecting fails temporarily (exit 71, the
code qmail-qmqpc uses for "cannot reach the server"); the daemon's own refusal
carries its code; a malformed reply is temporary (81).
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import time
from pathlib import Path
from collections.abc import Iterable

from mta.netstring import NetstringDecoder, NetstringError, encode_netstring

__all__ = ["socket_path", "encode_request", "parse_reply", "QqError", "submit_sync",
           "QqClient", "REPLY_LIMIT", "may_write_queue", "inject"]

REPLY_LIMIT = 4096
UNREACHABLE = 71


def socket_path(root: str | os.PathLike) -> Path:
    return Path(root) / "queue" / "lock" / "qq.sock"


class QqError(Exception):
    """The queue owner refused the message, or could not be asked."""

    def __init__(self, temporary: bool, text: str, exit_code: int) -> None:
        super().__init__(text)
        self.temporary, self.text, self.exit_code = temporary, text, exit_code


def encode_request(sender: str, recipients: Iterable[str], message: bytes) -> list[bytes]:
    """The request as pieces, so a large message is not copied again."""
    env = [encode_netstring(sender.encode())]
    env += [encode_netstring(r.encode()) for r in recipients]
    inner_len = len(message) + len(str(len(message))) + 2 + sum(map(len, env))
    return [b"%d:%d:" % (inner_len, len(message)), message, b","] + env + [b","]


def parse_reply(payload: bytes) -> int:
    """``K<id>`` -> id; ``Z``/``D`` -> QqError; anything else -> temporary QqError."""
    kind, rest = payload[:1], payload[1:].decode(errors="replace")
    if kind == b"K" and rest.isdigit():
        return int(rest)
    if kind in (b"Z", b"D"):
        code, _, text = rest.partition(" ")
        exit_code = int(code) if code.isdigit() else (81 if kind == b"Z" else 31)
        return _raise(kind == b"Z", text or rest, exit_code)
    return _raise(True, f"bad reply from the queue owner: {payload[:60]!r}", 81)


def _raise(temporary: bool, text: str, code: int) -> int:
    raise QqError(temporary, text, code)


def submit_sync(path: str | os.PathLike, sender: str, recipients: Iterable[str],
                message: bytes, timeout: float = 600.0) -> int:
    """One request over a fresh connection (the qmail-queue shim's way in)."""
    deadline = time.monotonic() + timeout
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:
        raise QqError(True, f"cannot make a socket: {exc}", UNREACHABLE) from exc
    with sock:
        try:
            sock.settimeout(timeout)
            sock.connect(os.fspath(path))
        except OSError as exc:
            raise QqError(True, f"cannot reach the queue owner at {path}: {exc}",
                          UNREACHABLE) from exc
        try:
            sock.sendall(b"".join(encode_request(sender, recipients, message)))
            decoder = NetstringDecoder(REPLY_LIMIT)
            while True:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                data = sock.recv(REPLY_LIMIT)
                if not data:
                    raise QqError(True, "the queue owner closed the connection before"
                                  " answering (the message may be queued)", 81)
                replies = decoder.feed(data)
                if replies:
                    return parse_reply(replies[0])
        except (OSError, NetstringError) as exc:
            raise QqError(True, f"talking to the queue owner: {exc}", 81) from exc


class _ReplyProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.decoder = NetstringDecoder(REPLY_LIMIT)
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._out: list[bytes] = []
        self.loop = asyncio.get_running_loop()  # kept: each lookup costs a getpid()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, pieces: list[bytes]) -> None:
        """Queue a request; every request of this loop iteration goes in one write,
        so sessions finishing DATA together wake the queue owner once."""
        if not self._out:
            self.loop.call_soon(self._flush)
        self._out += pieces

    def _flush(self) -> None:
        out, self._out = self._out, []
        if not self.lost and not self.transport.is_closing():
            self.transport.writelines(out)

    def data_received(self, data: bytes) -> None:
        try:
            replies = self.decoder.feed(data)
        except NetstringError as exc:
            self._fail(f"bad reply framing from the queue owner: {exc}")
            self.transport.close()
            return
        for payload in replies:
            if self.waiting:
                fut = self.waiting.popleft()
                if not fut.done():
                    fut.set_result(payload)

    def connection_lost(self, exc) -> None:
        self.lost = True
        self._fail("the queue owner closed the connection before answering"
                   " (the message may be queued)")

    def _fail(self, text: str) -> None:
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(QqError(True, text, 81))


def _time_out(fut: asyncio.Future, proto: _ReplyProtocol) -> None:
    if not fut.done():
        fut.set_exception(QqError(True, "the queue owner did not answer in time", 81))
        proto.transport.close()  # replies would no longer match their requests


class QqClient:
    """An asyncio client with one pipelined connection, for a listener process."""

    def __init__(self, path: str | os.PathLike, *, connect_wait: float = 5.0,
                 timeout: float = 600.0) -> None:
        self.path, self.connect_wait, self.timeout = os.fspath(path), connect_wait, timeout
        self._proto: _ReplyProtocol | None = None
        self._lock = asyncio.Lock()

    async def submit(self, sender: str, recipients: Iterable[str], message: bytes) -> int:
        """Queue one message; return its id once it is durable, else raise QqError."""
        proto = await self._connection()
        loop = proto.loop
        fut = loop.create_future()
        proto.waiting.append(fut)
        proto.send(encode_request(sender, recipients, message))
        # A plain timer rather than asyncio.wait_for: no extra task or callbacks per
        # message on the listener's hot path.
        timer = loop.call_later(self.timeout, _time_out, fut, proto)
        try:
            payload = await fut
        finally:
            timer.cancel()
        return parse_reply(payload)

    async def _connection(self) -> _ReplyProtocol:
        if self._proto is not None and not self._proto.lost:
            return self._proto
        async with self._lock:
            if self._proto is None or self._proto.lost:
                self._proto = await self._connect()
            return self._proto

    async def _connect(self) -> _ReplyProtocol:
        """Connect, retrying for ``connect_wait`` s (the owner may be restarting)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_wait
        pause = 0.02
        while True:
            try:
                _, proto = await loop.create_unix_connection(_ReplyProtocol, self.path)
                return proto
            except OSError as exc:
                if loop.time() + pause > deadline:
                    raise QqError(True, f"cannot reach the queue owner at {self.path}:"
                                  f" {exc}", UNREACHABLE) from exc
            await asyncio.sleep(pause)
            pause = min(0.5, pause * 2)

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None


def may_write_queue(root: str | os.PathLike) -> bool:
    q = Path(root) / "queue"
    return os.access(q / "tmp", os.W_OK) and os.access(q / "queue.db", os.W_OK)


def inject(root: str | os.PathLike, sender: str, recipients: Iterable[str],
           message: bytes) -> int:
    """Queue a message directly when allowed, else through the queue owner's socket."""
    from mta.queue import QueueError, enqueue

    if may_write_queue(root):
        return enqueue(root, sender, recipients, message)
    try:
        return submit_sync(socket_path(root), sender, recipients, message)
    except QqError as e:
        err = QueueError(e.text)
        err.exit_code = e.exit_code  # keeps qmail's permanent/temporary split
        raise err from e
