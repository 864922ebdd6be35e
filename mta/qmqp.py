"""QMQP (qmail-qmqpd(8), qmail-qmqpc(8)) sans-I/O cores, server and client side.

A QMQP client sends exactly one netstring holding the message netstring, the
sender netstring and one netstring per recipient, then reads one reply
netstring (``K``/``Z``/``D`` + text); the server then closes the connection.
Unlike QMTP the message bytes pass unchanged (the queue stores them as given).

Server core: ``QmqpServer(max_request=...)``; ``receive_data(bytes)`` and
``receive_eof()`` return events from mta.qmtp: ``MessageReceived(sender,
recipients, data)`` (submit it, write ``qmqp_reply(outcome)``),
``MessageRefused(reason, reply)`` (nothing to submit; write ``reply``) or
``ProtocolError(reason)`` (close without replying). A sender or recipient
holding NUL, of 1000 bytes or more, or not UTF-8, and an empty recipient list,
refuse the message with qmail-qmqpd's ``Dsorry, I can't accept addresses like
that (#5.1.3)``; over-long addresses are skipped, never buffered. An inner
netstring running past the end of the outer one, an outer length beyond
``max_request`` and anything malformed are protocol errors. Bytes after the
request are ignored (the server closes after its reply).

Client core: ``encode_request(sender, recipients, data) -> list[bytes]`` and
``parse_reply(payload) -> Outcome`` (``outcome_from_reply`` of mta.qmtp).
"""

from __future__ import annotations

from typing import Generator, Iterable

from mta.interfaces import Outcome
from mta.netstring import ByteReader, NetstringError, encode_netstring, netstring_header
from mta.qmtp import (
    MAX_ADDRESS,
    Event,
    MessageReceived,
    MessageRefused,
    ProtocolError,
    decode_address,
    outcome_from_reply,
    reply_payload,
)

QMQP_PORT = 628
DEFAULT_MAX_REQUEST = 128 * 1024 * 1024
D_BAD_ADDRESS = b"Dsorry, I can't accept addresses like that (#5.1.3)"


def qmqp_reply(outcome: Outcome) -> bytes:
    """The reply netstring for ``outcome``."""
    return encode_netstring(reply_payload(outcome))


parse_reply = outcome_from_reply


class QmqpServer:
    """Server side of one QMQP connection (one request)."""

    def __init__(self, *, max_request: int = DEFAULT_MAX_REQUEST) -> None:
        self._max_request = max_request
        self._reader = ByteReader()
        self._events: list[Event] = []
        self._done = False
        self._parser = self._request()
        next(self._parser)

    def receive_data(self, data: bytes) -> list[Event]:
        if self._done:
            return []
        self._reader.feed(data)
        return self._run()

    def receive_eof(self) -> list[Event]:
        """End of input before the request was complete is a protocol error."""
        if self._done:
            return []
        self._reader.eof = True
        return self._run()

    def _run(self) -> list[Event]:
        try:
            self._parser.send(None)
        except StopIteration:
            self._done = True
        except NetstringError as exc:
            self._done = True
            self._events.append(ProtocolError(exc.reason))
        events, self._events = self._events, []
        return events

    def _item(self, left: int) -> Generator[None, None, tuple[int, int]]:
        """Header of one inner netstring -> (length, outer bytes left after it)."""
        length, used = yield from self._reader.read_length(left)
        left -= used
        if length >= left:  # its body and comma must fit in the outer netstring
            raise NetstringError("inner netstring runs past the end of the request")
        return length, left - length - 1

    def _address(self, left: int) -> Generator[None, None, tuple[str | None, int]]:
        r = self._reader
        length, left = yield from self._item(left)
        if length > MAX_ADDRESS:
            yield from r.skip(length)
            address = None
        else:
            address = decode_address((yield from r.read_exact(length)))
        yield from r.read_comma()
        return address, left

    def _request(self) -> Generator[None, None, None]:
        yield  # primed by __init__
        r = self._reader
        while r.at_rest():
            if r.eof:
                raise NetstringError("connection closed before a request")
            yield
        left, _ = yield from r.read_length(self._max_request)
        length, left = yield from self._item(left)
        data = yield from r.read_exact(length)
        yield from r.read_comma()
        sender, left = yield from self._address(left)
        recipients: list[str] = []
        ok = sender is not None
        while left:
            address, left = yield from self._address(left)
            if address is None:
                ok = False
            elif ok:
                recipients.append(address)
        yield from r.read_comma()
        if ok and recipients:
            self._events.append(MessageReceived(sender, tuple(recipients), data))
        else:
            reason = "bad address" if not ok else "no recipients"
            self._events.append(MessageRefused(reason, encode_netstring(D_BAD_ADDRESS)))


def encode_request(sender: str, recipients: Iterable[str], data: bytes) -> list[bytes]:
    """One QMQP request as buffers for ``writelines``; ``recipients`` is
    consumed once, in linear time; ``data`` is sent as is."""
    tail = b"".join(encode_netstring(a.encode("utf-8")) for a in recipients)
    sender_ns = encode_netstring(sender.encode("utf-8"))
    head = netstring_header(len(data))
    total = len(head) + len(data) + 1 + len(sender_ns) + len(tail)
    return [netstring_header(total), head, data, b"," + sender_ns, tail, b","]
