"""QMTP and QMQP clients (maildirqmtp / qmail-qmqpc) over asyncio streams.

``await qmtp_send(host, port, messages, *, timeout, connect_timeout)
-> list[list[Outcome]]``: sends every ``(sender, recipients, data)`` package
on one connection, pipelined, and returns one outcome per recipient per
message, in order (``K`` -> Delivered, ``Z`` -> TempFail, ``D`` -> PermFail).
``data`` must use LF line ends, as the queue stores messages.

``await qmqp_send(servers, sender, recipients, data, *, timeout,
connect_timeout) -> Outcome``: tries ``servers`` (``(host, port)`` pairs) in
order until one accepts the connection, as qmail-qmqpc does, sends the one
request and returns the outcome of its single reply. Later servers are not
tried once one has accepted the connection. ``qmqp_deliver`` (same arguments)
returns a ``QmqpResult(outcome, stop)`` that also says where it stopped
(``QmqpStop``: ANSWERED, NO_SERVERS, CONNECT_TIMEOUT / CONNECT_REFUSED for the
last server tried, BROKEN once connected), so the null client can exit with
qmail-qmqpc's codes (72 timeout, 73 refused, 74 communication failed).

Recipients may be any iterable (consumed once); encoding is linear, so
fan-outs of tens of thousands of recipients cost what their bytes cost.
Replies are read while the request is still being written, so a peer that
answers early cannot deadlock us.

Failures never raise: a connection that cannot be made, breaks, times out
(``timeout`` per read or write) or carries a malformed reply makes every
recipient not yet answered a ``TempFail`` (qmail: connection trouble is
temporary).
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import Iterable, Sequence

from mta.interfaces import Outcome, TempFail
from mta.netstring import NetstringDecoder, NetstringError
from mta.qmqp import encode_request, parse_reply
from mta.qmtp import ReplyDecoder, encode_package

Message = tuple[str, Iterable[str], bytes]
_READ_SIZE = 65536


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def _connect(host: str, port: int, connect_timeout: float):
    return await asyncio.wait_for(asyncio.open_connection(host, port), connect_timeout)


async def _write_all(writer: asyncio.StreamWriter, buffers: list[bytes], timeout: float) -> None:
    writer.writelines(buffers)
    await asyncio.wait_for(writer.drain(), timeout)


async def _read_qmtp_replies(reader: asyncio.StreamReader, expected: int, timeout: float,
                             outcomes: list[Outcome]) -> str | None:
    """Append outcomes until ``expected`` arrived; return why it stopped short."""
    decoder = ReplyDecoder()
    while len(outcomes) < expected:
        try:
            chunk = await asyncio.wait_for(reader.read(_READ_SIZE), timeout)
        except asyncio.TimeoutError:
            return "timed out waiting for QMTP replies"
        except OSError as exc:
            return f"connection broken while reading QMTP replies: {exc}"
        if not chunk:
            return "connection closed before every recipient was answered"
        try:
            outcomes.extend(decoder.feed(chunk))
        except NetstringError as exc:
            return f"protocol violation in QMTP replies: {exc.reason}"
    return None


async def qmtp_send(host: str, port: int, messages: Iterable[Message], *,
                    timeout: float = 1200.0, connect_timeout: float = 60.0) -> list[list[Outcome]]:
    """Deliver ``messages`` over one QMTP connection; see the module docstring."""
    counts: list[int] = []
    buffers: list[bytes] = []
    for sender, recipients, data in messages:
        rcpts = list(recipients)
        counts.append(len(rcpts))
        buffers.extend(encode_package(sender, rcpts, data))
    if not counts:
        return []
    outcomes: list[Outcome] = []
    try:
        reader, writer = await _connect(host, port, connect_timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        return _split(outcomes, counts, f"cannot connect to {host}:{port}: {_why(exc)}")
    reading = asyncio.create_task(_read_qmtp_replies(reader, sum(counts), timeout, outcomes))
    write_problem = None
    try:
        await _write_all(writer, buffers, timeout)
    except (OSError, asyncio.TimeoutError) as exc:  # replies that came still count
        write_problem = f"connection broken while sending to {host}:{port}: {_why(exc)}"
    try:
        problem = await reading
    finally:
        writer.close()
    return _split(outcomes, counts, problem and (write_problem or problem))


def _split(outcomes: list[Outcome], counts: list[int], problem: str | None) -> list[list[Outcome]]:
    """Group the flat outcomes per message; the unanswered rest fail temporarily."""
    filler = TempFail(problem or "no reply", "4.4.2")
    result, at = [], 0
    for count in counts:
        part = outcomes[at : at + count]
        result.append(part + [filler] * (count - len(part)))
        at += count
    return result


class QmqpStop(enum.Enum):
    """Where a QMQP handover ended."""

    ANSWERED = "answered"  # a server replied K, Z or D
    NO_SERVERS = "no servers"
    CONNECT_TIMEOUT = "connect timeout"  # the last server tried did not answer in time
    CONNECT_REFUSED = "connect refused"  # ... refused the connection (or another OSError)
    BROKEN = "broken"  # connected, then a timeout, a break or a malformed reply


@dataclass(frozen=True, slots=True)
class QmqpResult:
    outcome: Outcome
    stop: QmqpStop


async def _read_qmqp_reply(reader: asyncio.StreamReader, timeout: float) -> QmqpResult:
    decoder = NetstringDecoder(4096)
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(_READ_SIZE), timeout)
            replies = decoder.feed(chunk) if chunk else []
        except asyncio.TimeoutError:
            return _broken("timed out waiting for the QMQP reply", "4.4.2")
        except OSError as exc:
            return _broken(f"connection broken while reading the QMQP reply: {exc}", "4.4.2")
        except NetstringError as exc:
            return _broken(f"protocol violation in the QMQP reply: {exc.reason}", "4.5.0")
        if replies:
            answered = replies[0][:1] in (b"K", b"Z", b"D")
            return QmqpResult(parse_reply(replies[0]),
                              QmqpStop.ANSWERED if answered else QmqpStop.BROKEN)
        if not chunk:
            return _broken("connection closed before the QMQP reply", "4.4.2")


def _broken(reason: str, dsn: str) -> QmqpResult:
    return QmqpResult(TempFail(reason, dsn), QmqpStop.BROKEN)


async def qmqp_send(servers: Sequence[tuple[str, int]], sender: str, recipients: Iterable[str],
                    data: bytes, *, timeout: float = 60.0, connect_timeout: float = 10.0) -> Outcome:
    """Deliver one message through the first QMQP server that accepts a connection."""
    result = await qmqp_deliver(servers, sender, recipients, data, timeout=timeout,
                                connect_timeout=connect_timeout)
    return result.outcome


async def qmqp_deliver(servers: Sequence[tuple[str, int]], sender: str, recipients: Iterable[str],
                       data: bytes, *, timeout: float = 60.0,
                       connect_timeout: float = 10.0) -> QmqpResult:
    """``qmqp_send``, also saying where it stopped (see QmqpStop)."""
    request = encode_request(sender, recipients, data)
    result = QmqpResult(TempFail("no QMQP servers configured", "4.4.1"), QmqpStop.NO_SERVERS)
    for host, port in servers:
        try:
            reader, writer = await _connect(host, port, connect_timeout)
        except asyncio.TimeoutError:
            result = QmqpResult(TempFail(f"cannot connect to QMQP server {host}:{port}: timed out",
                                         "4.4.1"), QmqpStop.CONNECT_TIMEOUT)
            continue
        except OSError as exc:
            result = QmqpResult(TempFail(f"cannot connect to QMQP server {host}:{port}: "
                                         f"{_why(exc)}", "4.4.1"), QmqpStop.CONNECT_REFUSED)
            continue
        reading = asyncio.create_task(_read_qmqp_reply(reader, timeout))
        write_problem = None
        try:
            await _write_all(writer, request, timeout)
        except (OSError, asyncio.TimeoutError) as exc:  # an early reply still counts
            write_problem = f"connection broken while sending to {host}:{port}: {_why(exc)}"
        try:
            result = await reading
        finally:
            writer.close()
        if write_problem and result.stop is QmqpStop.BROKEN:
            return _broken(write_problem, "4.4.2")
        return result
    return result
