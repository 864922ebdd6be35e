"""Incremental DATA decoding for the SMTP server core (RFC 5321 4.5.2, qmail blast()).

What it does: ``DataReader.consume(buf)`` takes from the connection buffer what
can be decided, converts CRLF to LF, removes the transparency dot (RFC 5321
4.5.2) and stops at the first CRLF.CRLF, which is the only end of DATA. It reports
a bare LF (a LF not preceded by CR) at once, so the server can refuse it as
qmail-smtpd does; a lone CR is kept as data. A line longer than ``PARTIAL_LINE``
is moved out of the buffer in pieces (its last byte stays, since it may be the CR
of a CRLF), so buffer memory stays bounded however long the line. The decoded
message is kept up to ``limit`` bytes (LF line ends, as stored; qmail databytes);
past that ``too_big`` is set and the rest is only scanned for the end.

Invariant: the buffer always starts at a line start when ``_bol`` is true, and a
CR and the LF after it are never split between two pieces.

Public (to ``mta.smtp.server``): ``DataReader``, ``Progress``, ``count_hops``,
``MAX_HOPS``, ``PARTIAL_LINE``.

How it fails: it raises nothing; ``Progress.BARE_LF`` tells the caller to refuse.
"""

from __future__ import annotations

import enum
import re

PARTIAL_LINE = 65536
MAX_HOPS = 100  # qmail-smtpd.c MAXHOPS: this many Received/Delivered-To lines is a loop
_HOP_LINE = re.compile(rb"^(?:received|delivered-to):", re.I | re.M)


class Progress(enum.Enum):
    NEED_MORE = "need more"
    PROGRESS = "progress"
    DONE = "done"
    BARE_LF = "bare lf"


class DataReader:
    """Decoder for one DATA section; a new one per transaction."""

    def __init__(self, limit: int):
        self.limit = limit
        self.too_big = False
        self._parts: list[bytes] = []
        self._size = 0
        self._bol = True
        self._scanned = 0  # buf[:_scanned] holds no LF (nor end marker) once NEED_MORE

    def message(self) -> bytes:
        return b"".join(self._parts)

    def consume(self, buf: bytearray) -> Progress:
        """Take what can be decided from the front of ``buf``."""
        bol, start = self._bol, self._scanned
        end = 0 if bol and buf.startswith(b".\r\n") else -1
        if end < 0:
            i = buf.find(b"\r\n.\r\n", start)
            end = i + 2 if i >= 0 else -1
        self._scanned = 0
        if end >= 0:
            content = bytes(buf[:end])
            del buf[: end + 3]
            return self._absorb(content, bol) or Progress.DONE
        j = buf.rfind(b"\n", start)
        if j >= 0:
            content, self._bol = bytes(buf[: j + 1]), True
            del buf[: j + 1]
        elif len(buf) > PARTIAL_LINE:
            content, self._bol = bytes(buf[:-1]), False
            del buf[:-1]
        else:
            # Nothing decidable: the next call need not rescan all but the tail, where
            # an end marker could start (a slow client must not cost 64 KiB per byte).
            self._scanned = max(0, len(buf) - 4)
            return Progress.NEED_MORE
        return self._absorb(content, bol) or Progress.PROGRESS

    def _absorb(self, content: bytes, bol: bool) -> Progress | None:
        if content.count(b"\n") != content.count(b"\r\n"):
            return Progress.BARE_LF
        if self.too_big:
            return None
        data = content.replace(b"\r\n.", b"\r\n")
        if bol and data.startswith(b"."):
            data = data[1:]
        data = data.replace(b"\r\n", b"\n")
        self._size += len(data)
        if self._size > self.limit:
            self.too_big = True
            self._parts.clear()
        else:
            self._parts.append(data)
        return None


def count_hops(message: bytes) -> int:
    """Received: and Delivered-To: lines in the header (qmail counts the header only)."""
    if message.startswith(b"\n"):
        return 0
    blank = message.find(b"\n\n")
    header = message if blank < 0 else message[: blank + 1]
    return len(_HOP_LINE.findall(header))
