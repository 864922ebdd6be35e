from pathlib import Path

from ezlist.cookies import make_cookie
from ezlist.subscribers import Confirmation, SubscriberDB, normalize_address

KEY = b"s" * 32
LIST = "sos@lists.local.test"
NOW = 1_700_000_000


def test_bulk_subscribe_200k_from_an_iterator(tmp_path: Path):
    db = SubscriberDB(tmp_path / "subscribers.db")
    n = 200_000
    gen = (f"user{i}@Domain{i % 97}.Example" for i in range(n))
    result = db.add_many(gen, how="import", now=NOW)
    assert (result.changed, result.unchanged, result.invalid) == (n, 0, 0)
    assert db.count() == n
    again = db.add_many((f"user{i}@domain{i % 97}.example" for i in range(0, n, 2)), now=NOW)
    assert (again.changed, again.unchanged) == (0, n // 2)
    streamed = list(db.iter_addresses())
    assert len(streamed) == n and len(set(streamed)) == n
    keys = [(a.rpartition("@")[2], a.rpartition("@")[0]) for a in streamed]
    assert keys == sorted(keys)
    assert streamed[0].endswith("@domain0.example")
    removed = db.remove_many(f"user{i}@DOMAIN{i % 97}.example" for i in range(0, n, 2))
    assert (removed.changed, removed.unchanged) == (n // 2, 0)
    assert db.count() == n // 2
    assert not db.is_subscriber("user0@domain0.example")
    assert db.is_subscriber("user1@DOMAIN1.example")
    db.close()


def test_case_duplicates_and_invalid(tmp_path: Path):
    with SubscriberDB(tmp_path / "s.db") as db:
        lines = ["Jo@Example.ORG\n", "Jo@example.org", "jo@example.org", "", "no-at",
                 "a b@c.test", "<x@y.test>", "x@", "@y.test"]
        result = db.add_many(lines, how="cli", now=NOW)
        assert (result.changed, result.unchanged, result.invalid) == (2, 1, 6)
        assert "<x@y.test>" in result.invalid_samples
        assert sorted(db.iter_addresses()) == ["Jo@example.org", "jo@example.org"]
        info = db.info("JO@EXAMPLE.ORG".replace("JO", "Jo"))
        assert (info.address, info.added, info.how) == ("Jo@example.org", NOW, "cli")
        assert [len(b) for b in db.iter_batches(1)] == [1, 1]
    assert normalize_address(" a@B.c ") == "a@b.c"


def test_data_survives_reopen(tmp_path: Path):
    with SubscriberDB(tmp_path / "s.db") as db:
        db.add_many(["a@b.test"], now=NOW)
    with SubscriberDB(tmp_path / "s.db") as db:
        assert db.is_subscriber("a@b.test") and db.count() == 1


def test_confirmation_is_single_use_and_replay_after_unsubscribe_does_nothing(tmp_path: Path):
    with SubscriberDB(tmp_path / "s.db") as db:
        sc = make_cookie(KEY, LIST, "sc", "alice@local.test", NOW)
        assert db.apply_confirmed(KEY, LIST, "sc", "alice@local.test", sc, "sc", NOW + 5) \
            is Confirmation.APPLIED
        assert db.apply_confirmed(KEY, LIST, "sc", "alice@local.test", sc, "sc", NOW + 6) \
            is Confirmation.REFUSED
        uc = make_cookie(KEY, LIST, "uc", "alice@local.test", NOW + 10)
        assert db.apply_confirmed(KEY, LIST, "uc", "alice@local.test", uc, "", NOW + 20) \
            is Confirmation.APPLIED
        assert not db.is_subscriber("alice@local.test")
        # replay of the used sc cookie, and of a never-used one made before the unsubscribe
        unused = make_cookie(KEY, LIST, "sc", "alice@local.test", NOW + 1)
        for token in (sc, unused):
            assert db.apply_confirmed(KEY, LIST, "sc", "alice@local.test", token, "", NOW + 30) \
                is Confirmation.REFUSED
        assert not db.is_subscriber("alice@local.test")
        fresh = make_cookie(KEY, LIST, "sc", "alice@local.test", NOW + 40)
        assert db.apply_confirmed(KEY, LIST, "sc", "alice@local.test", fresh, "", NOW + 41) \
            is Confirmation.APPLIED


def test_confirmation_refuses_foreign_cookies(tmp_path: Path):
    with SubscriberDB(tmp_path / "s.db") as db:
        for_alice = make_cookie(KEY, LIST, "sc", "alice@local.test", NOW)
        uc_bob = make_cookie(KEY, LIST, "uc", "bob@local.test", NOW)
        assert db.apply_confirmed(KEY, LIST, "sc", "bob@local.test", for_alice, "", NOW) \
            is Confirmation.REFUSED  # LS2: cookie for alice at bob's address
        assert db.apply_confirmed(KEY, LIST, "sc", "bob@local.test", uc_bob, "", NOW) \
            is Confirmation.REFUSED  # LS2: uc cookie at the sc address
        expired = make_cookie(KEY, LIST, "sc", "bob@local.test", NOW - 1_000_001)
        future = make_cookie(KEY, LIST, "sc", "bob@local.test", NOW + 60)
        for token in (expired, future, "garbage"):  # LS3
            assert db.apply_confirmed(KEY, LIST, "sc", "bob@local.test", token, "", NOW) \
                is Confirmation.REFUSED
        assert db.count() == 0


def test_noop_and_redeem(tmp_path: Path):
    with SubscriberDB(tmp_path / "s.db") as db:
        db.add_many(["carol@local.test"], now=NOW - 100)
        sc = make_cookie(KEY, LIST, "sc", "carol@local.test", NOW)
        assert db.apply_confirmed(KEY, LIST, "sc", "carol@local.test", sc, "", NOW) \
            is Confirmation.NOOP
        other = make_cookie(KEY, LIST, "sc", "dave@local.test", NOW)
        assert db.redeem_cookie(KEY, LIST, "sc", "dave@local.test", other, NOW)
        assert not db.redeem_cookie(KEY, LIST, "sc", "dave@local.test", other, NOW)
        assert not db.is_subscriber("dave@local.test")


def test_email_commands_do_not_pay_for_sqlite_utils_once_the_schema_exists(tmp_path):
    """Every email command starts a Python process: sqlite-utils (~90 ms to import) is
    loaded only to create the schema, never to open an existing list database."""
    import subprocess
    import sys
    db_path = tmp_path / "subscribers.db"
    from ezlist.bounces import BounceBook
    with SubscriberDB(db_path) as made:  # made once, as ezlist make does
        BounceBook(made, b"k" * 32, "l@h")
    code = ("import sys; from ezlist import deliver; from ezlist.subscribers import SubscriberDB;"
            "from ezlist.bounces import BounceBook;"
            f"db = SubscriberDB({str(db_path)!r}); BounceBook(db, b'k' * 32, 'l@h');"
            "db.add_many(['a@b.test']); print('sqlite_utils' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "False"
