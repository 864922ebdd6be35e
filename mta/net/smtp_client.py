"""Asyncio transport for the sans-I/O SMTP client (``mta.smtp.client``).

What it does: ``open_smtp_connection`` connects (uvloop-friendly
``asyncio.Protocol``, not streams), sets TCP_NODELAY on the socket (DESIGN.md: Nagle
plus delayed ACK would cost ~40 ms a transaction), waits for the greeting and EHLO
(or HELO), optionally upgrades with STARTTLS, and returns an ``SMTPConnection``.
``await conn.send_transaction(sender, recipients, prepared_body)`` runs one mail
transaction (pipelined when the server offers PIPELINING) and returns one Outcome per
recipient, in order. The prepared body (``mta.remote.body.prepare_body``, or a
sequence of buffers: ``TokenBody.for_recipients``) is written by reference for every
transaction, never copied per recipient. After the final dot
is written it calls ``crash_point("remote_after_dot")``.

Timeouts: ``timeout_connect`` bounds the TCP connect (qmail ``timeoutconnect``);
``timeout_reply`` bounds each wait for a reply (qmail ``timeoutremote``), measured
from the last sign of life (bytes received, or the send buffer draining while a big
body goes out). One timer per connection is re-armed lazily, so the fast path costs
no timer calls.

STARTTLS (opportunistic): used when the server offers it and ``tls_context`` is
given; verification is whatever the context says (callers pass one with
verification off, as MTAs do for opportunistic TLS). If the server refuses STARTTLS
the session goes on in plaintext. If the TLS handshake itself fails, the connection
is dropped and ``open_smtp_connection`` connects once more without TLS (Postfix's
opportunistic behaviour); ``conn.tls_active`` tells which happened, and
``conn.tls_failed`` is True on such a second, plaintext connection.

Public names: ``open_smtp_connection``, ``SMTPConnection`` (``send_transaction``,
``quit``, ``close``, ``transactions_done``, ``extensions``, ``tls_active``,
``tls_failed``, ``usable``, ``failure``), ``ConnectionFailed``.

How it fails: connection-level trouble (connect refused or timed out, greeting
4xx/5xx, EHLO and HELO refused, 421, garbage, timeout, drop) is a
``ConnectionFailed(outcome, stage)``: raised by ``open_smtp_connection``; stored in
``conn.failure`` when it happens during a transaction (whose recipients then get
TempFail outcomes, returned normally), and raised by ``send_transaction`` on a
connection that already failed. The caller throttles the host on it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Sequence

from mta.crashpoint import crash_point
from mta.interfaces import Outcome, PermFail, TempFail
from mta.smtp.client import (
    Closed, DataSent, Extensions, SessionFailed, SessionReady, SMTPClient, StartTLS,
    TransactionDone,
)
from mta.status import Stage, classify_oserror, classify_timeout


class ConnectionFailed(Exception):
    """Connection-level failure: ``outcome`` applies to the host, ``stage`` says where."""

    def __init__(self, outcome: TempFail | PermFail, stage: Stage):
        super().__init__(outcome.reason)
        self.outcome = outcome
        self.stage = stage


class SMTPConnection(asyncio.Protocol):
    """One client SMTP connection; create it with ``open_smtp_connection``."""

    def __init__(self, core: SMTPClient, timeout_reply: float) -> None:
        self._core = core
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout_reply
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._early = None  # a result that arrived while nothing waited
        self.failure: ConnectionFailed | None = None
        self.transactions_done = 0
        self.tls_failed = False  # plaintext because the handshake of a first try failed

    # ------------------------------------------------------------ public
    @property
    def extensions(self) -> Extensions:
        return self._core.extensions

    @property
    def tls_active(self) -> bool:
        return self._core.tls_active

    @property
    def usable(self) -> bool:
        """True while another transaction may be sent on this connection."""
        return self.failure is None and not self._closed and self._waiter is None

    async def send_transaction(self, sender: str, recipients: Sequence[str],
                               prepared_body: bytes | Sequence[bytes]) -> list[Outcome]:
        """Deliver ``prepared_body`` from ``sender`` to ``recipients``; one Outcome each.

        ``prepared_body`` is ``prepare_body`` output, or a sequence of buffers that
        concatenate to such output (written in one ``writelines``, never joined).

        Raises ``ConnectionFailed`` if the connection had already failed, and
        ``RuntimeError`` if another transaction is still running on it.
        """
        if self.failure is not None:
            raise self.failure
        if self._closed or self._waiter is not None:
            raise RuntimeError("connection closed or busy")
        events = self._core.start_transaction(sender, recipients, prepared_body)
        if events:
            return list(events[0].outcomes)
        return await self._wait()

    async def quit(self) -> None:
        """Say QUIT, wait (bounded) for the reply, close. Never raises for peer trouble."""
        if not self._closed and self.failure is None and self._waiter is None:
            self._core.send_quit()
            try:
                await self._wait()
            except ConnectionFailed:
                pass  # the session is over either way; nothing to deliver or defer
        self.close()

    def close(self) -> None:
        """Close at once (abort when the peer misbehaved, so no buffer waits on it)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        t = self._transport
        if t is not None and not t.is_closing():
            if self.failure is not None or t.get_write_buffer_size():
                t.abort()
            else:
                t.close()

    async def __aenter__(self) -> SMTPConnection:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.quit()

    # ------------------------------------------------------------ waiting
    def _wait(self) -> asyncio.Future:
        self._flush()
        fut = self._loop.create_future()
        if self._early is not None:  # it happened before anyone waited (the greeting)
            value, self._early = self._early, None
            if isinstance(value, BaseException):
                fut.set_exception(value)
            else:
                fut.set_result(value)
            return fut
        self._waiter = fut
        self._deadline = self._loop.time() + self._timeout
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)
        return fut

    def _check_deadline(self) -> None:
        self._timer = None
        if self._waiter is None or self._closed:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)
            return
        self._handle(self._core.timed_out())

    def _resolve(self, value) -> None:
        fut, self._waiter = self._waiter, None
        if fut is None:
            self._early = value
            return
        if fut is not None and not fut.done():
            if isinstance(value, BaseException):
                fut.set_exception(value)
            else:
                fut.set_result(value)

    # ------------------------------------------------------------ protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._deadline = self._loop.time() + self._timeout
        self._handle(self._core.receive_data(data))

    def resume_writing(self) -> None:
        self._deadline = self._loop.time() + self._timeout  # the peer is reading

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed and self._waiter is None:
            return
        self._handle(self._core.connection_lost())
        self._closed = True
        if self._waiter is not None:  # e.g. lost during the TLS handshake
            self._resolve(self.failure or ConnectionFailed(
                TempFail("connection died", "4.4.2"), Stage.MAIL))

    def _flush(self) -> None:
        out = self._core.take_output()
        if out and self._transport is not None and not self._transport.is_closing():
            if len(out) == 1:
                self._transport.write(out[0])
            else:
                self._transport.writelines(out)

    def _handle(self, events: list) -> None:
        self._flush()
        for ev in events:
            cls = type(ev)
            if cls is DataSent:
                crash_point("remote_after_dot")
            elif cls is TransactionDone:
                self.transactions_done += 1
                self._resolve(list(ev.outcomes))
            elif cls is SessionReady or cls is StartTLS or cls is Closed:
                self._resolve(ev)
            elif cls is SessionFailed:
                self.failure = ConnectionFailed(ev.outcome, ev.stage)
                self._resolve(self.failure)
                self.close()
        if self._closed:
            self.close()


