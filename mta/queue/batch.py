"""Group commit: queue several messages with one sync of the disk and one COMMIT.

The queue owner (mta.queued) collects the injections that arrive while its previous
commit is running and hands them here together. Each message still gets its own
body file (``mess/N``) and its own rows; what the batch shares is the expensive part,
the waits for the disk:

    1. the envelopes are checked (a bad address fails that message alone, before
       anything is written); every body is written to its own locked tmp file
       (O_EXCL, flock, one writev of Received line + message).
                                                       crash point after_mess_fsync
    2. BEGIN IMMEDIATE; per message: INSERT the messages row (allocates N; nrcpt is
       known already), rename tmp -> mess/N (a rename that fails deletes that row and
       fails that message alone); then ONE executemany for every recipient row of
       the batch.
    3. the sync: with ``syncfs`` (Linux, the default), ONE syncfs(2) of the queue's
       file system makes every body, every rename and mess/ itself durable at once
       (it is a superset of fsync(body) + fsync(mess/); errors are reported through
       the fd opened before the writes, so a write-back error of any body fails the
       batch). With ``fsync`` (elsewhere, or asked for), every body is fsynced in
       parallel threads before step 2 and mess/ once after the renames.
                                                       crash point after_intd_fsync
    4. one COMMIT (synchronous=FULL).                  crash point after_commit
       Then every flock is released and the trigger is poked once.

So a batch waits for the disk twice (syncfs, then the WAL's fsync in COMMIT) instead
of three times, and the CPU cost of one fsync per body (ext4: ~0.2-0.5 ms of system
time each, measured) is paid once a batch. The price of syncfs: it also writes back
whatever else is dirty on that file system (give the queue its own file system when
other heavy writers share the disk, or pass ``sync="fsync"``).

The crash guarantees are inject.py's, for every message of the batch at once: before
the COMMIT nothing of the batch is visible (tmp files and mess/N orphans, whatever
their content, are removed by clean_queue, which takes the write lock first, and a
batch holds that lock from its first INSERT to its COMMIT); the COMMIT comes only
after the sync, so after it every message is whole and durable. A batch whose sync
or COMMIT fails fails every message in it, and removes its mess/N files first.

Public:
    BatchItem(sender, recipients, message, received=None)
    enqueue_batch(root, items, *, conn, pool=None, sync="auto") -> list[int | QueueError]
        one result per item, in order: the queue id, or the error that kept that
        message out of the queue. Never raises QueueError itself. ``sync`` is
        "syncfs", "fsync" or "auto" (syncfs on Linux >= 5.8, the first to report
        write-back errors through syncfs, when the C library has it); ``pool``
        runs the parallel fsyncs of the "fsync" way.
    SYNCFS_AVAILABLE
"""

from __future__ import annotations

import ctypes
import errno
import os
import sqlite3
import sys
import time
from dataclasses import dataclass
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not imported at run time: concurrent.futures costs ~12 ms
    from concurrent.futures import Executor

from mta.crashpoint import crash_point
from mta.queue.errors import (
    EnvelopeFormatError, MessDirError, QueueDirError, QueueError, WriteError,
)
from mta.queue.inject import PendingBody, _abort, _check_address, _create_tmp, _fsync, _mapped
from mta.queue.store import fsync_dir
from mta.queue.trigger import poke_trigger

__all__ = ["BatchItem", "enqueue_batch", "SYNCFS_AVAILABLE"]

_FAULT = os.environ.get("MTA_FAULT", "")
_INSERT_MSG = ("INSERT INTO messages (sender, bytes, created, qp, uid, nrcpt)"
               " VALUES (?, ?, ?, ?, ?, ?)")
_INSERT_RCPT = "INSERT INTO recipients (msg, addr, domain) VALUES (?, ?, ?)"


def _reports_errors(release: str) -> bool:
    """syncfs(2) reports write-back errors only since Linux 5.8 (errseq on the sb)."""
    major, _, rest = release.partition(".")
    minor = rest.split(".", 1)[0].split("-", 1)[0]
    return major.isdigit() and minor.isdigit() and (int(major), int(minor)) >= (5, 8)


def _load_syncfs():
    if sys.platform != "linux" or not _reports_errors(os.uname().release):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn


_syncfs = _load_syncfs()
SYNCFS_AVAILABLE = _syncfs is not None  # else "auto" means the fsync way


@dataclass(frozen=True)
class BatchItem:
    """One injection: what qmail-queue reads on fd 0 and fd 1."""

    sender: str
    recipients: Sequence[str]
    message: bytes
    received: bytes | None = None


def enqueue_batch(root: str | os.PathLike, items: Sequence[BatchItem], *,
                  conn: sqlite3.Connection, pool: Executor | None = None,
                  sync: str = "auto") -> list[int | QueueError]:
    """Queue ``items`` with one disk sync and one commit; see the module doc."""
    if sync not in ("auto", "syncfs", "fsync"):
        raise ValueError(f"sync must be auto, syncfs or fsync, not {sync!r}")
    if sync == "syncfs" and not SYNCFS_AVAILABLE:
        raise ValueError("no syncfs(2) that reports write-back errors here (Linux >= 5.8)")
    whole_fs = sync == "syncfs" or (sync == "auto" and SYNCFS_AVAILABLE)
    qdir = os.path.join(os.fspath(root), "queue")
    results: list[int | QueueError | None] = [None] * len(items)
    bodies: dict[int, PendingBody] = {}
    rows: dict[int, list[tuple[str, str]]] = {}
    sync_fd = -1
    try:
        if whole_fs:
            sync_fd = _open_sync_fd(qdir)  # before the writes: their errors reach it
        _write_bodies(qdir, items, bodies, rows, results)
        if not whole_fs:
            _fsync_bodies(bodies, results, pool)
        crash_point("after_mess_fsync")
        if bodies:
            _commit_batch(qdir, conn, items, bodies, rows, results, sync_fd)
    except QueueDirError as exc:
        _fail_all(bodies, results, exc)
    finally:
        for body in bodies.values():
            body.release()  # after the commit (or the rollback): clean_queue may look now
        if sync_fd >= 0:
            os.close(sync_fd)
    if bodies:
        poke_trigger(root)
    return results  # type: ignore[return-value]


