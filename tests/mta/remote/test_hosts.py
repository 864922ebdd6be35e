"""HostState, sans-I/O: adaptive per-host concurrency (AIMD) and qmail's timeout table.

The clock is a plain number passed in; nothing here sleeps or opens a socket. The
worker calls ``connect_failed`` for every way a connection can fail to give a working
session (refused, connect timeout, 421 or another 4xx/5xx greeting), so one method
covers them all; what differs is how many other connections to the host are alive.
"""

from __future__ import annotations

import pytest

from mta.remote.hosts import DOWN_MAX, DOWN_SECONDS, GROW_AFTER, HostState, Txn

T0 = 1000.0


def host(max_limit: int = 10, queued: int = 100) -> HostState:
    h = HostState(("127.0.1.1", 25), max_limit=max_limit)
    for i in range(queued):
        h.queue.append(Txn(i, "s@x.test", [(i, f"u{i}@y.test")], []))
    return h


def fail_while(h: HostState, *, established: int, active: int, now: float = T0) -> bool:
    """One failed connection while ``established`` others work and ``active`` run in all."""
    h.established, h.active = established, active
    down = h.connect_failed(now)
    h.active -= 1  # the failed connection's task ends
    return down


def test_starts_at_the_configured_ceiling_and_wants_no_more_than_queued():
    h = host(max_limit=10, queued=4)
    assert h.limit == 10
    assert h.wanted() == 4  # never more connections than transactions
    h.queue.extend(h.queue.copy() * 5)
    assert h.wanted() == 10
    h.active = 7
    assert h.wanted() == 3
    h.active = 12
    assert h.wanted() == 0


def test_explicit_starting_limit_is_kept():
    assert HostState(("h", 25), max_limit=10, limit=3).limit == 3


def test_refusal_while_others_work_drops_to_what_works_without_going_down():
    h = host(max_limit=10)
    assert fail_while(h, established=3, active=8) is False
    assert h.limit == 3  # the host showed it takes three sessions
    assert not h.is_down(T0)
    assert h.down_until == 0.0 and h.down_for == 0.0


def test_decrease_never_raises_the_ceiling_and_never_reaches_zero():
    h = host(max_limit=10)
    h.limit = 2
    assert fail_while(h, established=5, active=6) is False
    assert h.limit == 2  # min(limit, established): a failure never raises it
    assert fail_while(h, established=0, active=3) is False
    assert h.limit == 1  # others still connecting: busy, not down; at least one
    assert not h.is_down(T0)


def test_failure_with_nothing_working_halves_and_marks_down():
    h = host(max_limit=10)
    assert fail_while(h, established=0, active=1) is True
    assert h.limit == 5  # multiplicative decrease
    assert h.down_for == DOWN_SECONDS
    assert h.down_until == T0 + DOWN_SECONDS
    assert h.is_down(T0) and h.is_down(T0 + DOWN_SECONDS - 0.001)
    assert not h.is_down(T0 + DOWN_SECONDS)  # skipped for a while only


def test_down_time_doubles_on_repeated_failures_up_to_the_cap():
    h = host(max_limit=64)
    now, seen = T0, []
    for _ in range(12):
        assert fail_while(h, established=0, active=1, now=now) is True
        seen.append(h.down_for)
        assert h.down_until == now + h.down_for
        now = h.down_until  # the next attempt comes when the host is due again
    assert seen == [min(DOWN_MAX, DOWN_SECONDS * 2 ** i) for i in range(12)]
    assert max(seen) == DOWN_MAX and seen[-1] == DOWN_MAX
    assert all(b == min(DOWN_MAX, 2 * a) for a, b in zip(seen, seen[1:]))
    assert h.limit == 1  # halved each time, never below one


def test_a_success_resets_the_down_time():
    h = host(max_limit=10)
    for i in range(3):
        fail_while(h, established=0, active=1, now=T0 + 1000 * i)
    assert h.down_for == 4 * DOWN_SECONDS
    h.transaction_done()
    assert h.down_for == 0.0
    now = T0 + 10_000
    assert fail_while(h, established=0, active=1, now=now) is True
    assert h.down_for == DOWN_SECONDS and h.down_until == now + DOWN_SECONDS


def test_additive_increase_every_grow_after_successes_up_to_the_cap():
    h = host(max_limit=4)
    fail_while(h, established=1, active=2)
    assert h.limit == 1
    for want in (2, 3, 4):
        for _ in range(GROW_AFTER - 1):
            h.transaction_done()
        assert h.limit == want - 1  # not one success early
        h.transaction_done()
        assert h.limit == want  # +1, not doubled
    for _ in range(5 * GROW_AFTER):
        h.transaction_done()
    assert h.limit == 4  # never above the configured maximum


def test_a_failure_restarts_the_success_count():
    h = host(max_limit=10)
    fail_while(h, established=2, active=3)
    assert h.limit == 2
    for _ in range(GROW_AFTER - 1):
        h.transaction_done()
    fail_while(h, established=2, active=3)
    assert h.limit == 2
    for _ in range(GROW_AFTER - 1):
        h.transaction_done()
    assert h.limit == 2  # the successes before the failure do not count
    h.transaction_done()
    assert h.limit == 3


def test_throttled_host_costs_one_refusal_per_grow_after_deliveries():
    """A host that takes 3 sessions: the ceiling oscillates 3 -> 4 -> 3, one refusal each."""
    h = host(max_limit=10)
    fail_while(h, established=3, active=4)
    refusals = 0
    for _ in range(20 * GROW_AFTER):
        h.transaction_done()
        if h.limit > 3:  # the fourth connection is turned away
            refusals += 1
            fail_while(h, established=3, active=4)
            assert h.limit == 3
    assert refusals == 20


@pytest.mark.parametrize("rate,n,span", [(20.0, 21, 1.0), (4.0, 5, 1.0), (0.5, 3, 4.0)])
def test_rate_books_slots_one_over_rate_apart(rate, n, span):
    h = HostState(("h", 25), max_limit=5, rate=rate)
    starts = [T0 + h.delay_for_rate(T0) for _ in range(n)]  # n connections ask at once
    assert starts[0] == T0
    assert starts[-1] - starts[0] == pytest.approx(span)
    assert all(b - a == pytest.approx(1 / rate) for a, b in zip(starts, starts[1:]))


def test_rate_does_not_bank_idle_time():
    h = HostState(("h", 25), max_limit=5, rate=10.0)
    assert h.delay_for_rate(T0) == 0.0
    assert h.delay_for_rate(T0 + 60) == 0.0  # long idle: no burst credit, no wait
    assert h.delay_for_rate(T0 + 60) == pytest.approx(0.1)


def test_no_rate_means_no_wait():
    h = HostState(("h", 25), max_limit=5)
    assert [h.delay_for_rate(T0) for _ in range(100)] == [0.0] * 100


def test_a_failed_tls_handshake_keeps_tls_off_for_a_while():
    from mta.remote.hosts import TLS_RETRY_AFTER

    h = HostState(("127.0.1.9", 25), max_limit=5)
    assert h.tls_wanted(100.0)
    h.tls_failed(100.0)
    assert not h.tls_wanted(100.0 + TLS_RETRY_AFTER - 1)
    assert h.tls_wanted(100.0 + TLS_RETRY_AFTER)
