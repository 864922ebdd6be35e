"""Bounce state machine: ok -> bouncing -> warned -> probed -> removed (LS7, LS9)."""


import pytest

from ezlist import addresses
from ezlist.bounces import BounceBook, State
from ezlist.cookies import make_cookie
from ezlist.listdir import read_key
from ezlist.subscribers import SubscriberDB

DAY = 86_400
T0 = 1_700_000_000
ALICE = "alice@local.test"


@pytest.fixture
def book(cfg):
    db = SubscriberDB(cfg.path / "subscribers.db")
    db.add_many([ALICE, "bob@local.test"], now=T0 - DAY)
    yield BounceBook(db, read_key(cfg.path), cfg.address, threshold=3, timeout=10 * DAY)
    db.close()


def test_bounce_for_non_subscriber_is_ignored(book):  # LS9
    assert not book.record_bounce("nobody@other.example", 12, "550 no", T0)
    assert not book.record_bounce("not an address", 12, "x", T0)
    assert book.bouncing() == []
    rows = book.db.conn.execute("SELECT count(*) FROM bounce_log").fetchone()[0]
    assert rows == 0


def test_full_cycle_removes_only_after_the_probe_bounces(cfg, book):
    for n, day in ((12, 0), (13, 1), (14, 2)):
        assert book.record_bounce("alice@LOCAL.test", n, f"550 gone ({n})", T0 + day * DAY)
    [status] = book.bouncing()
    assert (status.address, status.state, status.count, status.numbers) == \
        (ALICE, State.BOUNCING, 3, (12, 13, 14))
    assert book.take_due_notices(T0 + 9 * DAY) == []  # not yet 10 days
    [warn] = book.take_due_notices(T0 + 10 * DAY)
    assert (warn.address, warn.kind, warn.numbers) == (ALICE, "warn", (12, 13, 14))
    sender = addresses.warn_address(cfg.name, cfg.host, warn.token, ALICE)
    cmd = addresses.parse_command(cfg.name, sender.rpartition("@")[0])
    assert cmd.action is addresses.Action.BOUNCE_WARN and cmd.token == warn.token
    assert book.take_due_notices(T0 + 11 * DAY) == []
    assert book.record_warn_bounce(cmd.target, cmd.token, "warning bounced", T0 + 11 * DAY)
    assert book.take_due_notices(T0 + 19 * DAY) == []  # probe waits a timeout after the warning
    [probe] = book.take_due_notices(T0 + 20 * DAY)
    assert probe.kind == "probe" and book.bouncing()[0].state is State.PROBED
    assert book.db.is_subscriber(ALICE)
    assert book.record_probe_bounce(ALICE, probe.token, "probe bounced", T0 + 21 * DAY)
    assert not book.db.is_subscriber(ALICE) and book.db.is_subscriber("bob@local.test")
    [removal] = book.removed()
    assert (removal.address, removal.at, removal.reason) == \
        (ALICE, T0 + 21 * DAY, "bounce probe bounced")
    assert book.bouncing() == []
    # the probe cookie cannot be replayed once the address is gone
    assert not book.record_probe_bounce(ALICE, probe.token, "again", T0 + 22 * DAY)


def test_forged_distribution_bounces_never_remove(book):  # LS7
    for i in range(50):
        book.record_bounce(ALICE, 12, "forged", T0 + i)
    notices = []
    for day in range(0, 200, 5):
        notices += book.take_due_notices(T0 + day * DAY)
        book.record_bounce(ALICE, 12, "forged", T0 + day * DAY)
    assert notices and {n.kind for n in notices} == {"warn"}  # warnings, never a probe
    assert book.db.is_subscriber(ALICE) and book.removed() == []


def test_forged_probe_and_warn_bounces_are_refused(cfg, book):
    key = read_key(cfg.path)
    for i in range(3):
        book.record_bounce(ALICE, 12 + i, "x", T0)
    [warn] = book.take_due_notices(T0 + 10 * DAY)
    now = T0 + 11 * DAY
    # probe cookie while only warned; warn cookie made at another time; other address; garbage
    early_probe = make_cookie(key, cfg.address, "P", ALICE, T0 + 10 * DAY)
    assert not book.record_probe_bounce(ALICE, early_probe, "x", now)
    other_time = make_cookie(key, cfg.address, "W", ALICE, T0 + 10 * DAY - 1)
    assert not book.record_warn_bounce(ALICE, other_time, "x", now)
    assert not book.record_warn_bounce("bob@local.test", warn.token, "x", now)
    assert not book.record_warn_bounce(ALICE, "123.abcdefghijklmnop", "x", now)
    forged_key = make_cookie(b"x" * 32, cfg.address, "W", ALICE, T0 + 10 * DAY)
    assert not book.record_warn_bounce(ALICE, forged_key, "x", now)
    assert book.take_due_notices(T0 + 20 * DAY) == []  # warning did not bounce: back to ok
    assert book.bouncing() == [] and book.db.is_subscriber(ALICE)


def test_stale_bounces_expire_and_unsubscribed_addresses_are_dropped(book):
    book.record_bounce(ALICE, 12, "x", T0)
    book.record_bounce("bob@local.test", 12, "x", T0)
    book.db.remove_many(["bob@local.test"], now=T0 + 1)
    assert book.take_due_notices(T0 + 10 * DAY) == []  # alice: 1 < threshold, stale
    assert book.bouncing() == []


def test_state_survives_reopen(cfg, book):
    book.record_bounce(ALICE, 12, "x", T0)
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        again = BounceBook(db, read_key(cfg.path), cfg.address)
        assert [s.address for s in again.bouncing()] == [ALICE]
