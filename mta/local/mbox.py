"""mbox delivery (qmail-local ``mailfile``, mbox(5) "mboxo" quoting).

``deliver_mbox(path, head, message_path)`` opens ``path`` for appending
(created mode 0600 when missing: qmail requires it to exist, we don't), takes
an exclusive ``flock`` (excludes other threads and processes) and an exclusive
``fcntl`` lock (what NFS and most mail readers honour), waiting at most
``LOCK_WAIT`` seconds, then appends:

- ``head``: the ``From SENDER DATE`` line, Return-Path and Delivered-To lines;
- the message, read in pieces of at most ``CHUNK`` bytes, with ``>`` added in
  front of every line matching ``^>*From `` (qmail ``gfrom``);
- a final newline if the message lacked one, and one blank line.

Then it fsyncs. On any write error the file is truncated back to its size
before the delivery (only when the locks were held, as qmail does) and the
failure is temporary. Memory stays bounded: a very long line is copied piece by
piece, only a line's first piece is checked for ``From ``.

Public:
    deliver_mbox(path, head, message_path) -> Delivered | TempFail
Failures (all temporary): ``Unable to open PATH: REASON. (#4.2.1)``, ``File has
been locked for 30 seconds straight. (#4.3.0)``, ``Unable to read message``,
``Unable to write PATH: REASON. (#4.3.0)``.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from pathlib import Path

from mta.interfaces import Delivered, TempFail

__all__ = ["CHUNK", "LOCK_WAIT", "deliver_mbox"]

CHUNK = 64 * 1024
LOCK_WAIT = 30.0
_GFROM = re.compile(rb">*From ")


class _LockTimeout(Exception):
    pass


def deliver_mbox(path: Path, head: bytes, message_path: Path) -> Delivered | TempFail:
    """Append one message to the mbox file ``path`` (see module doc)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        return TempFail(f"Unable to open {path}: {exc.strerror}. (#4.2.1)", "4.2.1")
    try:
        try:
            locked = _lock(fd)
        except _LockTimeout:
            return TempFail("File has been locked for 30 seconds straight. (#4.3.0)", "4.3.0")
        pos = os.lseek(fd, 0, os.SEEK_END)
        try:
            src = open(message_path, "rb")
        except OSError as exc:
            return TempFail(f"Unable to read message: {exc.strerror}. (#4.3.0)", "4.3.0")
        try:
            with src:
                _append(fd, head, src)
            os.fsync(fd)
        except OSError as exc:
            if locked:
                os.ftruncate(fd, pos)
            return TempFail(f"Unable to write {path}: {exc.strerror}. (#4.3.0)", "4.3.0")
        return Delivered(f"mbox {path}")
    finally:
        os.close(fd)  # closing releases both locks


def _lock(fd: int) -> bool:
    """Take flock and fcntl locks; False when the file system supports neither."""
    deadline = time.monotonic() + LOCK_WAIT
    delay = 0.01
    for lock in (fcntl.flock, fcntl.lockf):
        while True:
            try:
                lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise _LockTimeout() from None
                time.sleep(delay)  # polling: flock has no timeout and we run in threads
                delay = min(delay * 2, 0.5)
            except OSError:
                return False  # e.g. ENOLCK: deliver unlocked, as qmail does
    return True


def _append(fd: int, head: bytes, src) -> None:
    out = open(fd, "wb", buffering=CHUNK, closefd=False)
    try:
        out.write(head)
        at_line_start = True
        while True:
            piece = src.readline(CHUNK)
            if not piece:
                break
            if at_line_start and _GFROM.match(piece):
                out.write(b">")
            out.write(piece)
            at_line_start = piece.endswith(b"\n")
        out.write(b"\n" if at_line_start else b"\n\n")
        out.flush()
    finally:
        out.close()
