"""Injection: the one way into the queue (qmail-queue's job), durable before "yes".

Theory of operation. A message becomes visible to the scheduler in one SQLite
commit; everything before that commit is invisible and is removed by
``clean_queue`` if the injector dies:

    1. write_body: make queue/tmp/<pid>.<ns>.<n> and flock it: rename an emptied
       file of queue/free/ there (free.py: the inode of a removed message, reused)
       or create it (O_EXCL); write the Received line and the message; fsync.
                                                       crash point after_mess_fsync
    2. commit_body: BEGIN IMMEDIATE (the queue's write lock); INSERT the messages
       row, which allocates the id N; rename tmp -> mess/N; fsync mess/; INSERT the
       recipient rows with executemany from a generator (streamed); UPDATE nrcpt.
                                                       crash point after_intd_fsync
    3. COMMIT with synchronous=FULL (the WAL is fsynced). crash point after_commit
       Only now release the flock, then poke the trigger.

Leftovers after a crash: a tmp/ file (step 1 or 2; its flock is free; it may be
a recycled one, renamed from free/ before its truncation), or a mess/N file with
no committed row (step 2; the rolled-back N may be reused, and the next rename
then replaces the orphan). ``clean_queue`` removes both, holding the write lock
so no live injector can be inside step 2 (see clean.py). A file left in free/ is
no leftover: it is reused (or trimmed by ``clean_queue``).

On any failure the injector removes its own file (mess/N before the rollback,
while it still holds the write lock) and raises a QueueError.

Public:
    enqueue(root, sender, recipients, message, *, received=None, conn=None) -> int
    write_body(root, message, received=None, *, sync=True) -> PendingBody
    commit_body(root, body, sender, recipients, *, conn=None) -> int
    qmail_received(pid, uid, when) -> bytes    qmail-queue's own Received line
    PendingBody                                 a written, fsynced, locked tmp file

``recipients`` is any iterable of str (consumed once, never listed). ``message``
is bytes or a binary file object read to EOF.

Failures (all QueueError, see errors.py): AddressTooLong (11), EnvelopeFormatError
(91: empty recipient, NUL in an address, unencodable text), WriteError (53: write,
fsync, disk full, SQLite I/O error), ReadError (54: the message could not be
read), MessDirError (64), QueueTimeout (52: write lock not obtained), OutOfMemory.

Several messages at once (group commit, one fsync of mess/ and one COMMIT for
all): see batch.py, which reuses these steps.

Test seam (env MTA_FAULT, read once at import): ``enospc`` makes the body write
fail with ENOSPC, ``fsync_eio`` the body fsync with EIO (QF7, QF8, the message side);
``commit_eio`` makes the recipients' COMMIT fail as SQLite does on an I/O error
(QF8, the envelope side: exit 53, mess/N removed, nothing visible); ``internal_bug``
raises an unexpected exception once the body is in mess/ (exit 81, same cleanup).
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import sqlite3
import time
from pathlib import Path
from collections.abc import Iterable
from io import IOBase
from typing import BinaryIO

from mta.crashpoint import crash_point
from mta.queue.errors import (
    ADDRESS_LIMIT, AddressTooLong, EnvelopeFormatError, MessDirError, OutOfMemory,
    QueueDirError, QueueError, QueueTimeout, ReadError, WriteError,
)
from mta.queue.free import take_body
from mta.queue.store import fsync_dir, message_path, open_queue
from mta.queue.trigger import poke_trigger

__all__ = ["enqueue", "write_body", "commit_body", "qmail_received", "PendingBody"]

_FAULT = os.environ.get("MTA_FAULT", "")
_CHUNK = 1 << 16
_seq = itertools.count()
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def qmail_received(pid: int, uid: int, when: float) -> bytes:
    """``Received: (qmail PID invoked by uid N); 26 Sep 1995 04:46:54 -0000\\n``."""
    t = time.gmtime(when)
    date = (f"{t.tm_mday} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} -0000")
    return f"Received: (qmail {pid} invoked by uid {uid}); {date}\n".encode()


class PendingBody:
    """A body written and fsynced in queue/tmp/, flock held; not yet queued.

    ``commit_body`` consumes it; ``discard()`` removes it (idempotent).
    """

    def __init__(self, fd: int, path: Path, size: int) -> None:
        self.fd, self.path, self.size = fd, path, size

    def discard(self) -> None:
        if self.fd < 0:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass  # already renamed away or removed: nothing of ours left there
        finally:
            self.release()

    def release(self) -> None:
        """Close the file, releasing the flock (after the commit, or after unlink)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def enqueue(root: str | os.PathLike, sender: str, recipients: Iterable[str],
            message: bytes | IOBase, *, received: bytes | None = None,
            conn: sqlite3.Connection | None = None) -> int:
    """Queue one message durably; return its queue id. See the module docstring."""
    own = conn is None
    if own:
        conn = open_queue(root)
    try:
        body = write_body(root, message, received)
        return commit_body(root, body, sender, recipients, conn=conn)
    finally:
        if own:
            conn.close()


