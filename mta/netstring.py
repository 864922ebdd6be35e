"""Netstrings (cr.yp.to/proto/netstrings.txt): encoder and bounded incremental decoders.

A netstring is ``LEN:DATA,``: LEN in decimal ASCII (no sign, no leading zeros
except the single digit ``0``), a colon, exactly LEN bytes, a comma. QMTP and
QMQP frame everything with them.

Public names:

- ``encode_netstring(data) -> bytes``; ``netstring_header(length) -> bytes``
  (for writing a large body with ``writelines`` without copying it).
- ``parse_length(buf, pos, limit)``: parse one ``LEN:`` header at ``buf[pos:]``;
  ``None`` when more bytes are needed.
- ``NetstringDecoder(limit)``: ``feed(data) -> list[bytes]`` of complete
  payloads; ``close()`` at end of stream.
- ``ByteReader``: the buffer under the QMTP/QMQP server cores; its methods are
  generators (``yield`` = "feed me more") for nested netstrings.

Failures: every malformed input raises ``NetstringError`` (a ``ValueError``)
whose ``reason`` says what was wrong: empty length, non-digit in the length,
leading zero, length beyond the configured limit, missing comma, or a stream
truncated at EOF. Nothing is buffered beyond ``limit`` (+ the comma): an
oversized length is refused from its header, before its body is read.
"""

from __future__ import annotations

from typing import Generator

_COMMA = 0x2C


class NetstringError(ValueError):
    """Malformed or over-limit netstring; ``reason`` is a short explanation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def netstring_header(length: int) -> bytes:
    """``LEN:`` for a body of ``length`` bytes."""
    return b"%d:" % length


def encode_netstring(data: bytes) -> bytes:
    """``LEN:DATA,``."""
    return b"%d:%b," % (len(data), data)


def _check_digits(digits: bytes | bytearray) -> None:
    if not digits.isdigit():
        raise NetstringError("non-digit in netstring length")
    if len(digits) > 1 and digits[0] == 0x30:
        raise NetstringError("leading zero in netstring length")


def parse_length(buf: bytes | bytearray, pos: int, limit: int) -> tuple[int, int] | None:
    """Parse the ``LEN:`` header starting at ``buf[pos]``.

    Returns ``(length, end)`` where ``end`` indexes the first body byte, or
    ``None`` when the header is incomplete but so far valid.
    Raises NetstringError as soon as the bytes seen cannot start a valid
    header whose length is at most ``limit``.
    """
    max_digits = len(str(limit))
    end = buf.find(b":", pos, pos + max_digits + 1)
    if end < 0:
        head = buf[pos : pos + max_digits + 1]
        if head:
            _check_digits(head)
        if len(head) > max_digits:
            raise NetstringError(f"netstring length beyond the limit of {limit} bytes")
        return None
    digits = buf[pos:end]
    if not digits:
        raise NetstringError("empty netstring length")
    _check_digits(digits)
    length = int(digits)
    if length > limit:
        raise NetstringError(f"netstring length {length} beyond the limit of {limit} bytes")
    return length, end + 1


class NetstringDecoder:
    """Incremental decoder for a stream of netstrings, each at most ``limit`` bytes.

    After an error the decoder is dead: every further call raises the same error.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._want: int | None = None
        self._error: NetstringError | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the payloads completed by it, in order."""
        if self._error:
            raise self._error
        self._buf += data
        try:
            return self._drain()
        except NetstringError as exc:
            self._error = exc
            raise

    def _drain(self) -> list[bytes]:
        buf, pos, out = self._buf, 0, []
        while True:
            if self._want is None:
                parsed = parse_length(buf, pos, self.limit)
                if parsed is None:
                    break
                self._want, pos = parsed
            if len(buf) - pos <= self._want:
                break
            if buf[pos + self._want] != _COMMA:
                raise NetstringError("missing comma after netstring body")
            out.append(bytes(buf[pos : pos + self._want]))
            pos += self._want + 1
            self._want = None
        del buf[:pos]
        return out

    @property
    def pending(self) -> bool:
        """True while a netstring has been started but not finished."""
        return bool(self._buf) or self._want is not None

    def close(self) -> None:
        """Declare end of stream; raises NetstringError if a netstring was cut short."""
        if self._error:
            raise self._error
        if self.pending:
            self._error = NetstringError("stream truncated inside a netstring")
            raise self._error


class ByteReader:
    """A byte buffer read by generator-based parsers.

    Each ``read_*`` method is a generator used with ``yield from``; it yields
    (asking the driver to ``feed`` more bytes) until it can return. The buffer
    holds only bytes not yet consumed; a body is buffered only up to the
    length its (already checked) header declared.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pos = 0
        self.eof = False

    def feed(self, data: bytes) -> None:
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += data

    def _wait(self) -> Generator[None, None, None]:
        if self.eof:
            raise NetstringError("stream truncated inside a netstring")
        yield

    def read_length(self, limit: int) -> Generator[None, None, tuple[int, int]]:
        """``LEN:`` -> (length, bytes the header took)."""
        while True:
            parsed = parse_length(self.buf, self.pos, limit)
            if parsed is not None:
                length, end = parsed
                used, self.pos = end - self.pos, end
                return length, used
            yield from self._wait()

    def read_exact(self, n: int) -> Generator[None, None, bytes]:
        while len(self.buf) - self.pos < n:
            yield from self._wait()
        data = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return data

    def skip(self, n: int) -> Generator[None, None, None]:
        """Consume ``n`` bytes without keeping them."""
        while True:
            take = min(n, len(self.buf) - self.pos)
            self.pos += take
            n -= take
            if not n:
                return
            del self.buf[: self.pos]
            self.pos = 0
            yield from self._wait()

    def read_comma(self) -> Generator[None, None, None]:
        while len(self.buf) - self.pos < 1:
            yield from self._wait()
        if self.buf[self.pos] != _COMMA:
            raise NetstringError("missing comma after netstring body")
        self.pos += 1

    def at_rest(self) -> bool:
        """True when no unconsumed byte is buffered."""
        return self.pos >= len(self.buf)
