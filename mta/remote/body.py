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

``prepare_message(raw)`` is what remote delivery calls: ``prepare_body`` for an
ordinary message; for one with the private ``X-Mta-Rcpt-Token`` field
(``mta.rcpt_token``: one-click unsubscribe URLs in a shared list post) it returns a
``TokenBody``: the field removed, the prepared bytes split at each placeholder of
the header (``split_token``), once per message. ``TokenBody.for_recipients(rcpts)``
gives the buffers of one transaction (segments joined by that transaction's fill,
a few bytes), so the body is still never copied per recipient.

How it fails: it does not; any bytes are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator, Sequence

from mta.rcpt_token import extract, fill_for
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


@dataclass(frozen=True, slots=True)
class TokenBody:
    """A prepared body whose header gets a per-recipient fill between ``segments``."""

    key: bytes
    segments: tuple[bytes, ...]

    def for_recipients(self, recipients: Sequence[str]) -> list[bytes]:
        """The buffers one transaction to ``recipients`` writes after ``354``."""
        fill = fill_for(self.key, recipients)
        segs = self.segments
        out = [segs[0]]
        for seg in segs[1:]:
            out.append(fill)
            out.append(seg)
        return out


def split_token(raw: bytes) -> tuple[bytes, list[bytes]] | None:
    """(key, prepared segments) for a message with the private field, else None.

    The field is removed; the segments are ``prepare_body`` of the rest, cut at each
    placeholder occurrence in the header (one segment when there is none).
    """
    token, raw = extract(raw)
    if token is None:
        return None
    return token.key, _split(token.placeholder, prepare_body(raw))


def _split(placeholder: bytes, prepared: bytes) -> list[bytes]:
    if prepared.startswith(b"\r\n"):
        hend = 0
    else:
        hend = prepared.find(b"\r\n\r\n")
        hend = len(prepared) if hend < 0 else hend + 2
    parts = prepared[:hend].split(placeholder)
    if len(parts) == 1:
        return [prepared]
    parts[-1] += prepared[hend:]  # one copy of the body, once per message
    return parts


def prepare_message(raw: bytes) -> bytes | TokenBody:
    """``prepare_body(raw)``, or a ``TokenBody`` when ``raw`` has the private field.

    Any private field is removed, a malformed one too (then nothing is filled).
    """
    token, raw = extract(raw)
    if token is None:
        return prepare_body(raw)
    segments = _split(token.placeholder, prepare_body(raw))
    return segments[0] if len(segments) == 1 else TokenBody(token.key, tuple(segments))


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
