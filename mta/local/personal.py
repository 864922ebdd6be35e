"""The copy of a stored message one local recipient gets (one-click unsubscribe token).

``personal_copy(message_path, recipient)`` is a context manager giving the path
to deliver from. For an ordinary message that is ``message_path`` itself (only
the header is read to decide). For a message carrying the private
``X-Mta-Rcpt-Token`` field (``mta.rcpt_token``), it writes a temporary file
(mode 0600, in the system's temporary directory, removed on exit): the header
without that field and with its placeholder filled for ``recipient``, then the
body copied in ``CHUNK``-byte pieces. Memory stays bounded: at most
``HEADER_CAP`` bytes of header are held (a longer header is processed in its
first ``HEADER_CAP`` bytes, where ezlist puts the field, and the rest copied).
Maildir, mbox, program and forward deliveries all read the copy, so none of
them sees the private field.

Public:
    personal_copy(message_path, recipient) -> ContextManager[Path]
Raises OSError when the message cannot be read or the copy cannot be written
(the caller makes it temporary).
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from mta.rcpt_token import FIELD, personalize

__all__ = ["CHUNK", "HEADER_CAP", "personal_copy"]

CHUNK = 65536
HEADER_CAP = 1 << 20


@contextmanager
def personal_copy(message_path: Path, recipient: str) -> Iterator[Path]:
    """The path ``recipient``'s delivery reads (see module doc)."""
    with open(message_path, "rb") as src:
        head = _read_header(src)
        if FIELD not in head.lower():
            yield Path(message_path)
            return
        with tempfile.NamedTemporaryFile(prefix="mta-local-", suffix=".eml") as tmp:
            tmp.write(personalize(head, [recipient]))
            shutil.copyfileobj(src, tmp, CHUNK)
            tmp.flush()
            yield Path(tmp.name)


def _read_header(src: BinaryIO) -> bytes:
    """The header lines and the empty line after them (at most about ``HEADER_CAP``)."""
    lines: list[bytes] = []
    size = 0
    while size < HEADER_CAP:
        line = src.readline(HEADER_CAP - size)
        if not line:
            break
        lines.append(line)
        size += len(line)
        if line in (b"\n", b"\r\n"):
            break
    return b"".join(lines)
