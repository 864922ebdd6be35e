"""End to end: per-host concurrency overrides and connection reuse across domains.

qmail-queue shim -> `mta send` (one remote worker) -> sinks on 127.0.2.x. The
messages are injected before the scheduler starts, so the worker gets the whole job
at once and the bounds below are exact, not timing-dependent.
"""

from __future__ import annotations

import pytest

from tests.sink import Sink




def delivered(*sinks) -> list[str]:
    return sorted(r for s in sinks for m in s.messages for r in m.rcpts)


def test_hostconcurrency_override_caps_one_host_only(inst):
    with Sink("127.0.2.1", delay=0.1) as low, Sink("127.0.2.2", delay=0.1) as high:
        inst.route([("low.test", "127.0.2.1", low.port), ("high.test", "127.0.2.2", high.port)])
        inst.control("concurrencyperhost", "10\n")
        inst.control("hostconcurrency", "127.0.2.1:2\n")
        rcpts = [f"u{i}@{d}" for i in range(40) for d in ("low.test", "high.test")]
        assert inst.inject("l-@mx.test-@[]", rcpts) == 0
        inst.start("--workers", "1")
        low.wait_for(40, 60)
        high.wait_for(40, 60)
        inst.wait_empty(30)
        assert low.peak_sessions == 2, f"override 2, peak {low.peak_sessions}"
        assert high.peak_sessions > 2, f"concurrencyperhost 10, peak {high.peak_sessions}"
        assert high.peak_sessions <= 10
        assert low.refused == high.refused == 0
        assert delivered(low, high) == sorted(rcpts)


@pytest.mark.parametrize("verp", [True, False])
def test_domains_sharing_a_host_share_its_connections(inst, verp):
    per_host = 3
    domains = [f"d{i}.test" for i in range(40)]
    with Sink("127.0.2.3") as s:
        inst.route([(d, "127.0.2.3", s.port) for d in domains])
        inst.control("concurrencyperhost", f"{per_host}\n")
        if verp:  # one message, one transaction a recipient: 200 transactions
            rcpts = [f"u{i}@{d}" for i in range(5) for d in domains]
            assert inst.inject("l-@mx.test-@[]", rcpts) == 0
            transactions = len(rcpts)
        else:  # 20 messages, each one transaction carrying its 3 recipients in 3 domains
            rcpts = []
            for m in range(20):
                mine = [f"m{m}@{domains[(m + k) % len(domains)]}" for k in range(3)]
                assert inst.inject("owner@mx.test", mine) == 0
                rcpts += mine
            transactions = 20
        inst.start("--workers", "1")
        s.wait_for(len(rcpts), 60)
        inst.wait_empty(30)
        assert delivered(s) == sorted(rcpts)  # every recipient exactly once
        assert len(s.messages) == transactions
        # every transaction went over one of at most concurrencyperhost connections
        assert s.total_sessions <= per_host, (
            f"{s.total_sessions} sessions for {transactions} transactions in {len(domains)} domains")
        if verp:
            for m in s.messages:
                [r] = m.rcpts
                box, dom = r.split("@")
                assert m.sender == f"l-{box}={dom}@mx.test"
        else:
            assert all(m.sender == "owner@mx.test" and len(m.rcpts) == 3 for m in s.messages)
