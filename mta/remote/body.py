"""Prepare a stored message for the SMTP DATA phase, once per message.

What it does: ``prepare_body(raw)`` turns the bytes of a stored message into the
exact bytes a client writes after ``354``: every line ending (LF, CRLF and a lone
CR) becomes CRLF, every line that starts with ``.`` gets a second ``.``
(RFC 5321 4.5.2), the last line is terminated, and ``.\\r\\n`` is appended. A stray
CR or LF in a stored message can therefore never end the data early or smuggle a
command onto the wire (security matrix SM7; DESIGN.md decision 1; Postfix
``cleanup_replace_stray_cr_lf``). The work is a handful of ``bytes.replace`` calls
over the whole buffer, so a multi-megabyte body costs milliseconds, and the result
is written unchanged for every transaction of a fan-out.

``prepare_body_chunks(stream)`` is the streaming variant for bodies too big to hold
twice in memory: it yields prepared pieces whose concatenation equals
``prepare_body(stream.read())``.

``has_8bit(prepared)`` says whether ``BODY=8BITMIME`` applies.

How it fails: it does not; any bytes are accepted.
"""

from __future__ import annotations

from typing import BinaryIO, Iterator

END_OF_DATA = b".\r\n"


def prepare_body(raw: bytes) -> bytes:
    """CRLF-normalize, dot-stuff and terminate ``raw``; the result ends in ``.\\r\\n``."""
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if raw and not raw.endswith(b"\n"):
        raw += b"\n"
    if raw.startswith(b"."):
        raw = b"." + raw
    if b"\n." in raw:
        raw = raw.replace(b"\n.", b"\n..")
    return raw.replace(b"\n", b"\r\n") + END_OF_DATA


def has_8bit(prepared: bytes) -> bool:
    """True when any byte is >= 0x80 (send ``BODY=8BITMIME`` when offered)."""
    return not prepared.isascii()


def prepare_body_chunks(stream: BinaryIO, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Prepare a body read from ``stream`` piece by piece (same bytes as ``prepare_body``).

    Each piece is cut after a line end so that a CR at the end of one read and an
    LF at the start of the next are still seen as one CRLF.
    """
    carry = b""
    while True:
        block = stream.read(chunk_size)
        if not block:
            break
        data = carry + block
        # a trailing CR may be the first half of a CRLF split across reads
        scan_end = len(data) - 1 if data.endswith(b"\r") else len(data)
        cut = max(data.rfind(b"\n", 0, scan_end), data.rfind(b"\r", 0, scan_end))
        if cut < 0:
            carry = data
            continue
        carry = data[cut + 1:]
        yield _normalize_lines(data[: cut + 1])
    if carry:
        yield _normalize_lines(carry + b"\n")
    yield END_OF_DATA


def _normalize_lines(part: bytes) -> bytes:
    """``part`` starts a line and ends with a line end; CRLF-normalize and dot-stuff it."""
    part = part.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if part.startswith(b"."):
        part = b"." + part
    return part.replace(b"\n.", b"\n..").replace(b"\n", b"\r\n")
