"""The subscriber store of one list: SQLite in ``lists/NAME/subscribers.db``.

What it does: keeps who is subscribed (address, when and how added), which
confirmation cookies were consumed, and when each address's subscription last
changed (``added`` for a subscription, the ``changes`` table for a removal). The schema is made through sqlite-utils (imported only then); bulk paths use plain
``executemany`` in chunks (one transaction per ``CHUNK`` addresses, never one per
address), so a million addresses from stdin take seconds. The database runs in
WAL mode with ``synchronous=FULL``: a committed change survives a crash
(DESIGN decision 6). ezlist.bounces keeps its tables in the same file.

Addresses: ``local@domain`` with the domain lower-cased and the local part kept
as given (so ``Jo@Example.ORG`` and ``Jo@example.org`` are one subscriber, and
``jo@`` another, as ezmlm does). ``iter_addresses`` streams them sorted by
domain, then local part, from the primary-key index.

Single use of cookies (DESIGN decision 5): ``apply_confirmed`` checks the MAC
(ezlist.cookies), then in one transaction refuses a token that was used before
or that is older than the address's last subscription change, records it as
used, and applies the change. So replaying an old subscribe confirmation after
an unsubscribe does nothing, even one that was never used.

Public API:
    SubscriberDB(path)             open (create) the store; .close()
      .add_many(addresses, how="", now=None) -> BulkResult
      .remove_many(addresses, now=None) -> BulkResult
      .is_subscriber(address) -> bool;  .count() -> int
      .info(address) -> Subscriber | None
      .iter_addresses() -> Iterator[str];  .iter_batches(size) -> Iterator[list[tuple[str]]]
      .apply_confirmed(key, list_address, kind, address, token, how, now) -> Confirmation
      .redeem_cookie(key, list_address, kind, address, token, now) -> bool
      .transaction()                context manager: BEGIN IMMEDIATE .. COMMIT
    normalize_address(text) -> str | None

Failures: malformed addresses are counted in ``BulkResult.invalid`` (with up to
``SAMPLES`` examples), never raised; ``sqlite3.Error`` (disk full, locked past
the busy timeout, corrupt file) propagates: the caller treats it as temporary.
"""

from __future__ import annotations

import re
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator


from ezlist import cookies

CHUNK = 10_000
# no space, control character, quote, bracket or list separator; one @; domain
# without empty labels at its ends
_ADDRESS = re.compile(r'[^\s<>,;"\\@\[\]\x00-\x1f\x7f]+@(?!\.)[^\s<>,;"\\@\x00-\x1f\x7f]+(?<!\.)')
SAMPLES = 20
_ADD_KINDS = {"sc": True, "tc": True, "uc": False}


@dataclass(frozen=True, slots=True)
class BulkResult:
    """Outcome of add_many / remove_many."""

    changed: int  # added or removed
    unchanged: int  # already subscribed / not subscribed (incl. duplicates in the input)
    invalid: int
    invalid_samples: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Subscriber:
    address: str
    added: int
    how: str


class Confirmation(Enum):
    APPLIED = "applied"  # cookie good, subscription changed
    NOOP = "noop"  # cookie good, already in that state (cookie consumed)
    REFUSED = "refused"  # bad, expired, future, replayed or stale cookie


def normalize_address(text: str) -> str | None:
    """Canonical ``local@domain`` or None when ``text`` is not a plain address."""
    address = text.strip()
    if len(address) > 320 or not _ADDRESS.fullmatch(address):
        return None
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


