"""Read-only views of the queue for ``mta queue`` and ``mta stat`` (qmail-qread,
qmail-qstat).

Public:
    message_counts(conn, msg_id) -> dict   {"pending", "deferred", "delivered", "failed"}
    top_domains(conn, msg_id, limit=3) -> tuple[(domain, count), ...]
    queue_summary(conn, top=3) -> list[MessageSummary]   oldest first
    queue_totals(conn) -> dict   {"messages", "pending", "deferred", "delivered", "failed"}
    MessageSummary   frozen: id, sender, bytes, created, nrcpt, counts, top_domains

"failed" counts states 3 and 4 (failed, whether or not the bounce went out yet).
``top_domains`` counts the recipients still to do (pending or deferred): those
are what an operator looking at a queue wants to see.

Failures: sqlite3.Error propagates (read-only; nothing to undo).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

__all__ = ["MessageSummary", "message_counts", "top_domains", "queue_summary", "queue_totals"]

_NAMES = {0: "pending", 1: "deferred", 2: "delivered", 3: "failed", 4: "failed"}


@dataclass(frozen=True, slots=True)
class MessageSummary:
    id: int
    sender: str
    bytes: int
    created: float
    nrcpt: int
    counts: dict
    top_domains: tuple[tuple[str, int], ...]


def _empty_counts() -> dict:
    return {"pending": 0, "deferred": 0, "delivered": 0, "failed": 0}


def message_counts(conn: sqlite3.Connection, msg_id: int) -> dict:
    """Recipients of ``msg_id`` by state (uses the (msg, state) index)."""
    counts = _empty_counts()
    for state, n in conn.execute(
            "SELECT state, count(*) FROM recipients WHERE msg = ? GROUP BY state", (msg_id,)):
        counts[_NAMES.get(state, "failed")] += n
    return counts


def top_domains(conn: sqlite3.Connection, msg_id: int, limit: int = 3) -> tuple:
    """The ``limit`` domains with most recipients still to do, most first."""
    rows = conn.execute(
        "SELECT domain, count(*) AS n FROM recipients WHERE msg = ? AND state < 2"
        " GROUP BY domain ORDER BY n DESC, domain LIMIT ?", (msg_id, limit))
    return tuple((domain, n) for domain, n in rows)


def queue_summary(conn: sqlite3.Connection, top: int = 3) -> list[MessageSummary]:
    """One summary per queued message, oldest first."""
    rows = conn.execute("SELECT id, sender, bytes, created, nrcpt FROM messages ORDER BY id")
    return [MessageSummary(msg_id, sender, size, created, nrcpt,
                           message_counts(conn, msg_id), top_domains(conn, msg_id, top))
            for msg_id, sender, size, created, nrcpt in rows.fetchall()]


def queue_totals(conn: sqlite3.Connection) -> dict:
    """Whole-queue counts: messages, and recipients by state."""
    totals = _empty_counts()
    for state, n in conn.execute("SELECT state, count(*) FROM recipients GROUP BY state"):
        totals[_NAMES.get(state, "failed")] += n
    totals["messages"] = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    return totals
