"""QMQP listener: thin asyncio glue around mta.qmqp.QmqpServer (qmail-qmqpd).

``open_qmqp_server(host, port, *, submit, access, ...) -> asyncio.Server``
(must be closed) and ``serve_qmqp(...)`` (runs until cancelled).

QMQP relays to any destination, so only trusted clients may use it:
``access(peer_ip) -> bool`` (control/qmqpaccess) is asked when the connection
is made, and a refused peer is disconnected before a single byte is read
(security matrix RL5). An allowed client sends one request; the listener
prepends ``Received: ... with QMQP`` and awaits ``submit(sender, recipients,
data)`` exactly as mta.net.qmtp_server does (``SubmitError`` -> ``Z``/``D``,
other exceptions logged and answered ``Z``), writes the one reply netstring
and closes. Malformed requests close the connection with nothing submitted;
bad addresses get qmail-qmqpd's ``D`` text. A client silent for ``timeout``
seconds is disconnected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from mta.net.qmtp_server import Clock, IdleTimer, Submit, submit_message
from mta.qmqp import DEFAULT_MAX_REQUEST, QmqpServer, qmqp_reply
from mta.qmtp import Event, MessageReceived, MessageRefused

log = logging.getLogger(__name__)


class _QmqpConnection(asyncio.Protocol):
    def __init__(self, submit: Submit, access: Callable[[str], bool], max_request: int,
                 local_host: str, timeout: float, clock: Clock) -> None:
        self._submit = submit
        self._access = access
        self._max_request = max_request
        self._local_host = local_host
        self._timeout = timeout
        self._clock = clock
        self._timer: IdleTimer | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport: asyncio.Transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if peer else "unknown"
        if not self._access(self._peer):
            log.info("QMQP connection from %s refused by qmqpaccess", self._peer)
            transport.pause_reading()
            transport.close()
            return
        self._core = QmqpServer(max_request=self._max_request)
        self._timer = IdleTimer(self._timeout, self._on_idle)

    def data_received(self, data: bytes) -> None:
        if self._timer is None:
            return  # refused peer: never parsed
        self._timer.touch()
        self._handle(self._core.receive_data(data))

    def eof_received(self) -> bool:
        if self._timer is not None:
            self._handle(self._core.receive_eof())
        return True  # the reply may still be due; _finish closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _on_idle(self) -> None:
        if self._task is None:
            log.info("QMQP client %s timed out", self._peer)
            self._transport.abort()
        elif self._timer is not None:
            self._timer.touch()

    def _handle(self, events: list[Event]) -> None:
        for event in events:  # the core emits at most one event per connection
            self._transport.pause_reading()
            if isinstance(event, MessageReceived):
                self._task = asyncio.get_running_loop().create_task(self._submit_and_reply(event))
            elif isinstance(event, MessageRefused):
                self._transport.write(event.reply)
                self._transport.close()
            else:
                log.info("QMQP protocol error from %s: %s", self._peer, event.reason)
                self._transport.close()

    async def _submit_and_reply(self, event: MessageReceived) -> None:
        try:
            outcome = await submit_message(self._submit, event, "QMQP", self._peer,
                                           self._local_host, self._clock)
            self._transport.write(qmqp_reply(outcome))
        finally:
            self._transport.close()


async def open_qmqp_server(
    host: str, port: int, *, submit: Submit, access: Callable[[str], bool],
    max_request: int = DEFAULT_MAX_REQUEST, local_host: str = "unknown",
    timeout: float = 1200.0, clock: Clock = time.time,
) -> asyncio.Server:
    """Listen on ``host:port`` (port 0 = any free port; see ``server.sockets``)."""
    def factory() -> asyncio.Protocol:
        return _QmqpConnection(submit, access, max_request, local_host, timeout, clock)

    return await asyncio.get_running_loop().create_server(factory, host, port)


async def serve_qmqp(host: str, port: int, **kwargs) -> None:
    """``open_qmqp_server`` and serve until cancelled."""
    server = await open_qmqp_server(host, port, **kwargs)
    async with server:
        await server.serve_forever()