class SubscriberDB:
    """One list's subscribers, used cookies and change times."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.conn: sqlite3.Connection = sqlite3.connect(str(self.path))
        self._db = None
        self.conn.isolation_level = None  # we issue BEGIN/COMMIT ourselves
        self.conn.execute("PRAGMA busy_timeout = 10000")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: bulk index inserts
        self._create_schema()

    @property
    def db(self):
        """sqlite-utils' view of this connection, imported on first use (~90 ms of start-up
        that every email command would otherwise pay: the schema exists after ``make``)."""
        if self._db is None:
            import sqlite_utils

            self._db = sqlite_utils.Database(self.conn)
        return self._db

    def has_tables(self, *names: str) -> bool:
        marks = ",".join("?" * len(names))
        row = self.conn.execute(f"SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                                f"AND name IN ({marks})", names).fetchone()
        return row[0] == len(names)

    def _create_schema(self) -> None:
        if self.has_tables("subscribers", "changes", "used_cookies"):
            return
        # WITHOUT ROWID: one b-tree keyed (domain, local), so bulk inserts touch one
        # index and iteration in domain order reads it sequentially (sqlite-utils'
        # create() has no option for it).
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS subscribers (domain TEXT NOT NULL, local TEXT NOT NULL,"
            " added INTEGER NOT NULL, how TEXT NOT NULL, PRIMARY KEY (domain, local))"
            " WITHOUT ROWID")
        self.db["changes"].create({"address": str, "at": int}, pk="address",
                                  not_null={"at"}, if_not_exists=True)
        self.db["used_cookies"].create({"mac": str, "issued": int}, pk="mac",
                                       not_null={"issued"}, if_not_exists=True)
        self.db["used_cookies"].create_index(["issued"], if_not_exists=True)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "SubscriberDB":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any exception)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _bulk(self, addresses: Iterable[str], sql: str, row_of, now: int,
              stamp_changes: bool) -> BulkResult:
        changed = unchanged = invalid = 0
        samples: list[str] = []
        stream = iter(addresses)
        while chunk := list(islice(stream, CHUNK)):
            rows, stamps = [], []
            for text in chunk:
                address = normalize_address(text)
                if address is None:
                    invalid += 1
                    if len(samples) < SAMPLES:
                        samples.append(text.strip()[:200])
                    continue
                local, _, domain = address.rpartition("@")
                rows.append(row_of(domain, local))
                if stamp_changes:
                    stamps.append((address, now))
            rows.sort()  # index locality: neighbours land on the same b-tree pages
            with self.transaction() as conn:
                before = conn.total_changes
                conn.executemany(sql, rows)
                done = conn.total_changes - before
                if stamps:
                    conn.executemany(
                        "INSERT OR REPLACE INTO changes (address, at) VALUES (?, ?)", stamps)
            changed += done
            unchanged += len(rows) - done
        return BulkResult(changed, unchanged, invalid, tuple(samples))

    def add_many(self, addresses: Iterable[str], how: str = "", now: int | None = None) -> BulkResult:
        """Subscribe every address of ``addresses`` (streamed; any size)."""
        stamp = int(time.time()) if now is None else now
        sql = "INSERT OR IGNORE INTO subscribers (domain, local, added, how) VALUES (?, ?, ?, ?)"
        return self._bulk(addresses, sql, lambda d, l: (d, l, stamp, how), stamp, False)

    def remove_many(self, addresses: Iterable[str], now: int | None = None) -> BulkResult:
        """Unsubscribe every address of ``addresses`` (streamed; any size)."""
        stamp = int(time.time()) if now is None else now
        sql = "DELETE FROM subscribers WHERE domain = ? AND local = ?"
        return self._bulk(addresses, sql, lambda d, l: (d, l), stamp, True)

    def info(self, address: str) -> Subscriber | None:
        canonical = normalize_address(address)
        if canonical is None:
            return None
        local, _, domain = canonical.rpartition("@")
        row = self.conn.execute(
            "SELECT added, how FROM subscribers WHERE domain = ? AND local = ?", (domain, local)
        ).fetchone()
        return Subscriber(canonical, row[0], row[1]) if row else None

    def is_subscriber(self, address: str) -> bool:
        return self.info(address) is not None

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM subscribers").fetchone()[0]

    def iter_batches(self, size: int = 10_000) -> Iterator[list[tuple[str]]]:
        """Addresses as lists of 1-tuples, ready for ``executemany``; sorted by domain."""
        cursor = self.conn.execute(
            "SELECT local || '@' || domain FROM subscribers ORDER BY domain, local")
        while batch := cursor.fetchmany(size):
            yield batch

    def iter_addresses(self) -> Iterator[str]:
        """Every subscriber, sorted by domain then local part, streamed."""
        for batch in self.iter_batches():
            for (address,) in batch:
                yield address

    def _consume(self, conn: sqlite3.Connection, address: str, token: str) -> bool:
        issued, mac = cookies.split_cookie(token)  # type: ignore[misc]
        if conn.execute("SELECT 1 FROM used_cookies WHERE mac = ?", (mac,)).fetchone():
            return False
        local, _, domain = address.rpartition("@")
        row = conn.execute(
            "SELECT max(coalesce((SELECT at FROM changes WHERE address = ?), 0), "
            "coalesce((SELECT added FROM subscribers WHERE domain = ? AND local = ?), 0))",
            (address, domain, local)).fetchone()
        if issued < row[0]:
            return False  # issued before the last change: stale (decision 5)
        conn.execute("DELETE FROM used_cookies WHERE issued < ?", (issued - 2 * cookies.WINDOW,))
        conn.execute("INSERT INTO used_cookies (mac, issued) VALUES (?, ?)", (mac, issued))
        return True

    def _verified(self, key: bytes, list_address: str, kind: str, address: str | None,
                  token: str, now: int) -> str | None:
        canonical = normalize_address(address or "")
        if canonical is None or kind not in _ADD_KINDS:
            return None
        if not cookies.check_cookie(key, list_address, kind, canonical, token, now):
            return None
        return canonical

    def redeem_cookie(self, key: bytes, list_address: str, kind: str, address: str,
                      token: str, now: int) -> bool:
        """Check and consume a cookie without changing the subscription.

        For a subscription-moderated list, where the user's ``sc`` confirmation
        only leads to a moderator request.
        """
        canonical = self._verified(key, list_address, kind, address, token, now)
        if canonical is None:
            return False
        with self.transaction() as conn:
            return self._consume(conn, canonical, token)

    def apply_confirmed(self, key: bytes, list_address: str, kind: str, address: str,
                        token: str, how: str, now: int) -> Confirmation:
        """Redeem an ``sc``/``tc`` (subscribe) or ``uc`` (unsubscribe) cookie atomically."""
        canonical = self._verified(key, list_address, kind, address, token, now)
        if canonical is None:
            return Confirmation.REFUSED
        local, _, domain = canonical.rpartition("@")
        with self.transaction() as conn:
            if not self._consume(conn, canonical, token):
                return Confirmation.REFUSED
            if _ADD_KINDS[kind]:
                cur = conn.execute("INSERT OR IGNORE INTO subscribers (domain, local, added, how) "
                                   "VALUES (?, ?, ?, ?)", (domain, local, now, how))
            else:
                cur = conn.execute("DELETE FROM subscribers WHERE domain = ? AND local = ?",
                                   (domain, local))
            if cur.rowcount == 0:
                return Confirmation.NOOP
            if not _ADD_KINDS[kind]:  # an add is dated by subscribers.added
                conn.execute("INSERT OR REPLACE INTO changes (address, at) VALUES (?, ?)",
                             (canonical, now))
            return Confirmation.APPLIED
