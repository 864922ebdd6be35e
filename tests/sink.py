"""A scriptable receiving SMTP server for tests (in the spirit of Postfix's smtp-sink).

Runs an asyncio server in a background thread on a loopback address. It speaks
enough ESMTP for our client (EHLO with PIPELINING/8BITMIME/SIZE, MAIL, RCPT, DATA,
RSET, NOOP, QUIT), records every accepted transaction, counts simultaneous
sessions (and the peak), and can be told to misbehave:

- ``max_sessions=N``: answer ``421`` to any session beyond the N-th open one;
- ``rcpt_reply={address: "550 no such user"}``: a chosen reply to RCPT;
- ``hang_after_354=True``: stop answering after the 354 (RD2);
- ``delay=seconds``: wait before each reply to the final dot (the message counts as
  received when the dot arrives, even if the client vanishes during the wait; its
  ``acked`` says whether the 250 was sent);
- ``greeting="421 busy"``: the greeting line (then the session ends if not 2xx);
- ``mail_reply="451 later"``: a chosen reply to MAIL;
- ``drop_in_data=True``: close the connection halfway through the message text;
- ``group=SessionGroup()``: shared by several sinks to measure the global peak.

``LoopThread`` is the background-thread asyncio runner under ``Sink``; other test peers
(the TLS receiver, QMQP peers) reuse it: subclass, set ``host``, define ``async _serve()``
that makes ``self._stop``, listens, calls ``self._ready.set()`` and returns once stopped.

Use ``with Sink("127.0.1.1") as s:`` then ``s.port``, ``s.messages``,
``s.peak_sessions``, ``s.refused``, ``s.holding`` (sessions waiting out ``delay``),
``s.overlaps`` (recipients given by one session while another live session still
held a transaction for them); ``s.wait_for(n, timeout)`` waits (bounded) until n
recipients were accepted, ``s.wait_until(pred, timeout, what)`` for anything else.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field


class LoopThread:
    """Runs the subclass's ``async _serve()`` on its own event loop in a thread."""

    what = "test server"  # subclasses also provide ``host`` (a dataclass field, say)

    def __enter__(self):
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{self.what} on {self.host} did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()  # ``_serve`` is the subclass's: it serves its own protocol


@dataclass
class Received:
    sender: str
    rcpts: list
    data: bytes
    at: float = 0.0  # time.monotonic() when the final dot arrived
    acked: bool = False  # the sink answered 250 to the dot (False: the client left first)


