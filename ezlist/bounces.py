"""Bounce bookkeeping of a list: ezmlm-return and ezmlm-warn on SQLite.

What it does: every bounce for a subscriber is logged, and each address moves
through a small state machine, one SQLite transaction per step (DESIGN decision
6: as crash-proof as the queue):

    (ok) --distribution bounce--> BOUNCING
    BOUNCING --`threshold` bounces and `timeout` s since the first--> WARNED  (warning due)
    BOUNCING --no bounce for `timeout` s--> (ok)
    WARNED --the warning bounced, `timeout` s after the warning--> PROBED  (probe due)
    WARNED --warning did not bounce within `timeout` s--> (ok)
    PROBED --the probe bounced--> removed (unsubscribed; reason recorded for the owner)
    PROBED --no probe bounce within BOUNCE_WINDOW--> (ok)

Only a bounced PROBE removes an address, and a probe bounce counts only when
its cookie (action ``P``) is ours, for that address, and made at the moment the
probe was sent (``probed_at``); a warning bounce likewise (action ``W``,
``warned_at``). So forged distribution bounces, however many, lead at most to
a warning to the subscriber (LS7). Bounces for non-subscribers change nothing
(LS9). Notices are returned by ``take_due_notices`` after their transition
commits: if the caller dies before queueing one, that notice is never sent, so
no bounce comes back and the address drifts back to ok: a lost notice can
delay a removal, never cause one.

Public API:
    BounceBook(db, key, list_address, threshold, timeout)
      .record_bounce(address, number, text, now) -> bool
      .record_warn_bounce(address, token, text, now) -> bool
      .record_probe_bounce(address, token, text, now) -> bool   (True = removed)
      .take_due_notices(now) -> list[Notice]
      .bouncing() -> list[BounceStatus];  .removed() -> list[Removal]
    State (Enum), Notice, BounceStatus, Removal (frozen dataclasses)

Failures: hostile input (bad cookie, unknown address) answers False;
``sqlite3.Error`` propagates and means "try again later" (exit 111).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ezlist import cookies
from ezlist.subscribers import SubscriberDB, normalize_address

TEXT_LIMIT = 10_000  # bytes of bounce text kept per record


class State(Enum):
    BOUNCING = "bouncing"
    WARNED = "warned"
    PROBED = "probed"


@dataclass(frozen=True, slots=True)
class Notice:
    """A warning or probe to send to ``address``; sender from ezlist.addresses."""

    address: str
    kind: str  # "warn" or "probe"
    token: str  # TIME.MAC for warn_address / probe_address
    numbers: tuple[int, ...]  # posts that bounced


@dataclass(frozen=True, slots=True)
class BounceStatus:
    address: str
    state: State
    first: int
    last: int
    count: int
    numbers: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Removal:
    address: str
    at: int
    reason: str


def _forget(conn, address: str) -> None:
    """Back to ok: drop the state and the bounce log of this episode."""
    conn.execute("DELETE FROM bounce_state WHERE address = ?", (address,))
    conn.execute("DELETE FROM bounce_log WHERE address = ?", (address,))


class BounceBook:
    """The bounce state of one list, in the list's subscriber database."""

    def __init__(self, db: SubscriberDB, key: bytes, list_address: str,
                 threshold: int = 3, timeout: int = 864_000) -> None:
        self.db, self.key, self.list_address = db, key, list_address
        self.threshold, self.timeout = threshold, timeout
        if db.has_tables("bounce_state", "bounce_log", "removed"):
            return  # made before (by make_list); creating again would take the write lock
        sdb = db.db
        sdb["bounce_state"].create(
            {"address": str, "state": str, "first": int, "last": int, "count": int,
             "warned_at": int, "warn_bounced_at": int, "probed_at": int},
            pk="address", not_null={"state", "first", "last", "count"}, if_not_exists=True)
        sdb["bounce_log"].create(
            {"id": int, "address": str, "number": int, "kind": str, "at": int, "text": str},
            pk="id", not_null={"address", "kind", "at"}, if_not_exists=True)
        sdb["bounce_log"].create_index(["address"], if_not_exists=True)
        sdb["removed"].create({"id": int, "address": str, "at": int, "reason": str},
                              pk="id", not_null={"address", "at", "reason"}, if_not_exists=True)

    def _log(self, conn, address: str, number: int | None, kind: str, text: str, now: int):
        conn.execute("INSERT INTO bounce_log (address, number, kind, at, text) "
                     "VALUES (?, ?, ?, ?, ?)", (address, number, kind, now, text[:TEXT_LIMIT]))

    def record_bounce(self, address: str, number: int | None, text: str, now: int) -> bool:
        """Record a distribution bounce; False (nothing stored) for a non-subscriber."""
        canonical = normalize_address(address)
        if canonical is None:
            return False
        with self.db.transaction() as conn:
            if not self.db.is_subscriber(canonical):
                return False
            self._log(conn, canonical, number, "post", text, now)
            conn.execute(
                "INSERT INTO bounce_state (address, state, first, last, count) "
                "VALUES (?, ?, ?, ?, 1) ON CONFLICT(address) DO UPDATE "
                "SET count = count + 1, last = excluded.last",
                (canonical, State.BOUNCING.value, now, now))
        return True

    def _notice_bounced(self, address: str, token: str, action: str, state: State,
                        column: str, now: int) -> str | None:
        """The canonical address when ``token`` is the live cookie of that notice."""
        canonical = normalize_address(address)
        if canonical is None or not cookies.check_cookie(
                self.key, self.list_address, action, canonical, token, now, cookies.BOUNCE_WINDOW):
            return None
        row = self.db.conn.execute(
            f"SELECT state, {column} FROM bounce_state WHERE address = ?", (canonical,)).fetchone()
        issued = cookies.split_cookie(token)[0]  # type: ignore[index]
        if row is None or row[0] != state.value or row[1] != issued:
            return None
        return canonical

    def record_warn_bounce(self, address: str, token: str, text: str, now: int) -> bool:
        """A warning we sent bounced; True when it was our current warning."""
        with self.db.transaction() as conn:
            canonical = self._notice_bounced(address, token, "W", State.WARNED, "warned_at", now)
            if canonical is None:
                return False
            self._log(conn, canonical, None, "warn", text, now)
            conn.execute("UPDATE bounce_state SET warn_bounced_at = coalesce(warn_bounced_at, ?) "
                         "WHERE address = ?", (now, canonical))
        return True

    def record_probe_bounce(self, address: str, token: str, text: str, now: int) -> bool:
        """Our current probe bounced: unsubscribe the address. True when removed."""
        with self.db.transaction() as conn:
            canonical = self._notice_bounced(address, token, "P", State.PROBED, "probed_at", now)
            if canonical is None:
                return False
            self._log(conn, canonical, None, "probe", text, now)
            local, _, domain = canonical.rpartition("@")
            conn.execute("DELETE FROM subscribers WHERE domain = ? AND local = ?", (domain, local))
            conn.execute("INSERT OR REPLACE INTO changes (address, at) VALUES (?, ?)",
                         (canonical, now))
            conn.execute("INSERT INTO removed (address, at, reason) VALUES (?, ?, ?)",
                         (canonical, now, "bounce probe bounced"))
            conn.execute("DELETE FROM bounce_state WHERE address = ?", (canonical,))
        return True

    def _numbers(self, address: str) -> tuple[int, ...]:
        rows = self.db.conn.execute(
            "SELECT DISTINCT number FROM bounce_log WHERE address = ? AND number IS NOT NULL "
            "ORDER BY number", (address,))
        return tuple(r[0] for r in rows)

    def _step(self, conn, row: tuple, now: int) -> Notice | None:
        address, state, first, last, count, warned_at, warn_bounced_at, probed_at = row
        t = self.timeout
        if not self.db.is_subscriber(address):
            _forget(conn, address)
            return None
        state = State(state)
        if state is State.BOUNCING:
            if count >= self.threshold and now - first >= t:
                return self._send(conn, address, "warn", "W", State.WARNED, "warned_at", now)
            if now - last >= t:
                _forget(conn, address)
        elif state is State.WARNED and now - warned_at >= t:
            if warn_bounced_at is not None:
                return self._send(conn, address, "probe", "P", State.PROBED, "probed_at", now)
            _forget(conn, address)
        elif state is State.PROBED and now - probed_at >= cookies.BOUNCE_WINDOW:
            _forget(conn, address)
        return None

    def _send(self, conn, address: str, kind: str, action: str, state: State, column: str,
              now: int) -> Notice:
        conn.execute(f"UPDATE bounce_state SET state = ?, {column} = ? WHERE address = ?",
                     (state.value, now, address))
        token = cookies.make_cookie(self.key, self.list_address, action, address, now)
        return Notice(address, kind, token, self._numbers(address))

    def take_due_notices(self, now: int) -> list[Notice]:
        """Advance every address whose time has come; return the notices to send now."""
        notices = []
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT address, state, first, last, count, warned_at, warn_bounced_at, "
                "probed_at FROM bounce_state ORDER BY address").fetchall()
            for row in rows:
                notice = self._step(conn, row, now)
                if notice is not None:
                    notices.append(notice)
        return notices

    def bouncing(self) -> list[BounceStatus]:
        """Every address with a bounce record, with its state (``ezlist bounces``)."""
        rows = self.db.conn.execute(
            "SELECT address, state, first, last, count FROM bounce_state ORDER BY address")
        return [BounceStatus(a, State(s), f, l, c, self._numbers(a)) for a, s, f, l, c in rows]

    def removed(self) -> list[Removal]:
        """Addresses removed for bouncing, oldest first (for the owner)."""
        rows = self.db.conn.execute("SELECT address, at, reason FROM removed ORDER BY id")
        return [Removal(*r) for r in rows]
