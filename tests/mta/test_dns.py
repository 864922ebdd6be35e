"""mta.dns against a real DNS server on loopback (tests/dnsserver.py)."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import uvloop

from dnsserver import DnsServer
from mta.dns import AMBIG_MX, NO_MX, TEMP_DNS, Resolver
from mta.interfaces import PermFail, TempFail


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro):
    return asyncio.run(coro)


def resolver(server: DnsServer, **kw) -> Resolver:
    kw.setdefault("timeout", 2.0)
    return Resolver(server.nameservers, **kw)


ZONE = {
    "example.test": {"MX": [[20, "mx2.example.test"], [10, "mx1.example.test"],
                            [30, "mx3.example.test"]]},
    "mx1.example.test": {"A": ["127.0.0.11"]},
    "mx2.example.test": {"A": ["127.0.0.12"], "AAAA": ["::1"]},
    "mx3.example.test": {"A": ["127.0.0.13", "127.0.0.14"]},
}


# -- MX ordering ------------------------------------------------------------------


def test_mx_sorted_by_preference(dns_server):
    dns_server.set_zone(ZONE)
    r = resolver(dns_server)
    assert run(r.mx_hosts("Example.TEST.")) == [
        (10, "mx1.example.test"), (20, "mx2.example.test"), (30, "mx3.example.test")]
    got = run(r.destinations("example.test"))
    assert got[:3] == ["127.0.0.11", "127.0.0.12", "::1"]
    assert sorted(got[3:]) == ["127.0.0.13", "127.0.0.14"]  # one RRset: no order


def test_equal_preference_shuffled_every_call(dns_server):
    dns_server.set_zone({
        "eq.test": {"MX": [[5, "best.test"], [10, "a.test"], [10, "b.test"], [10, "c.test"]]},
    })
    r = resolver(dns_server, rng=random.Random(1234))
    orders = collections.Counter()
    for _ in range(300):
        mx = run(r.mx_hosts("eq.test"))
        assert mx[0] == (5, "best.test")
        assert sorted(mx[1:]) == [(10, "a.test"), (10, "b.test"), (10, "c.test")]
        orders[tuple(h for _, h in mx[1:])] += 1
    assert len(orders) == 6, orders  # every permutation shows up
    firsts = collections.Counter(order[0] for order in orders.elements())
    assert all(60 <= n <= 140 for n in firsts.values()), firsts  # about 1/3 each
    assert dns_server.count("eq.test", "MX") == 1  # shuffled from the cache


def test_implicit_mx_when_no_mx_records(dns_server):
    dns_server.set_zone({"plain.test": {"A": ["127.0.0.21"]}})
    r = resolver(dns_server)
    assert run(r.mx_hosts("plain.test")) == [(0, "plain.test")]
    assert run(r.destinations("plain.test")) == ["127.0.0.21"]


def test_implicit_mx_without_address_is_permanent(dns_server):
    dns_server.set_zone({"empty.test": {"CNAME": "nowhere.test"}, "nowhere.test": {}})
    assert run(resolver(dns_server).destinations("empty.test")) == PermFail(NO_MX, "5.4.4")


# -- classification ---------------------------------------------------------------------


def test_null_mx_is_permanent(dns_server):
    dns_server.set_zone({
        "nomail.test": {"behaviour": "nullmx", "A": ["127.0.0.1"]},
        "nomail2.test": {"MX": [[0, "."]]},
    })
    r = resolver(dns_server)
    for domain in ("nomail.test", "nomail2.test"):
        got = run(r.destinations(domain))
        assert isinstance(got, PermFail) and got.dsn == "5.1.10", got
        assert domain in got.reason and "null MX" in got.reason
    assert dns_server.count("nomail.test", "A") == 0  # no fallback to the A record


def test_nxdomain_is_permanent(dns_server):
    r = resolver(dns_server)
    expected = PermFail("Sorry, I couldn't find any host named gone.test. (#5.1.2)", "5.1.2")
    assert run(r.destinations("gone.test")) == expected
    assert run(r.mx_hosts("GONE.test")) == expected


def test_unparsable_name_is_permanent(dns_server):
    got = run(resolver(dns_server).destinations("a..b.test"))
    assert isinstance(got, PermFail) and got.dsn == "5.1.2"
    assert dns_server.queries == []


def test_servfail_and_refused_are_temporary(dns_server):
    dns_server.set_zone({"broken.test": {"behaviour": "servfail"},
                         "shut.test": {"behaviour": "refused"}})
    r = resolver(dns_server)
    assert run(r.destinations("broken.test")) == TempFail(TEMP_DNS, "4.1.2")
    assert run(r.destinations("shut.test")) == TempFail(TEMP_DNS, "4.1.2")


def test_timeout_is_temporary_and_does_not_block_other_domains(dns_server):
    dns_server.set_zone({"slow.test": {"behaviour": "timeout"}, **ZONE})
    r = resolver(dns_server, timeout=1.0)

    async def race():
        slow = asyncio.ensure_future(r.destinations("slow.test"))
        fast = asyncio.ensure_future(r.destinations("example.test"))
        start = time.monotonic()
        done, _ = await asyncio.wait({slow, fast}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {fast}, "the healthy domain waited for the hanging one"
        assert not slow.done()
        slow_result = await asyncio.wait_for(slow, timeout=10)
        return fast.result(), slow_result, time.monotonic() - start

    fast, slow, elapsed = run(race())
    assert fast[0] == "127.0.0.11"
    assert slow == TempFail(TEMP_DNS, "4.1.2")
    assert 0.9 <= elapsed < 6, elapsed


def test_mx_hosts_that_fail_are_skipped(dns_server):
    dns_server.set_zone({
        "mixed.test": {"MX": [[10, "gone.test"], [20, "ok.test"]]},
        "ok.test": {"A": ["127.0.0.31"]},
        "allgone.test": {"MX": [[10, "gone1.test"], [20, "gone2.test"]]},
        "soft.test": {"MX": [[10, "gone1.test"], [20, "sick.test"]]},
        "sick.test": {"behaviour": "servfail"},
    })
    r = resolver(dns_server)
    assert run(r.destinations("mixed.test")) == ["127.0.0.31"]
    assert run(r.destinations("allgone.test")) == PermFail(NO_MX, "5.4.4")
    assert run(r.destinations("soft.test")) == TempFail(TEMP_DNS, "4.1.2")


def test_cnamed_mx_target(dns_server):
    dns_server.set_zone({
        "alias.test": {"MX": [[10, "mail.alias.test"]]},
        "mail.alias.test": {"CNAME": "real.host.test"},
        "real.host.test": {"A": ["127.0.0.41"], "AAAA": ["::2"]},
    })
    assert run(resolver(dns_server).destinations("alias.test")) == ["127.0.0.41", "::2"]


# -- MX pointing at ourselves (DN4) -------------------------------------------------------


def test_best_mx_is_us_is_permanent(dns_server):
    dns_server.set_zone({
        "loop.test": {"MX": [[10, "me.test"], [20, "backup.test"]]},
        "me.test": {"A": ["127.0.0.9"]},
        "backup.test": {"A": ["127.0.0.51"]},
        "relayed.test": {"MX": [[5, "primary.test"], [10, "me.test"], [20, "backup.test"]]},
        "primary.test": {"A": ["127.0.0.52"]},
    })
    r = resolver(dns_server, local_ips=["127.0.0.9"])
    assert run(r.destinations("loop.test")) == PermFail(AMBIG_MX, "5.4.6")
    # we are a backup MX: only the hosts better than us are tried
    assert run(r.destinations("relayed.test")) == ["127.0.0.52"]
    assert run(resolver(dns_server).destinations("loop.test")) == ["127.0.0.9", "127.0.0.51"]


# -- addresses ---------------------------------------------------------------------------


def test_addresses_a_then_aaaa(dns_server):
    dns_server.set_zone({
        "dual.test": {"AAAA": ["::3"], "A": ["127.0.0.61"]},
        "v4only.test": {"A": ["127.0.0.62"], "behaviour": {"AAAA": "servfail"}},
        "sick.test": {"behaviour": "servfail"},
    })
    r = resolver(dns_server)
    assert run(r.addresses("dual.test")) == ["127.0.0.61", "::3"]
    assert run(r.addresses("v4only.test")) == ["127.0.0.62"]
    assert run(r.addresses("127.0.0.1")) == ["127.0.0.1"]
    assert run(r.addresses("0:0::1")) == ["::1"]  # literals, canonical form
    assert run(r.addresses("sick.test")) == TempFail(TEMP_DNS, "4.1.2")
    assert run(r.addresses("gone.test")) == PermFail(
        "Sorry, I couldn't find any host named gone.test. (#5.1.2)", "5.1.2")


def test_truncated_udp_answer_retried_over_tcp(dns_server):
    many = [f"127.0.1.{i}" for i in range(1, 60)]
    dns_server.set_zone({"big.test": {"A": many}, "tc.test": {"A": ["127.0.0.71"],
                                                              "behaviour": "truncate"}})
    r = resolver(dns_server)
    assert sorted(run(r.addresses("big.test"))) == sorted(many)
    assert run(r.addresses("tc.test")) == ["127.0.0.71"]
    transports = {(q.name, q.transport) for q in dns_server.queries if q.rdtype == "A"}
    assert ("big.test", "tcp") in transports and ("tc.test", "tcp") in transports


def test_second_nameserver_used_when_first_fails(dns_server):
    dns_server.set_zone({"example.test": {"behaviour": "servfail"}})
    with DnsServer(ZONE) as good:
        r = Resolver(dns_server.nameservers + good.nameservers, timeout=2.0)
        assert run(r.mx_hosts("example.test"))[0] == (10, "mx1.example.test")
    assert dns_server.count("example.test", "MX") >= 1


# -- caching ------------------------------------------------------------------------------


def test_positive_answers_cached_for_their_ttl(dns_server):
    dns_server.set_zone({
        "c.test": {"MX": [[10, "mx.c.test"]], "ttl": 60},
        "mx.c.test": {"A": ["127.0.0.81"], "ttl": 600},
    })
    clock = FakeClock()
    r = resolver(dns_server, clock=clock)
    assert run(r.destinations("c.test")) == ["127.0.0.81"]
    assert run(r.destinations("c.test")) == ["127.0.0.81"]
    assert dns_server.count("c.test", "MX") == 1
    assert dns_server.count("mx.c.test", "A") == 1
    clock.now += 59
    run(r.destinations("c.test"))
    assert dns_server.count("c.test", "MX") == 1
    clock.now += 2  # past the MX TTL, not the A TTL
    assert run(r.destinations("c.test")) == ["127.0.0.81"]
    assert dns_server.count("c.test", "MX") == 2
    assert dns_server.count("mx.c.test", "A") == 1


def test_negative_answers_cached_for_soa_minimum():
    with DnsServer({"plain.test": {"A": ["127.0.0.91"]}}, negative_ttl=30) as server:
        clock = FakeClock()
        r = resolver(server, clock=clock)
        for _ in range(2):
            assert isinstance(run(r.destinations("gone.test")), PermFail)
            assert run(r.mx_hosts("plain.test")) == [(0, "plain.test")]
        assert server.count("gone.test", "MX") == 1
        assert server.count("plain.test", "MX") == 1  # NODATA cached too
        clock.now += 31
        run(r.destinations("gone.test"))
        assert server.count("gone.test", "MX") == 2


def test_temporary_failures_not_cached(dns_server):
    dns_server.set_zone({"broken.test": {"behaviour": "servfail"}})
    r = resolver(dns_server)
    run(r.destinations("broken.test"))
    dns_server.set_zone(ZONE | {"broken.test": {"MX": [[10, "mx1.example.test"]]}})
    assert run(r.destinations("broken.test")) == ["127.0.0.11"]


def test_concurrent_lookups_share_one_query(dns_server):
    dns_server.set_zone(ZONE)
    r = resolver(dns_server)

    async def many():
        return await asyncio.gather(*(r.destinations("example.test") for _ in range(20)))

    results = run(many())
    assert all(res[0] == "127.0.0.11" for res in results)
    assert dns_server.count("example.test", "MX") == 1
    assert dns_server.count("mx1.example.test", "A") == 1


def test_cache_size_is_capped(dns_server):
    dns_server.set_zone({f"h{i}.test": {"A": [f"127.0.2.{i}"]} for i in range(3)})
    r = resolver(dns_server, cache_size=2)
    for i in (0, 1, 2, 0):
        assert run(r.addresses(f"h{i}.test")) == [f"127.0.2.{i}"]
    assert dns_server.count("h0.test", "A") == 2  # evicted, asked again
    assert dns_server.count("h2.test", "A") == 1


def test_runs_under_uvloop(dns_server):
    dns_server.set_zone(ZONE)
    r = resolver(dns_server)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(r.destinations("example.test"))[0] == "127.0.0.11"


# -- the fixture as a separate process (for end-to-end tests) ------------------------------


def test_dnsserver_runs_standalone(tmp_path):
    zone_file, log = tmp_path / "zone.json", tmp_path / "queries.jsonl"
    zone_file.write_text(json.dumps(ZONE))
    script = Path(__file__).parents[1] / "dnsserver.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--zone", str(zone_file), "--log", str(log)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "dnsserver.py printed no port within 15 s"
        port = int(proc.stdout.readline())
        r = Resolver([("127.0.0.1", port)], timeout=2.0)
        assert run(r.destinations("example.test"))[0] == "127.0.0.11"
        zone_file.write_text(json.dumps({"new.test": {"A": ["127.0.0.99"]}}))
        proc.send_signal(signal.SIGHUP)  # reload the zone file
        deadline = time.monotonic() + 10
        while run(r.addresses("new.test")) != ["127.0.0.99"]:
            assert time.monotonic() < deadline, "zone not reloaded on SIGHUP within 10 s"
            r.clear_cache()
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert ["example.test", "MX", "udp"] in logged and ["new.test", "A", "udp"] in logged


def test_dead_first_nameserver_leaves_time_for_the_second(dns_server):
    dns_server.set_zone({"example.test": {"behaviour": "timeout"}})
    with DnsServer(ZONE) as good:
        r = Resolver(dns_server.nameservers + good.nameservers, timeout=2.0)
        start = time.monotonic()
        assert run(r.mx_hosts("example.test"))[0] == (10, "mx1.example.test")
        assert time.monotonic() - start < 5
    assert dns_server.count("example.test", "MX") >= 1