def write_body(root: str | os.PathLike, message: bytes | IOBase,
               received: bytes | None = None, *, sync: bool = True) -> PendingBody:
    """Step 1: write ``received`` + ``message`` to a locked tmp file and fsync it.

    ``sync=False`` leaves the fsync (and the after_mess_fsync crash point) to the
    caller: ``enqueue_batch`` fsyncs a whole batch of bodies in parallel.
    """
    body = _create_tmp(Path(root) / "queue" / "tmp")
    try:
        size = _write_all(body.fd, received or b"")
        if isinstance(message, (bytes, bytearray, memoryview)):
            size += _write_all(body.fd, message)
        else:
            size += _copy(message, body.fd)
        if sync:
            _fsync(body.fd)
    except BaseException:
        body.discard()
        raise
    body.size = size
    if sync:
        crash_point("after_mess_fsync")
    return body


def commit_body(root: str | os.PathLike, body: PendingBody, sender: str,
                recipients: Iterable[str], *, conn: sqlite3.Connection | None = None) -> int:
    """Steps 2-3: make ``body`` message N with ``recipients``; return N.

    ``body`` is consumed: committed or discarded, whatever happens.
    """
    own = conn is None
    tmp = body.path
    try:
        _check_address(sender)
        if own:
            conn = open_queue(root)
        msg_id = _commit(root, conn, body, sender, recipients)
    except BaseException:
        # Not renamed: remove the tmp file. Renamed: _abort already removed mess/N.
        body.discard() if body.path == tmp else body.release()
        raise
    finally:
        if own and conn is not None:
            conn.close()
    body.release()  # only now, after the commit, may clean_queue take the lock
    poke_trigger(root)
    return msg_id


def _commit(root, conn: sqlite3.Connection, body: PendingBody, sender: str,
            recipients: Iterable[str]) -> int:
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise _sqlite_error(exc) from exc
    tmp = body.path
    try:
        msg_id = conn.execute(
            "INSERT INTO messages (sender, bytes, created, qp, uid, nrcpt)"
            " VALUES (?, ?, ?, ?, ?, 0)",
            (sender, body.size, time.time(), os.getpid(), os.getuid())).lastrowid
        _rename_into_mess(body, message_path(root, msg_id))
        if _FAULT == "internal_bug":
            raise RuntimeError("an unexpected internal error (MTA_FAULT)")
        cur = conn.executemany("INSERT INTO recipients (msg, addr, domain) VALUES (?, ?, ?)",
                               _rows(msg_id, recipients))
        conn.execute("UPDATE messages SET nrcpt = ? WHERE id = ?", (cur.rowcount, msg_id))
        crash_point("after_intd_fsync")
        if _FAULT == "commit_eio":
            raise sqlite3.OperationalError("disk I/O error (MTA_FAULT)")
        conn.commit()
    except BaseException as exc:
        _abort(conn, body.path if body.path != tmp else None)
        raise _mapped(exc) from exc
    crash_point("after_commit")
    return msg_id


def _abort(conn: sqlite3.Connection, dest: Path | None) -> None:
    """Undo step 2: the file first, while the write lock still keeps N ours."""
    if dest is not None:
        try:
            os.unlink(dest)
        except OSError:
            # Left for clean_queue, which only removes mess/N without a committed row.
            pass
    try:
        conn.rollback()
    except sqlite3.Error:
        # The transaction is gone either way (SQLite rolls back on I/O errors);
        # the caller reports the original failure, which is the useful one.
        return


