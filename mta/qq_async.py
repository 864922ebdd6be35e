"""The asyncio client of the queue owner's socket (protocol: mta.qq_client).

Kept apart from mta.qq_client so that the synchronous users of that module do not
import asyncio; ``from mta.qq_client import QqClient`` still works (it loads this).

Public: QqClient(path, *, connect_wait=5.0, timeout=600.0): ``await submit(sender,
recipients, message)`` -> the queue id once the message is durable, else QqError;
one pipelined connection, re-opened on demand; the requests made in one event-loop
iteration go to the owner in one write; ``close()``.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Iterable

from mta.netstring import NetstringDecoder, NetstringError
from mta.qq_client import REPLY_LIMIT, UNREACHABLE, QqError, encode_request, parse_reply

__all__ = ["QqClient"]


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
