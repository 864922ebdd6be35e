"""DeliveryCache: RCPT-time answers kept while alias/ is unchanged, never longer than MAX_AGE."""

import os
import time

from mta.local import has_delivery, rcpt_cache
from mta.local.rcpt_cache import DeliveryCache


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _settle(alias, clock, age=60.0):
    """Date alias/ back, as if its last change was ``age`` seconds ago."""
    os.utime(alias, (clock.now - age, clock.now - age))


def _alias(tmp_path):
    alias = tmp_path / "alias"
    alias.mkdir(mode=0o755)
    os.chmod(alias, 0o755)
    return alias


def _symlinked(tmp_path, alias, name):
    target = tmp_path / f"target-{name}"
    target.write_text("./Maildir/\n")
    os.chmod(target, 0o644)
    os.symlink(target, alias / f".qmail-{name}")
    return target


def test_answer_is_cached_until_max_age(tmp_path):
    alias, clock = _alias(tmp_path), Clock()
    target = _symlinked(tmp_path, alias, "u")
    _settle(alias, clock)
    cache = DeliveryCache(alias, clock=clock)
    assert cache("u") is True
    assert cache("nobody") is False
    target.unlink()  # the symlink dangles now, alias/ itself did not change
    assert cache("u") is True  # cached
    clock.now += rcpt_cache.MAX_AGE + 1
    assert cache("u") is False  # expired, looked up again


def test_a_change_in_alias_is_seen_at_once(tmp_path):
    alias, clock = _alias(tmp_path), Clock()
    cache = DeliveryCache(alias, clock=clock)
    _settle(alias, clock)
    assert cache("v") is False
    (alias / ".qmail-v").write_text("./Maildir/\n")
    os.chmod(alias / ".qmail-v", 0o644)
    _settle(alias, clock, age=30.0)  # a different (still old) mtime
    assert cache("v") is True
    (alias / ".qmail-v").unlink()
    _settle(alias, clock, age=20.0)
    assert cache("v") is False


def test_recently_changed_directory_is_not_trusted(tmp_path):
    alias, clock = _alias(tmp_path), Clock()
    target = _symlinked(tmp_path, alias, "u")
    os.utime(alias, (clock.now, clock.now))  # changed just now: same-tick changes may hide
    cache = DeliveryCache(alias, clock=clock)
    assert cache("u") is True
    target.unlink()
    assert cache("u") is False  # not served from a cache


def test_entries_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(rcpt_cache, "MAX_ENTRIES", 50)
    alias, clock = _alias(tmp_path), Clock()
    _settle(alias, clock)
    cache = DeliveryCache(alias, clock=clock)
    for i in range(500):
        assert cache(f"probe{i}") is False
        assert len(cache._answers) <= 50


def test_unstatable_alias_directory_goes_to_has_delivery_each_time(tmp_path):
    alias, clock = tmp_path / "absent", Clock()
    cache = DeliveryCache(alias, clock=clock)
    assert cache("u") is has_delivery(alias, "u") is False
    alias.mkdir()
    os.chmod(alias, 0o755)
    (alias / ".qmail-u").write_text("./Maildir/\n")
    os.chmod(alias / ".qmail-u", 0o644)
    assert cache("u") is True  # nothing was cached while alias/ was missing
