"""The scheduler's reads and writes of queue.db, batched.

The queue (``mta.queue``) owns the schema; this module holds the few statements the
scheduler runs on it, each a batch:

- ``new_messages``: committed messages not yet announced (``seen = 0``).
- ``fetch_due``: due recipients in ``(next_try, id)`` order after a cursor (keyset
  pagination on the partial index), so a million-recipient fan-out is read a few
  thousand rows at a time and never held whole.
- ``apply_results``: one transaction for a batch of outcomes (``executemany``).
- ``remaining`` / ``failed_unreported`` / ``mark_reported``: message completion and
  bounce bookkeeping.
- ``still_due``: which of some recipient ids are still to deliver (after a crash).

States (the queue's table): 0 pending, 1 deferred, 2 delivered, 3 failed (not yet
in a bounce), 4 failed and reported. Every state change is one transaction; a
crash between a delivery and its commit re-delivers (at least once), never drops.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Iterable

__all__ = ["Due", "MessageInfo", "new_messages", "fetch_due", "apply_results", "remaining",
           "failed_unreported", "mark_reported", "message_info", "next_due_time",
           "reschedule_all", "still_due", "PENDING", "DEFERRED", "DELIVERED", "FAILED", "REPORTED"]

PENDING, DEFERRED, DELIVERED, FAILED, REPORTED = 0, 1, 2, 3, 4


@dataclass(frozen=True, slots=True)
class Due:
    rcpt_id: int
    msg_id: int
    addr: str
    domain: str
    attempts: int
    next_try: float


@dataclass(frozen=True, slots=True)
class MessageInfo:
    msg_id: int
    sender: str
    bytes: int
    created: float
    qp: int
    uid: int
    nrcpt: int


def message_info(conn: sqlite3.Connection, msg_id: int) -> MessageInfo | None:
    row = conn.execute("SELECT id, sender, bytes, created, qp, uid, nrcpt FROM messages"
                       " WHERE id = ?", (msg_id,)).fetchone()
    return MessageInfo(*row) if row else None


def new_messages(conn: sqlite3.Connection) -> list[MessageInfo]:
    """Messages committed since the last call; marks them seen (one transaction)."""
    rows = conn.execute("SELECT id, sender, bytes, created, qp, uid, nrcpt FROM messages"
                        " WHERE seen = 0 ORDER BY id").fetchall()
    if rows:
        with conn:
            conn.executemany("UPDATE messages SET seen = 1 WHERE id = ?", [(r[0],) for r in rows])
    return [MessageInfo(*r) for r in rows]


def fetch_due(conn: sqlite3.Connection, now: float, after: tuple[float, int],
              limit: int) -> list[Due]:
    """Up to ``limit`` due recipients ordered by (next_try, id), strictly after ``after``."""
    rows = conn.execute(
        "SELECT id, msg, addr, domain, attempts, next_try FROM recipients"
        " WHERE state < 2 AND next_try <= ? AND (next_try, id) > (?, ?)"
        " ORDER BY next_try, id LIMIT ?", (now, after[0], after[1], limit)).fetchall()
    return [Due(*r) for r in rows]


def next_due_time(conn: sqlite3.Connection) -> float | None:
    row = conn.execute("SELECT min(next_try) FROM recipients WHERE state < 2").fetchone()
    return row[0]


def apply_results(conn: sqlite3.Connection, delivered: Iterable[tuple],
                  deferred: Iterable[tuple], failed: Iterable[tuple]) -> None:
    """Record outcomes in one transaction.

    delivered: (text, rcpt_id); deferred: (next_try, text, rcpt_id);
    failed: (text, rcpt_id). Every row's attempt counter goes up by one.
    """
    with conn:
        conn.executemany("UPDATE recipients SET state = 2, attempts = attempts + 1, text = ?"
                         " WHERE id = ?", delivered)
        conn.executemany("UPDATE recipients SET state = 1, attempts = attempts + 1,"
                         " next_try = ?, text = ? WHERE id = ?", deferred)
        conn.executemany("UPDATE recipients SET state = 3, attempts = attempts + 1, text = ?"
                         " WHERE id = ?", failed)


def remaining(conn: sqlite3.Connection) -> dict[int, int]:
    """Recipients still to deliver (pending or deferred), per message."""
    return dict(conn.execute("SELECT msg, count(*) FROM recipients WHERE state < 2"
                             " GROUP BY msg").fetchall())


def failed_unreported(conn: sqlite3.Connection, msg_id: int) -> list[tuple[int, str, str]]:
    return conn.execute("SELECT id, addr, coalesce(text, '') FROM recipients"
                        " WHERE msg = ? AND state = 3 ORDER BY id", (msg_id,)).fetchall()


def mark_reported(conn: sqlite3.Connection, rcpt_ids: Iterable[int]) -> None:
    with conn:
        conn.executemany("UPDATE recipients SET state = 4 WHERE id = ?",
                         [(i,) for i in rcpt_ids])


def reschedule_all(conn: sqlite3.Connection, now: float) -> int:
    """Make every deferred recipient due now (qmail-send's SIGALRM)."""
    with conn:
        return conn.execute("UPDATE recipients SET next_try = ? WHERE state = 1 AND next_try > ?",
                            (now, now)).rowcount


def still_due(conn: sqlite3.Connection, ids: list[int]) -> list[tuple[int, int, str]]:
    """(id, msg, addr) of those of ``ids`` still pending or deferred, in id order."""
    out: list[tuple[int, int, str]] = []
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        marks = ",".join("?" * len(chunk))
        out += conn.execute(f"SELECT id, msg, addr FROM recipients WHERE state < 2"
                            f" AND id IN ({marks})", chunk).fetchall()
    return sorted(out)