class SessionGroup:
    """Counts simultaneous sessions across several sinks (a global peak)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sessions = 0
        self.peak = 0

    def enter(self) -> None:
        with self.lock:
            self.sessions += 1
            self.peak = max(self.peak, self.sessions)

    def leave(self) -> None:
        with self.lock:
            self.sessions -= 1


@dataclass
class Sink(LoopThread):
    what = "sink"
    host: str = "127.0.0.1"
    max_sessions: int = 0
    rcpt_reply: dict = field(default_factory=dict)
    hang_after_354: bool = False
    delay: float = 0.0
    port: int = 0
    messages: list = field(default_factory=list)
    sessions: int = 0
    peak_sessions: int = 0
    refused: int = 0
    total_sessions: int = 0
    group: SessionGroup | None = None
    greeting: str = "220 sink ESMTP"
    mail_reply: str | None = None
    drop_in_data: bool = False
    holding: int = 0
    overlaps: list = field(default_factory=list)

    def __enter__(self) -> "Sink":
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}
        return super().__enter__()

    def rcpt_count(self) -> int:
        with self._lock:
            return sum(len(m.rcpts) for m in self.messages)

    def wait_for(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.rcpt_count() < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"sink {self.host}:{self.port} got {self.rcpt_count()} "
                                     f"recipients, expected {n} within {timeout}s")
            time.sleep(0.02)

    def wait_until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"sink {self.host}:{self.port}: timed out after {timeout}s "
                                     f"waiting for {what}")
            time.sleep(0.02)

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._session, self.host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _session(self, reader, writer) -> None:
        with self._lock:
            self.total_sessions += 1
            if self.max_sessions and self.sessions >= self.max_sessions:
                self.refused += 1
                refuse = True
            else:
                refuse = False
                self.sessions += 1
                self.peak_sessions = max(self.peak_sessions, self.sessions)
                if self.group:
                    self.group.enter()
        held: list = []  # recipients of this session's open transaction
        counted = [not refuse]

        def leave() -> None:  # once: at QUIT (before the 221 lets the client go on) or at the end
            if counted[0]:
                counted[0] = False
                with self._lock:
                    self.sessions -= 1
                if self.group:
                    self.group.leave()

        try:
            if refuse:
                writer.write(b"421 too busy, try later\r\n")
                await writer.drain()
                return
            await self._converse(reader, writer, held, leave)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: the session simply ends
        finally:
            self._release(held)
            leave()
            writer.close()

    def _release(self, held: list) -> None:
        with self._lock:
            for addr in held:
                if self._active.get(addr, 0) > 1:
                    self._active[addr] -= 1
                else:
                    self._active.pop(addr, None)
        held.clear()

    def _hold(self, addr: str, held: list) -> None:
        with self._lock:
            if self._active.get(addr):
                self.overlaps.append(addr)
            self._active[addr] = self._active.get(addr, 0) + 1
        held.append(addr)

    async def _wait_reply_delay(self, reader) -> bool:
        """Sleep ``delay`` unless the client goes away first; True if it is still there."""
        with self._lock:
            self.holding += 1
        try:
            deadline = time.monotonic() + self.delay
            while time.monotonic() < deadline:
                if reader.at_eof():
                    return False
                await asyncio.sleep(0.02)
            return True
        finally:
            with self._lock:
                self.holding -= 1

    async def _converse(self, reader, writer, held: list, leave) -> None:
        w = writer.write
        w(self.greeting.encode() + b"\r\n")
        if not self.greeting.startswith("2"):
            await writer.drain()
            return
        sender, rcpts = None, []
        while line := await reader.readline():
            cmd = line.decode("latin-1").rstrip("\r\n")
            verb = cmd[:4].upper()
            if verb in ("EHLO", "HELO"):
                w(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 0\r\n")
            elif verb == "MAIL" and self.mail_reply:
                w(self.mail_reply.encode() + b"\r\n")
            elif verb == "MAIL":
                sender, rcpts = cmd[10:].split(">")[0].lstrip("<"), []
                self._release(held)
                w(b"250 ok\r\n")
            elif verb == "RCPT" and sender is None:
                w(b"503 need MAIL first\r\n")
            elif verb == "RCPT":
                addr = cmd[8:].split(">")[0].lstrip("<")
                reply = self.rcpt_reply.get(addr)
                if reply:
                    w(reply.encode() + b"\r\n")
                else:
                    rcpts.append(addr)
                    self._hold(addr, held)
                    w(b"250 ok\r\n")
            elif verb == "DATA":
                if not rcpts:
                    w(b"554 no valid recipients\r\n")
                    continue
                w(b"354 go ahead\r\n")
                await writer.drain()
                if self.hang_after_354:
                    await asyncio.sleep(3600)
                if self.drop_in_data:
                    await reader.read(1)
                    return
                data = await reader.readuntil(b"\r\n.\r\n")
                got = Received(sender, rcpts, data[:-3], time.monotonic())
                with self._lock:
                    self.messages.append(got)
                if self.delay and not await self._wait_reply_delay(reader):
                    return
                self._release(held)
                got.acked = True
                w(b"250 ok queued\r\n")
                sender, rcpts = None, []
            elif verb == "RSET":
                sender, rcpts = None, []
                self._release(held)
                w(b"250 ok\r\n")
            elif verb == "QUIT":
                self._release(held)
                leave()
                w(b"221 bye\r\n")
                await writer.drain()
                return
            else:
                w(b"250 ok\r\n" if verb == "NOOP" else b"502 unimplemented\r\n")
            await writer.drain()