async def open_smtp_connection(
    host: str, port: int, *, helo: str, timeout_connect: float, timeout_reply: float,
    local_addr: tuple[str, int] | None = None, tls_context: ssl.SSLContext | None = None,
) -> SMTPConnection:
    """Connect to ``host``:``port``, read the greeting, say EHLO (and STARTTLS).

    Raises ``ConnectionFailed`` (stage ``connect``, ``greeting``, ``ehlo`` or
    ``starttls``) when no usable session comes up.
    """
    conn = await _connect(host, port, helo, timeout_connect, timeout_reply, local_addr,
                          tls_context is not None)
    try:
        event = await conn._wait()
        if isinstance(event, StartTLS):
            if not await _start_tls(conn, host, tls_context, timeout_reply):
                plain = await open_smtp_connection(
                    host, port, helo=helo, timeout_connect=timeout_connect,
                    timeout_reply=timeout_reply, local_addr=local_addr)
                plain.tls_failed = True
                return plain
            event = await conn._wait()
    except BaseException:
        conn.close()
        raise
    assert isinstance(event, SessionReady), event
    return conn


async def _connect(host, port, helo, timeout_connect, timeout_reply, local_addr,
                   starttls) -> SMTPConnection:
    loop = asyncio.get_running_loop()
    core = SMTPClient(helo, host, starttls=starttls)
    try:
        transport, conn = await asyncio.wait_for(
            loop.create_connection(lambda: SMTPConnection(core, timeout_reply), host, port,
                                   local_addr=local_addr),
            timeout_connect)
    except (TimeoutError, asyncio.TimeoutError):
        cause = classify_timeout(Stage.CONNECT)
        raise ConnectionFailed(_no_connection(host, port, cause.reason, cause.dsn),
                               Stage.CONNECT) from None
    except OSError as exc:
        cause = classify_oserror(exc, Stage.CONNECT)
        raise ConnectionFailed(_no_connection(host, port, cause.reason, cause.dsn),
                               Stage.CONNECT) from None
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _no_connection(host: str, port: int, detail: str, dsn: str) -> TempFail:
    return TempFail(f"Sorry, I wasn't able to establish an SMTP connection to {host}:{port} "
                    f"({detail}). (#{dsn})", dsn)


async def _start_tls(conn: SMTPConnection, host: str, context: ssl.SSLContext,
                     timeout: float) -> bool:
    """Wrap ``conn`` in TLS; False (connection dropped) when the handshake fails."""
    loop = asyncio.get_running_loop()
    try:
        tls_transport = await asyncio.wait_for(
            loop.start_tls(conn._transport, conn, context, server_hostname=host), timeout)
    except (OSError, ssl.SSLError, TimeoutError, asyncio.TimeoutError, ConnectionError):
        conn.failure = ConnectionFailed(TempFail("TLS handshake failed", "4.7.5"),
                                        Stage.STARTTLS)
        conn.close()
        return False
    conn._transport = tls_transport
    conn._core.tls_established()
    return True
