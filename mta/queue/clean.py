"""Queue cleanup (qmail-clean's job): remove leftovers of dead injectors; remove
finished messages.

``clean_queue(root)`` runs at scheduler start-up (and may run at any time, even
while injectors are writing). It removes:

- a ``queue/tmp/`` file whose flock it can take: every live writer holds the lock
  on its tmp file from creation until after its commit, so a free lock means the
  writer died. (A writer that created the file but has not locked it yet notices
  the unlink and starts over: see ``inject._create_tmp``.)
- a ``queue/mess/N`` file with no committed ``messages`` row, checked while this
  process holds the database write lock (BEGIN IMMEDIATE): a live injector holds
  that lock from the INSERT that allocates N to its COMMIT, so no live injection
  can be half-way while we look. The file's flock must be free too.
- a ``queue/free/`` entry past ``free.FREE_CAP``, a non-empty one (a crash can keep
  a recycling rename but lose its truncation) or a foreign one (not a regular
  file of ours with one link; directories are left alone): see ``free.trim_pool``.
  Unlinking a free file is always safe: a taker renaming it just fails and tries
  the next one.

``remove_messages(root, conn, msg_ids)`` deletes finished messages: rows first (one
transaction for the group), then the files. A file is emptied and moved to
``queue/free/`` for the next injection to reuse (``free.recycle_body``: only when
the pool has room and no other process has the file open), else unlinked. A crash
in between leaves a file without rows (possibly already emptied), which
``clean_queue`` removes; never rows without their file.

Public:
    clean_queue(root) -> int                    number of files removed
    remove_messages(root, conn, msg_ids) -> None  commits on ``conn``
    remove_message(root, conn, msg_id) -> None    the same for one

Failures: QueueError from open_queue; OSError other than "already gone" from
listing or unlinking, and sqlite3.Error, propagate (the caller logs and retries).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from pathlib import Path
from typing import Sequence

from mta.queue.free import recycle_body, trim_pool
from mta.queue.store import fsync_dir, open_queue

__all__ = ["clean_queue", "remove_message", "remove_messages"]


def clean_queue(root: str | os.PathLike) -> int:
    """Remove half-written leftovers; return how many files were removed."""
    qdir = Path(root) / "queue"
    conn = open_queue(root)
    try:
        removed = sum(_remove_if_unlocked(qdir / "tmp" / name)
                      for name in os.listdir(qdir / "tmp"))
        conn.execute("BEGIN IMMEDIATE")
        try:
            removed += _clean_mess(conn, qdir / "mess")
        finally:
            conn.rollback()
    finally:
        conn.close()
    removed += trim_pool(qdir / "free")
    if removed:
        fsync_dir(qdir / "tmp")
        fsync_dir(qdir / "mess")
    return removed


def _clean_mess(conn: sqlite3.Connection, mess: Path) -> int:
    removed = 0
    for name in os.listdir(mess):
        if not name.isdigit():
            continue  # not ours: never delete what we did not write
        if conn.execute("SELECT 1 FROM messages WHERE id = ?", (int(name),)).fetchone():
            continue
        removed += _remove_if_unlocked(mess / name)
    return removed


def _remove_if_unlocked(path: Path) -> int:
    """Unlink ``path`` if nobody holds its flock; 1 if removed, else 0."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return 0  # its writer finished (renamed it) or gave up meanwhile
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # a live writer
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                return 0  # the name now points at someone else's file
            os.unlink(path)
        except FileNotFoundError:
            return 0
        return 1
    finally:
        os.close(fd)


def remove_message(root: str | os.PathLike, conn: sqlite3.Connection, msg_id: int) -> None:
    """Delete message ``msg_id``: its rows (committed on ``conn``), then its body."""
    remove_messages(root, conn, [msg_id])


def remove_messages(root: str | os.PathLike, conn: sqlite3.Connection,
                    msg_ids: Sequence[int]) -> None:
    """Delete finished messages: all their rows in one transaction, then the bodies.

    In the same transaction each one's final counts go to ``finished`` and its failed
    recipients (address, domain, last text) to ``failures``, so status queries can
    report on a message after it left the queue. One commit (one WAL fsync) for the
    whole group: a scheduler finishing hundreds of one-recipient messages in a
    result batch must not pay a disk flush for each.
    """
    if not msg_ids:
        return
    now = time.time()
    ids = [(m,) for m in msg_ids]
    if not conn.in_transaction:
        conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            "INSERT OR REPLACE INTO finished (id, sender, bytes, created, finished, nrcpt,"
            " delivered, failed) SELECT id, sender, bytes, created, ?2, nrcpt,"
            " (SELECT count(*) FROM recipients WHERE msg = ?1 AND state = 2),"
            " (SELECT count(*) FROM recipients WHERE msg = ?1 AND state >= 3)"
            " FROM messages WHERE id = ?1", [(m, now) for m in msg_ids])
        conn.executemany("INSERT INTO failures (msg, addr, domain, text) SELECT msg, addr,"
                         " domain, text FROM recipients WHERE msg = ? AND state >= 3", ids)
        conn.executemany("DELETE FROM recipients WHERE msg = ?", ids)
        conn.executemany("DELETE FROM messages WHERE id = ?", ids)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    mess = os.path.join(os.fspath(root), "queue", "mess")  # strings: a path object each
    for msg_id in msg_ids:                                 # cost more than the SQL here
        _remove_body(f"{mess}/{int(msg_id)}")


def _remove_body(path: str) -> None:
    if recycle_body(path):
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        return  # a previous attempt got this far, or clean_queue was faster
