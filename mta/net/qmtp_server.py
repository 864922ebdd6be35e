"""QMTP listener: thin asyncio glue around mta.qmtp.QmtpServer (qmail-qmtpd).

``open_qmtp_server(host, port, *, submit, rcpt_allowed, ...) -> asyncio.Server``
(must be closed) and ``serve_qmtp(...)`` (runs until cancelled) accept
connections; each connection carries any number of packages. For every
complete package the core accepts, the listener prepends a ``Received: ...
with QMTP`` line and awaits ``submit(sender, recipients, data)``; its return
value (a queue id, or None) goes into the ``Kok TIME qp ID`` reply. ``submit``
signals refusal by raising ``SubmitError(temporary, text)`` (-> ``Z``/``D``
with that text); any other exception is logged and answered ``Z`` so the
client retries. ``rcpt_allowed(peer_ip, address) -> bool`` is the relay check
(rcpthosts); refused recipients get ``D`` with qmail's rcpthosts text.

Replies are written in package order; while a package is being submitted
reading is paused, so a pipelining client cannot make the server buffer more
than one package. A protocol error closes the connection after the replies
already due; nothing of the broken package is submitted. A client silent for
``timeout`` seconds is disconnected.

Shared with mta.net.qmqp_server: ``submit_message`` and ``IdleTimer``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Awaitable, Callable

from mta.interfaces import Delivered, Outcome, TempFail
from mta.qmtp import (
    DEFAULT_MAX_MESSAGE,
    Event,
    MessageReceived,
    MessageRefused,
    QmtpServer,
    SubmitError,
    outcome_from_submit_error,
    qmtp_replies,
    received_line,
)

log = logging.getLogger(__name__)

Submit = Callable[[str, tuple[str, ...], bytes], Awaitable[object]]
Clock = Callable[[], float]


async def submit_message(
    submit: Submit, event: MessageReceived, protocol: str, peer_ip: str, local_host: str, clock: Clock
) -> Outcome:
    """Hand one message to ``submit`` and turn its answer into an outcome."""
    data = received_line(protocol, peer_ip, local_host, clock()) + event.data
    try:
        queue_id = await submit(event.sender, event.recipients, data)
    except SubmitError as exc:
        return outcome_from_submit_error(exc)
    except Exception:  # a listener must answer; the client will retry
        log.exception("%s submit failed for a message from %s", protocol, peer_ip)
        return TempFail("qq temporary problem (#4.3.0)", "4.3.0")
    text = f"ok {int(clock())}" + ("" if queue_id is None else f" qp {queue_id}")
    return Delivered(text)


class IdleTimer:
    """Calls ``expire`` after ``timeout`` seconds without ``touch()``."""

    def __init__(self, timeout: float, expire: Callable[[], None]) -> None:
        self._timeout = timeout
        self._expire = expire
        self._handle: asyncio.TimerHandle | None = None
        self.touch()

    def touch(self) -> None:
        self.cancel()
        self._handle = asyncio.get_running_loop().call_later(self._timeout, self._expire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class _QmtpConnection(asyncio.Protocol):
    def __init__(self, submit: Submit, rcpt_allowed: Callable[[str, str], bool],
                 max_message: int, local_host: str, timeout: float, clock: Clock) -> None:
        self._submit = submit
        self._rcpt_allowed = rcpt_allowed
        self._max_message = max_message
        self._local_host = local_host
        self._timeout = timeout
        self._clock = clock
        self._pending: deque[Event] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport: asyncio.Transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if peer else "unknown"
        self._core = QmtpServer(lambda address: self._rcpt_allowed(self._peer, address),
                                max_message=self._max_message)
        self._timer = IdleTimer(self._timeout, self._on_idle)

    def data_received(self, data: bytes) -> None:
        self._timer.touch()
        self._handle(self._core.receive_data(data))

    def eof_received(self) -> bool:
        self._handle(self._core.receive_eof())
        self._closing = True
        if self._worker is None:
            self._transport.close()
        return True  # keep the write side open for the replies still due

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        self._closing = True

    def _on_idle(self) -> None:
        if self._worker is not None:  # we are the slow side, not the client
            self._timer.touch()
            return
        log.info("QMTP client %s timed out", self._peer)
        self._transport.abort()

    def _handle(self, events: list[Event]) -> None:
        if not events:
            return
        self._pending.extend(events)
        if self._worker is None:
            self._transport.pause_reading()
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        try:
            while self._pending:
                event = self._pending.popleft()
                if isinstance(event, MessageReceived):
                    outcome = await submit_message(self._submit, event, "QMTP", self._peer,
                                                   self._local_host, self._clock)
                    self._transport.write(qmtp_replies(event, outcome))
                elif isinstance(event, MessageRefused):
                    self._transport.write(event.reply)
                else:
                    log.info("QMTP protocol error from %s: %s", self._peer, event.reason)
                    self._pending.clear()
                    self._closing = True
        finally:
            self._worker = None
            if self._closing:
                self._transport.close()
            else:
                self._timer.touch()
                self._transport.resume_reading()


def _factory(submit: Submit, rcpt_allowed: Callable[[str, str], bool], max_message: int,
             local_host: str, timeout: float, clock: Clock) -> Callable[[], asyncio.Protocol]:
    limit = max_message if max_message > 0 else DEFAULT_MAX_MESSAGE  # databytes 0 = default cap
    return lambda: _QmtpConnection(submit, rcpt_allowed, limit, local_host, timeout, clock)


async def open_qmtp_server(
    host: str, port: int, *, submit: Submit, rcpt_allowed: Callable[[str, str], bool],
    max_message: int = 0, local_host: str = "unknown", timeout: float = 1200.0,
    clock: Clock = time.time,
) -> asyncio.Server:
    """Listen on ``host:port`` (port 0 = any free port; see ``server.sockets``).

    ``max_message``: qmail's databytes; 0 means the core's default cap.
    """
    factory = _factory(submit, rcpt_allowed, max_message, local_host, timeout, clock)
    return await asyncio.get_running_loop().create_server(factory, host, port)


async def serve_qmtp(host: str, port: int, **kwargs) -> None:
    """``open_qmtp_server`` and serve until cancelled."""
    server = await open_qmtp_server(host, port, **kwargs)
    async with server:
        await server.serve_forever()