def _open_sync_fd(qdir: str) -> int:
    try:
        return os.open(os.path.join(qdir, "mess"), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise QueueDirError(f"cannot open {qdir}/mess: {exc}") from exc


def _envelope(item: BatchItem) -> list[tuple[str, str]]:
    """The checked (addr, domain) rows of one message; raises QueueError."""
    _check_address(item.sender)
    if not item.sender.isascii():
        item.sender.encode()  # a lone surrogate cannot be stored: EnvelopeFormatError
    out = []
    for addr in item.recipients:
        if not addr:
            raise EnvelopeFormatError("empty recipient address")
        if len(addr) > 250 or "\0" in addr:
            _check_address(addr)
        if not addr.isascii():
            addr.encode()
        _, at, domain = addr.rpartition("@")
        out.append((addr, domain.lower() if at else ""))
    return out


def _write_bodies(qdir, items, bodies, rows, results) -> None:
    tmpdir = os.path.join(qdir, "tmp")
    for i, item in enumerate(items):
        try:
            rows[i] = _envelope(item)
            bodies[i] = _write_body(tmpdir, item.received or b"", item.message)
        except Exception as exc:
            results[i] = _as_error(exc)


def _write_body(tmpdir: str, received: bytes, message: bytes) -> PendingBody:
    body = _create_tmp(tmpdir)
    try:
        body.size = _writev(body.fd, [received, message])
    except BaseException:
        body.discard()
        raise
    return body


def _writev(fd: int, pieces: list[bytes]) -> int:
    total = sum(map(len, pieces))
    try:
        if _FAULT == "enospc" and total:
            raise OSError(errno.ENOSPC, "No space left on device (MTA_FAULT)")
        done = os.writev(fd, pieces)
        if done < total:  # short write: finish piece by piece
            rest = memoryview(b"".join(pieces))[done:]
            while rest:
                rest = rest[os.write(fd, rest):]
    except OSError as exc:
        raise WriteError(f"cannot write the message: {exc}") from exc
    return total


def _fsync_bodies(bodies, results, pool) -> None:
    synced = (pool.map(_try_fsync, bodies.values()) if pool and len(bodies) > 1
              else map(_try_fsync, bodies.values()))
    for (i, body), err in list(zip(bodies.items(), synced)):
        if err is not None:
            body.discard()
            del bodies[i]
            results[i] = err


def _try_fsync(body: PendingBody) -> QueueError | None:
    try:
        _fsync(body.fd)
    except QueueError as exc:
        return exc
    return None


def _commit_batch(qdir, conn, items, bodies, rows, results, sync_fd) -> None:
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        _fail_all(bodies, results, _as_error(exc))
        return
    renamed: list[PendingBody] = []
    try:
        rcpt_rows = _insert_messages(qdir, conn, items, bodies, rows, results, renamed)
        conn.executemany(_INSERT_RCPT, rcpt_rows)
        if renamed:
            _sync(qdir, sync_fd)
        crash_point("after_intd_fsync")
        conn.commit()
    except BaseException as exc:
        for body in renamed:
            _abort_file(body)
        _abort(conn, None)
        if not isinstance(exc, Exception):
            raise
        _fail_all(bodies, results, _as_error(exc))
        return
    crash_point("after_commit")


def _insert_messages(qdir, conn, items, bodies, rows, results, renamed) -> list[tuple]:
    """Step 2's per-message part; returns every recipient row of the renamed ones."""
    now, pid, uid = time.time(), os.getpid(), os.getuid()
    out: list[tuple] = []
    for i, body in list(bodies.items()):
        env = rows[i]
        msg_id = conn.execute(_INSERT_MSG, (items[i].sender, body.size, now, pid, uid,
                                            len(env))).lastrowid
        dest = f"{qdir}/mess/{msg_id}"
        try:
            os.rename(body.path, dest)
        except OSError as exc:
            conn.execute("DELETE FROM messages WHERE id = ?", (msg_id,))
            body.discard()
            del bodies[i]
            results[i] = MessDirError(f"cannot move the body to {dest}: {exc}")
            continue
        body.path = dest
        renamed.append(body)
        results[i] = msg_id
        out += [(msg_id, addr, domain) for addr, domain in env]
    return out


def _sync(qdir: str, sync_fd: int) -> None:
    """Make the bodies and their renames durable: one syncfs, or one fsync of mess/."""
    try:
        if _FAULT == "fsync_eio":
            raise OSError(errno.EIO, "Input/output error (MTA_FAULT)")
        if sync_fd < 0:
            fsync_dir(os.path.join(qdir, "mess"))
        elif _syncfs(sync_fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    except OSError as exc:
        raise WriteError(f"cannot sync the queue's file system: {exc}") from exc


def _abort_file(body: PendingBody) -> None:
    try:
        os.unlink(body.path)
    except OSError:
        pass  # already gone, or left for clean_queue (mess/N without a committed row)
    body.release()


def _fail_all(bodies, results, err: QueueError) -> None:
    for i, body in bodies.items():
        body.discard()
        results[i] = err
    bodies.clear()


def _as_error(exc: BaseException) -> QueueError:
    mapped = _mapped(exc)
    if isinstance(mapped, QueueError):
        return mapped
    return WriteError(f"unexpected failure: {exc!r}")
