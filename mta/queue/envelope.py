"""Streaming reader for qmail-queue's envelope: ``Fsender\\0Trcpt\\0...Trcpt\\0\\0``.

``read_envelope(read)`` takes a ``read(n) -> bytes`` callable (``os.read`` on fd 1
in the shim), reads the sender record at once and returns it with an iterator over
the recipients. The iterator reads the input in chunks and yields one address at a
time, so a million-recipient envelope never sits in memory; it stops at the empty
record that ends the list (anything after it is ignored, as qmail-queue does).

Addresses are decoded as UTF-8 and returned exactly as given (no rewriting).

Public:
    read_envelope(read, chunk=CHUNK) -> (sender: str, recipients: Iterator[str])

Failures (raised by ``read_envelope`` for the sender, by the iterator afterwards),
matching qmail-queue.c:
    ReadError (54)            read() failed, or EOF before the final NUL
    EnvelopeFormatError (91)  a record not starting with F (first) or T (after);
                              also (our additions) an empty T record and an address
                              that is not valid UTF-8
    AddressTooLong (11)       an address longer than ADDRESS_LIMIT (1002) bytes
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from mta.queue.errors import ADDRESS_LIMIT, AddressTooLong, EnvelopeFormatError, ReadError

__all__ = ["read_envelope", "CHUNK"]

CHUNK = 1 << 18
_MAX_RECORD = ADDRESS_LIMIT + 1  # type byte + address


def read_envelope(read: Callable[[int], bytes], chunk: int = CHUNK) -> tuple[str, Iterator[str]]:
    """Read the sender record; return it and a lazy iterator over the recipients."""
    records = _records(read, chunk)
    first = next(records)
    if first[:1] != b"F":
        raise EnvelopeFormatError("envelope does not start with an F record")
    _check_length(first)
    return _decode(first[1:]), _recipients(records)


def _recipients(records: Iterator[bytes]) -> Iterator[str]:
    for rec in records:
        if not rec:
            return
        if rec[0] != 84:  # b"T"
            raise EnvelopeFormatError(f"envelope record starts with {rec[:1]!r}, not T")
        if len(rec) > _MAX_RECORD:
            raise AddressTooLong(f"recipient longer than {ADDRESS_LIMIT} bytes")
        if len(rec) == 1:
            raise EnvelopeFormatError("empty recipient record")
        try:
            yield rec[1:].decode()
        except UnicodeDecodeError as exc:
            raise EnvelopeFormatError(f"recipient is not UTF-8: {rec[1:80]!r}") from exc


def _records(read: Callable[[int], bytes], chunk: int) -> Iterator[bytes]:
    """Yield NUL-terminated records (without the NUL); bounded memory per record."""
    tail = b""
    while True:
        try:
            data = read(chunk)
        except OSError as exc:
            raise ReadError(f"cannot read the envelope: {exc}") from exc
        if not data:
            raise ReadError("envelope ended before its final NUL")
        parts = (tail + data).split(b"\0") if tail else data.split(b"\0")
        tail = parts.pop()
        yield from parts  # the consumer stops at the end marker: no check after it
        if len(tail) > _MAX_RECORD:
            if tail[:1] not in (b"F", b"T"):
                raise EnvelopeFormatError(f"envelope record starts with {tail[:1]!r}")
            raise AddressTooLong(f"address longer than {ADDRESS_LIMIT} bytes")


def _check_length(rec: bytes) -> None:
    if len(rec) > _MAX_RECORD:
        raise AddressTooLong(f"sender longer than {ADDRESS_LIMIT} bytes")


def _decode(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise EnvelopeFormatError(f"sender is not UTF-8: {raw[:80]!r}") from exc
