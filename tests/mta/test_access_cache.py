"""The per-address answer cache of ``AccessRules`` and what the listener relies on.

Unit tests of the cache (bounded, one per rules object), then the listener over
real loopback sockets: a reloaded policy's rules apply to an address whose answer
the old rules had cached, and accepted sockets have TCP_NODELAY (set by the event
loop's transport; smtpd no longer sets it itself).
"""

from __future__ import annotations

import asyncio
import socket

import uvloop

from mta import access
from mta.access import DEFAULT_RULES, Action, parse_access
from mta.smtp.policy import SmtpPolicy
from mta.smtpd import open_smtp_server


def test_lookup_answers_are_cached_per_rules_object_and_bounded():
    rules = parse_access("192.0.2.0/24:deny\n127.0.0.1:relay\n")
    assert rules.lookup("192.0.2.7") is Action.DENY
    assert rules.lookup("192.0.2.7") is Action.DENY  # the second answer is the cached one
    assert rules._cache == {"192.0.2.7": Action.DENY}
    # Reloading the file gives a new rules object: nothing cached by the old one leaks in.
    assert DEFAULT_RULES.lookup("127.0.0.1") is Action.RELAY
    assert parse_access("127.0.0.1:deny\n").lookup("127.0.0.1") is Action.DENY
    for i in range(access.CACHE_MAX + 10):
        ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        assert rules.lookup(ip) is Action.ALLOW
        assert len(rules._cache) <= access.CACHE_MAX
    assert rules.lookup("192.0.2.7") is Action.DENY  # still right after the cache was emptied
    assert rules == parse_access("192.0.2.0/24:deny\n127.0.0.1:relay\n")  # the cache is not compared


async def _greeting(port: int) -> tuple[str, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    line = await asyncio.wait_for(reader.readline(), 10)
    return line.decode("latin-1"), writer


async def _reload_scenario() -> tuple[str, str, int]:
    listeners = []

    async def submit(sender, recipients, data):
        return 1

    pol = SmtpPolicy(me="mx.local.test", is_local_domain=lambda d: True,
                     access=parse_access("127.0.0.1:allow\n"))
    server = await open_smtp_server("127.0.0.1", 0, policy=pol, submit=submit,
                                    on_listener=listeners.append)
    port = server.sockets[0].getsockname()[1]
    try:
        first, w1 = await _greeting(port)
        session = next(iter(listeners[0].sessions))
        nodelay = session.transport.get_extra_info("socket").getsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY)
        w1.close()
        listeners[0].policy = SmtpPolicy(me="mx.local.test", is_local_domain=lambda d: True,
                                         access=parse_access("127.0.0.1:deny\n"))
        second, w2 = await _greeting(port)
        w2.close()
    finally:
        server.close()
    return first, second, nodelay


def test_reloaded_rules_apply_to_an_address_cached_before_and_nodelay_is_on():
    first, second, nodelay = uvloop.run(_reload_scenario())
    assert first.startswith("220 "), first
    assert second.startswith("554 "), second
    assert nodelay != 0
