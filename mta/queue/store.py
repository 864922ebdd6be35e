"""The queue's on-disk layout and schema: open (and create) the queue database.

Layout under the instance root::

    queue/queue.db      SQLite, WAL, synchronous=FULL: messages and recipient rows
    queue/mess/<id>     one body file per committed message (id = messages.id)
    queue/tmp/          bodies being written (flock held by their writer)
    queue/free/         empty files (removed messages' bodies, spares made by mta init),
                        reused by injections (free.py)
    queue/lock/trigger  named pipe; one byte written after each commit wakes the scheduler

Recipient states (``recipients.state``)::

    0 PENDING    never tried           2 DELIVERED
    1 DEFERRED   retry at next_try     3 FAILED    permanent failure, not yet bounced
                                       4 BOUNCED   failed and reported in a bounce

Indexes, and the query shapes they serve (the scheduler must use these shapes):

- ``recipients_due`` (partial, ``WHERE state < 2``, on ``next_try``): due pickup,
  ``... WHERE state < 2 AND next_try <= ? ORDER BY next_try LIMIT ?``.
- ``recipients_msg`` on ``(msg, state)``: per-message counts, and "is message N done".

Public:
    open_queue(root, *, create=True) -> sqlite3.Connection
    message_path(root, msg_id) -> Path
    queue_dir(root) -> Path
    fsync_dir(path)
    PENDING, DEFERRED, DELIVERED, FAILED, BOUNCED, SCHEMA

The connection keeps Python's default transaction handling; writers that must not
fail half-way start with ``BEGIN IMMEDIATE`` (the busy timeout then applies to taking
the write lock, so a concurrent writer waits instead of failing with SQLITE_BUSY).

Failures: a missing root raises ``HomeError`` (61); a queue that cannot be created,
or (``create=False``) does not exist, raises ``QueueDirError`` (62); a database that
stays locked past the busy timeout raises ``QueueTimeout`` (52).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from mta.queue.errors import HomeError, QueueDirError, QueueTimeout

__all__ = [
    "open_queue", "message_path", "queue_dir", "fsync_dir", "SCHEMA", "BUSY_TIMEOUT",
    "PENDING", "DEFERRED", "DELIVERED", "FAILED", "BOUNCED",
]

PENDING, DEFERRED, DELIVERED, FAILED, BOUNCED = 0, 1, 2, 3, 4
BUSY_TIMEOUT = 120.0  # seconds; a million-recipient injection holds the lock ~5 s

_SCHEMA_VERSION = 2  # 2: finished + failures tables

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT,
  sender TEXT NOT NULL, bytes INTEGER NOT NULL, created REAL NOT NULL,
  qp INTEGER NOT NULL, uid INTEGER NOT NULL, nrcpt INTEGER NOT NULL,
  seen INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS recipients (id INTEGER PRIMARY KEY, msg INTEGER NOT NULL,
  addr TEXT NOT NULL,
  domain TEXT NOT NULL,             -- lower-cased text after the last '@' ('' if none)
  state INTEGER NOT NULL DEFAULT 0, -- 0 pending, 1 deferred, 2 delivered, 3 failed,
                                    -- 4 failed and reported in a bounce
  next_try REAL NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, text TEXT);
CREATE INDEX IF NOT EXISTS recipients_due ON recipients(next_try) WHERE state < 2;
CREATE INDEX IF NOT EXISTS recipients_msg ON recipients(msg, state);
-- finished messages: final counts and failures, kept for status queries
CREATE TABLE IF NOT EXISTS finished (id INTEGER PRIMARY KEY, sender TEXT NOT NULL,
  bytes INTEGER NOT NULL, created REAL NOT NULL, finished REAL NOT NULL,
  nrcpt INTEGER NOT NULL, delivered INTEGER NOT NULL, failed INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS failures (msg INTEGER NOT NULL, addr TEXT NOT NULL,
  domain TEXT NOT NULL, text TEXT);
CREATE INDEX IF NOT EXISTS failures_msg ON failures(msg);
"""


def queue_dir(root: str | os.PathLike) -> Path:
    return Path(root) / "queue"


def message_path(root: str | os.PathLike, msg_id: int) -> Path:
    """Where the body of committed message ``msg_id`` lives."""
    return Path(f"{os.fspath(root)}/queue/mess/{int(msg_id)}")  # one parse, not three joins


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename/create/unlink in ``path`` durable (Linux needs it; DESIGN 7)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _busy_timeout() -> float:
    """How long a writer waits for the database lock: ``MTA_QUEUE_BUSY_TIMEOUT``
    seconds if set to a positive number, else BUSY_TIMEOUT."""
    try:
        value = float(os.environ.get("MTA_QUEUE_BUSY_TIMEOUT", BUSY_TIMEOUT))
    except ValueError:
        return BUSY_TIMEOUT
    return value if value > 0 else BUSY_TIMEOUT



def open_queue(root: str | os.PathLike, *, create: bool = True) -> sqlite3.Connection:
    """Open the queue database (WAL, synchronous=FULL, busy timeout); close it after.

    With ``create`` (the default) the queue folders, the trigger FIFO and the schema
    are created when missing (idempotent, safe from concurrent processes).
    """
    root = Path(root)
    if not root.is_dir():
        raise HomeError(f"instance root {root} is not a folder")
    qdir = root / "queue"
    try:
        if create:
            _make_dirs(qdir)
        elif not (qdir / "queue.db").is_file():
            raise QueueDirError(f"no queue at {qdir} (run mta init)")
        conn = sqlite3.connect(qdir / "queue.db", timeout=_busy_timeout())
    except (OSError, sqlite3.Error) as exc:
        raise QueueDirError(f"cannot open the queue in {qdir}: {exc}") from exc
    try:
        _prepare(conn)
    except sqlite3.OperationalError as exc:
        conn.close()
        if "locked" in str(exc) or "busy" in str(exc):
            raise QueueTimeout(f"queue database stayed locked: {exc}") from exc
        raise QueueDirError(f"cannot prepare {qdir / 'queue.db'}: {exc}") from exc
    except sqlite3.Error as exc:
        conn.close()
        raise QueueDirError(f"cannot prepare {qdir / 'queue.db'}: {exc}") from exc
    return conn


def _make_dirs(qdir: Path) -> None:
    for sub in ("", "mess", "tmp", "free", "lock"):
        (qdir / sub).mkdir(mode=0o750, exist_ok=True)
    try:
        os.mkfifo(qdir / "lock" / "trigger")
        os.chmod(qdir / "lock" / "trigger", 0o622)  # any injector may poke; not umask's
    except FileExistsError:
        pass  # already made by an earlier (or a concurrent) open


def _prepare(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA journal_size_limit=67108864")
    if conn.execute("PRAGMA user_version").fetchone()[0] == _SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in filter(str.strip, SCHEMA.split(";")):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
