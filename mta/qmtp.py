"""QMTP (cr.yp.to/proto/qmtp.txt) sans-I/O cores, server and client side.

A QMTP client sends packages, back to back on one connection. A package is
three netstrings: the message (first byte LF, then the message with LF line
ends; a first byte CR announces CRLF line ends, which the server turns into
LF, as qmail-qmtpd does), the envelope sender, and one netstring holding
the recipients' netstrings. After the final byte of a package the server sends
one reply netstring per recipient, in order: ``K`` (accepted), ``Z``
(temporary failure) or ``D`` (permanent failure), then human-readable text.

Server core: ``QmtpServer(rcpt_allowed, ...)``; ``receive_data(bytes)`` and
``receive_eof()`` return events:
  ``MessageReceived(sender, recipients, data, refusals)``: submit it, then write
  ``qmtp_replies(event, outcome)``;
  ``MessageRefused(reason, reply)``: nothing to submit; write ``reply``;
  ``ProtocolError(reason)``: close the connection (qmail-qmtpd exits 100).
Per-recipient refusals use qmail-qmtpd's texts: over-long (>= 1000 bytes) or
NUL-bearing recipients ``Dsorry, I can't handle that recipient (#5.1.3)``;
recipients ``rcpt_allowed`` refuses ``Dsorry, that domain isn't in my list of
allowed rcpthosts (#5.7.1)``; a bad sender ``Dunacceptable sender (#5.1.7)``;
more than ``max_message`` bytes ``Dsorry, that message size exceeds my
databytes limit (#5.3.4)`` (the body is skipped, never buffered). An empty
recipient list, an empty message netstring or a bad first byte is a protocol
error. Addresses must be UTF-8; other bytes count as a bad address.

Client core: ``encode_package(sender, recipients, data) -> list[bytes]`` for
``writelines`` and ``ReplyDecoder`` turning reply netstrings into outcomes.

Shared with mta.qmqp: the events, ``SubmitError``, ``reply_payload(outcome)``,
``outcome_from_reply(payload)`` and ``received_line(...)``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Generator, Iterable

from mta.interfaces import Delivered, Outcome, PermFail, TempFail
from mta.netstring import ByteReader, NetstringDecoder, NetstringError, encode_netstring, netstring_header

QMTP_PORT = 209
MAX_ADDRESS = 999  # qmail: an address of 1000 bytes or more is refused
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
DEFAULT_MAX_ENVELOPE = 64 * 1024 * 1024
DEFAULT_MAX_RECIPIENTS = 1_000_000
_SKIP_LIMIT = 1 << 30  # over this, a length is a protocol error, not a skip

D_BAD_RECIPIENT = b"Dsorry, I can't handle that recipient (#5.1.3)"
D_RCPTHOSTS = b"Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"
D_BAD_SENDER = b"Dunacceptable sender (#5.1.7)"
D_DATABYTES = b"Dsorry, that message size exceeds my databytes limit (#5.3.4)"

_DSN = re.compile(rb"\(#([245]\.\d{1,3}\.\d{1,3})\)")


class SubmitError(Exception):
    """Raised by a server's ``submit`` callable: the message was not queued."""

    def __init__(self, temporary: bool, text: str) -> None:
        super().__init__(text)
        self.temporary = temporary
        self.text = text


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A complete message to submit. ``refusals`` pairs the index (in the
    client's recipient order) of each recipient refused by the core with its
    reply; ``recipients`` are the others, in order."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    refusals: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class MessageRefused:
    """A complete package that must not be submitted; ``reply`` is the wire answer."""

    reason: str
    reply: bytes


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The peer broke the framing; the connection must be closed. Nothing to submit."""

    reason: str


Event = MessageReceived | MessageRefused | ProtocolError


def reply_payload(outcome: Outcome) -> bytes:
    """K/Z/D + text for ``outcome``."""
    if isinstance(outcome, Delivered):
        return b"K" + outcome.text.encode("utf-8", "replace")
    code = b"Z" if isinstance(outcome, TempFail) else b"D"
    return code + outcome.reason.encode("utf-8", "replace")


def outcome_from_reply(payload: bytes) -> Outcome:
    """Classify one reply netstring's payload: K -> Delivered, Z -> TempFail,
    D -> PermFail; anything else is a peer protocol error, hence TempFail."""
    text = payload[1:].decode("utf-8", "replace")
    found = _DSN.search(payload)
    if payload[:1] == b"K":
        return Delivered(text)
    if payload[:1] == b"Z":
        return TempFail(text, found.group(1).decode() if found else "4.0.0")
    if payload[:1] == b"D":
        return PermFail(text, found.group(1).decode() if found else "5.0.0")
    return TempFail(f"protocol violation: bad reply {payload[:40]!r}", "4.5.0")


def outcome_from_submit_error(exc: SubmitError) -> Outcome:
    return TempFail(exc.text, "4.3.0") if exc.temporary else PermFail(exc.text, "5.3.0")


def received_line(protocol: str, peer_ip: str, local_host: str, when: float) -> bytes:
    """qmail's trace line for a network injection (received.c), LF-terminated."""
    date = time.strftime("%d %b %Y %H:%M:%S -0000", time.gmtime(when)).lstrip("0")
    return (
        f"Received: from unknown ([{peer_ip}])\n  by {local_host} with {protocol}; {date}\n"
    ).encode("ascii", "replace")


def decode_address(raw: bytes) -> str | None:
    """The address, or None when qmail would refuse it (NUL, too long, not UTF-8)."""
    if len(raw) > MAX_ADDRESS or b"\0" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def qmtp_replies(event: MessageReceived, outcome: Outcome) -> bytes:
    """The reply netstrings for a submitted package: ``outcome`` for each
    recipient the core did not refuse, the core's refusal for the others."""
    return _build_replies(
        len(event.recipients) + len(event.refusals), dict(event.refusals), reply_payload(outcome)
    )


def _build_replies(count: int, refusals: dict[int, bytes], result: bytes) -> bytes:
    parts = [encode_netstring(result)] * count
    for index, payload in refusals.items():
        parts[index] = encode_netstring(payload)
    return b"".join(parts)


class QmtpServer:
    """Server side of one QMTP connection (several packages).

    ``rcpt_allowed(address) -> bool`` is the relay policy (rcpthosts, bound to
    the peer by the caller); it must not block.
    """

    def __init__(
        self,
        rcpt_allowed: Callable[[str], bool],
        *,
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_envelope: int = DEFAULT_MAX_ENVELOPE,
        max_recipients: int = DEFAULT_MAX_RECIPIENTS,
    ) -> None:
        self._rcpt_allowed = rcpt_allowed
        self._max_message = max_message
        self._max_envelope = max_envelope
        self._max_recipients = max_recipients
        self._reader = ByteReader()
        self._events: list[Event] = []
        self._in_package = False
        self._dead = False
        self._parser = self._packages()
        next(self._parser)

    def receive_data(self, data: bytes) -> list[Event]:
        if self._dead:
            return []
        self._reader.feed(data)
        return self._run()

    def receive_eof(self) -> list[Event]:
        """End of input. Clean between packages; a protocol error inside one."""
        if self._dead:
            return []
        if not self._in_package and self._reader.at_rest():
            self._dead = True
            return []
        self._reader.eof = True
        return self._run()

    def _run(self) -> list[Event]:
        try:
            self._parser.send(None)
        except NetstringError as exc:
            self._dead = True
            self._events.append(ProtocolError(exc.reason))
        events, self._events = self._events, []
        return events

    def _packages(self) -> Generator[None, None, None]:
        yield  # primed by __init__
        while True:
            while self._reader.at_rest():
                yield
            self._in_package = True
            data = yield from self._read_message()
            sender = yield from self._read_sender()
            recipients, refusals = yield from self._read_recipients()
            self._in_package = False
            self._events.append(self._decide(data, sender, recipients, refusals))

    def _read_message(self) -> Generator[None, None, bytes | None]:
        r = self._reader
        length, _ = yield from r.read_length(_SKIP_LIMIT)
        if length == 0:
            raise NetstringError("empty message netstring (QMTP needs the LF/CR byte)")
        mode = yield from r.read_exact(1)
        if mode not in (b"\n", b"\r"):
            raise NetstringError("QMTP message must start with LF or CR")
        length -= 1
        data: bytes | None = None
        if length > self._max_message:
            yield from r.skip(length)
        else:
            data = yield from r.read_exact(length)
            if mode == b"\r":
                data = data.replace(b"\r\n", b"\n")
        yield from r.read_comma()
        return data

    def _read_sender(self) -> Generator[None, None, str | None]:
        r = self._reader
        length, _ = yield from r.read_length(self._max_envelope)
        if length > MAX_ADDRESS:
            yield from r.skip(length)
            yield from r.read_comma()
            return None
        raw = yield from r.read_exact(length)
        yield from r.read_comma()
        return decode_address(raw)

    def _read_recipients(self) -> Generator[None, None, tuple[list[str], dict[int, bytes]]]:
        r = self._reader
        left, _ = yield from r.read_length(self._max_envelope)
        if left == 0:
            raise NetstringError("empty recipient list")
        recipients: list[str] = []
        refusals: dict[int, bytes] = {}
        index = 0
        while left:
            if index >= self._max_recipients:
                raise NetstringError(f"more than {self._max_recipients} recipients")
            length, used = yield from r.read_length(left)
            left -= used
            if length >= left:  # the body and its comma must fit in the list
                raise NetstringError("recipient netstring overruns the recipient list")
            left -= length + 1
            if length > MAX_ADDRESS:
                yield from r.skip(length)
                address = None
            else:
                address = decode_address((yield from r.read_exact(length)))
            yield from r.read_comma()
            if address is None:
                refusals[index] = D_BAD_RECIPIENT
            elif not self._rcpt_allowed(address):
                refusals[index] = D_RCPTHOSTS
            else:
                recipients.append(address)
            index += 1
        yield from r.read_comma()
        return recipients, refusals

    def _decide(
        self, data: bytes | None, sender: str | None, recipients: list[str], refusals: dict[int, bytes]
    ) -> Event:
        count = len(recipients) + len(refusals)
        if data is None:
            reason, result = "message too large", D_DATABYTES
        elif sender is None:
            reason, result = "unacceptable sender", D_BAD_SENDER
        elif not recipients:
            reason, result = "no acceptable recipient", b""
        else:
            return MessageReceived(sender, tuple(recipients), data, tuple(refusals.items()))
        return MessageRefused(reason, _build_replies(count, refusals, result))


def encode_package(sender: str, recipients: Iterable[str], data: bytes) -> list[bytes]:
    """One QMTP package as buffers for ``writelines``. ``data`` must use LF line
    ends (the queue's format); ``recipients`` is consumed once, in linear time."""
    rcpts = [encode_netstring(address.encode("utf-8")) for address in recipients]
    if not rcpts:
        raise ValueError("a QMTP package needs at least one recipient")
    total = sum(map(len, rcpts))
    return [
        netstring_header(len(data) + 1),
        b"\n",
        data,
        b"," + encode_netstring(sender.encode("utf-8")) + netstring_header(total),
        b"".join(rcpts),
        b",",
    ]


class ReplyDecoder:
    """Client side: turns the server's reply netstrings into outcomes.

    ``feed(data) -> list[Outcome]`` (one per completed reply); a malformed
    stream raises NetstringError, after which the caller should treat every
    unanswered recipient as a temporary failure.
    """

    def __init__(self, limit: int = 4096) -> None:
        self._decoder = NetstringDecoder(limit)

    def feed(self, data: bytes) -> list[Outcome]:
        return [outcome_from_reply(p) for p in self._decoder.feed(data)]