def _rename_into_mess(body: PendingBody, dest: Path, sync: bool = True) -> None:
    try:
        os.rename(body.path, dest)
    except OSError as exc:
        raise MessDirError(f"cannot move the body to {dest}: {exc}") from exc
    body.path = dest
    if not sync:
        return  # the batch fsyncs mess/ once for all its renames
    try:
        fsync_dir(dest.parent)
    except OSError as exc:
        raise WriteError(f"cannot fsync {dest.parent}: {exc}") from exc


def _rows(msg_id: int, recipients: Iterable[str]):
    for addr in recipients:
        if not addr:
            raise EnvelopeFormatError("empty recipient address")
        if len(addr) > 250 or "\0" in addr:
            _check_address(addr)
        _, at, domain = addr.rpartition("@")
        yield msg_id, addr, domain.lower() if at else ""


def _check_address(addr: str) -> None:
    if "\0" in addr:
        raise EnvelopeFormatError("NUL inside an address")
    if len(addr) > ADDRESS_LIMIT // 4 and len(addr.encode(errors="replace")) > ADDRESS_LIMIT:
        raise AddressTooLong(f"address longer than {ADDRESS_LIMIT} bytes: {addr[:60]}...")


_O_TMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_free_dirs: dict = {}  # tmpdir -> its sibling free/ (str)


def _create_tmp(tmpdir: Path | str) -> PendingBody:
    """A locked, empty tmp file: a recycled one from queue/free/ (tmpdir's sibling,
    see free.py) when there is one, else a fresh one. Its path is of ``tmpdir``'s
    type (the queue owner's batch path passes a str: no pathlib per message). A
    cleaner that locked and unlinked it between our open and our flock is detected
    (the name no longer points at our inode) and we start over."""
    pid = os.getpid()
    free = _free_dirs.get(tmpdir)
    if free is None:
        free = _free_dirs[tmpdir] = os.path.join(os.path.dirname(os.fspath(tmpdir)), "free")
    while True:
        name = f"{pid}.{time.time_ns()}.{next(_seq)}"
        path = tmpdir / name if isinstance(tmpdir, Path) else f"{tmpdir}/{name}"
        fd = take_body(free, path)
        if fd is not None:
            return PendingBody(fd, path, 0)
        try:
            fd = os.open(path, _O_TMP, 0o640)
        except FileExistsError:
            continue
        except FileNotFoundError as exc:
            raise QueueDirError(f"no {tmpdir}: {exc}") from exc
        except OSError as exc:
            raise WriteError(f"cannot create a file in {tmpdir}: {exc}") from exc
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return PendingBody(fd, path, 0)
        os.close(fd)


def _write_all(fd: int, data) -> int:
    view = memoryview(data)
    total = len(view)
    try:
        if _FAULT == "enospc" and total:
            raise OSError(errno.ENOSPC, "No space left on device (MTA_FAULT)")
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        raise WriteError(f"cannot write the message: {exc}") from exc
    return total


def _copy(src: BinaryIO, fd: int) -> int:
    total = 0
    while True:
        try:
            data = src.read(_CHUNK)
        except OSError as exc:
            raise ReadError(f"cannot read the message: {exc}") from exc
        if not data:
            return total
        total += _write_all(fd, data)


def _fsync(fd: int) -> None:
    try:
        if _FAULT == "fsync_eio":
            raise OSError(errno.EIO, "Input/output error (MTA_FAULT)")
        os.fsync(fd)
    except OSError as exc:
        raise WriteError(f"cannot fsync the message: {exc}") from exc


def _mapped(exc: BaseException) -> BaseException:
    if isinstance(exc, (QueueError, KeyboardInterrupt, SystemExit)):
        return exc
    if isinstance(exc, MemoryError):
        return OutOfMemory("out of memory")
    if isinstance(exc, UnicodeEncodeError):
        return EnvelopeFormatError(f"address cannot be stored as text: {exc}")
    if isinstance(exc, sqlite3.Error):
        return _sqlite_error(exc)
    if isinstance(exc, OSError):
        return WriteError(str(exc))
    return exc


def _sqlite_error(exc: sqlite3.Error) -> QueueError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return QueueTimeout(f"queue database stayed locked: {text}")
    if isinstance(exc, sqlite3.OperationalError):
        return WriteError(f"queue database write failed: {text}")  # full, disk I/O error
    return QueueError(f"queue database error: {text}")
