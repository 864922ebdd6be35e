"""Incremental parser for SMTP replies as a client receives them (RFC 5321 4.2).

What it does: bytes from the server go in with ``feed(data)``; complete replies
(``Reply(code, lines)``) come out, multi-line ``250-...`` / ``250 ...`` groups joined
into one value. Partial lines stay buffered until the next ``feed``. It is sans-I/O:
no sockets, no clock.

Public names: ``Reply``, ``ReplyParser``, ``ReplyProtocolError``.

How it fails: a line that does not start with three digits followed by ``' '``,
``'-'`` or the line end, a continuation line whose code differs from the first
line's, a line longer than ``MAX_LINE`` or a reply with more than ``MAX_LINES``
lines raises ``ReplyProtocolError`` (the peer's fault; the caller turns it into a
temporary failure for everything in flight). After an error the parser is
poisoned: every later ``feed`` raises again.
"""

from __future__ import annotations

from dataclasses import dataclass

# RFC 5321 4.5.3.1.5 allows 512 octets per reply line; real servers overshoot, so
# be lenient but bounded (a hostile peer must not make us buffer without end).
MAX_LINE = 8192
MAX_LINES = 200


class ReplyProtocolError(Exception):
    """The server sent something that is not an SMTP reply (RemoteProtocolError).

    ``replies`` holds the complete replies that came before the bad line in the
    same ``feed`` call, so the caller can act on them first.
    """

    def __init__(self, message: str, replies: tuple["Reply", ...] = ()):
        super().__init__(message)
        self.replies = replies


@dataclass(frozen=True, slots=True)
class Reply:
    """One complete SMTP reply: the code and the text of each line (without code)."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The reply as the server wrote it, lines joined by ``"\\n"``: ``550 5.1.1 no``."""
        code = self.code
        last = len(self.lines) - 1
        return "\n".join(
            f"{code}{' ' if i == last else '-'}{line}" if line else str(code)
            for i, line in enumerate(self.lines)
        )


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class ReplyParser:
    """Turn a byte stream into ``Reply`` values; one instance per connection."""

    __slots__ = ("_buf", "_code", "_lines", "_error")

    def __init__(self) -> None:
        self._buf = b""
        self._code = 0  # code of a multi-line reply in progress, 0 when none
        self._lines: list[str] = []
        self._error: str | None = None

    def feed(self, data: bytes) -> list[Reply]:
        """Add received bytes; return the replies they completed (maybe none)."""
        if self._error is not None:
            raise ReplyProtocolError(self._error)
        buf = self._buf + data if self._buf else data
        replies: list[Reply] = []
        start = 0
        find = buf.find
        while True:
            end = find(b"\n", start)
            if end < 0:
                break
            line = buf[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            try:
                reply = self._take_line(line)
            except ReplyProtocolError as exc:
                raise ReplyProtocolError(str(exc), tuple(replies)) from None
            if reply is not None:
                replies.append(reply)
        rest = buf[start:]
        if len(rest) > MAX_LINE:
            self._error = "reply line too long"
            raise ReplyProtocolError(self._error, tuple(replies))
        self._buf = rest
        return replies

    def _take_line(self, line: bytes) -> Reply | None:
        if len(line) > MAX_LINE:
            self._fail("reply line too long")
        head = line[:3]
        if len(head) != 3 or not head.isdigit():
            self._fail(f"not an SMTP reply: {_decode(line[:80])!r}")
        code = int(head)
        sep = line[3:4]
        if sep not in (b" ", b"-", b""):
            self._fail(f"not an SMTP reply: {_decode(line[:80])!r}")
        if self._code and code != self._code:
            self._fail(f"reply code changed inside a multi-line reply: {code}")
        self._lines.append(_decode(line[4:]))
        if sep == b"-":
            if len(self._lines) >= MAX_LINES:
                self._fail("multi-line reply too long")
            self._code = code
            return None
        reply = Reply(code, tuple(self._lines))
        self._code = 0
        self._lines = []
        return reply

    def _fail(self, message: str) -> None:
        self._error = message
        raise ReplyProtocolError(message)

    @property
    def pending(self) -> bool:
        """True when part of a reply is buffered (a reply is being received)."""
        return bool(self._buf or self._lines)
