"""smtproutes parsing, route precedence and destination resolution (real loopback DNS)."""

from __future__ import annotations

import asyncio

import pytest

from mta.dns import AMBIG_MX, TEMP_DNS, Resolver
from mta.interfaces import PermFail, TempFail
from mta.remote.routes import Route, parse_routes, resolve_destination, route_for


def run(coro):
    return asyncio.run(coro)


# -- parsing ---------------------------------------------------------------------------


def test_every_syntax_form():
    lines = [
        "# comment",
        "",
        "Example.COM:Relay.Example.NET  ",
        "port.test:relay.test:2525",
        ".sub.test:[192.0.2.7]",
        "lit.test:[192.0.2.8]:26",
        "v6.test:[IPv6:2001:DB8::1]:27",
        "v6b.test:[IPv6:::1]",
        "bare.test:192.0.2.9",
        "usemx.test:",
        "mxport.test::2626",
        "[192.0.2.10]:relay.test",
        ":smarthost.test",
    ]
    assert parse_routes(lines) == (
        Route("example.com", "relay.example.net", 25),
        Route("port.test", "relay.test", 2525),
        Route(".sub.test", "192.0.2.7", 25),
        Route("lit.test", "192.0.2.8", 26),
        Route("v6.test", "2001:db8::1", 27),
        Route("v6b.test", "::1", 25),
        Route("bare.test", "192.0.2.9", 25),
        Route("usemx.test", "", 25),
        Route("mxport.test", "", 2626),
        Route("[192.0.2.10]", "relay.test", 25),
        Route("", "smarthost.test", 25),
    )


@pytest.mark.parametrize(
    "line, words",
    [
        ("no-colon.test", "expected domain:relay"),
        ("a.test:relay.test:", "bad port"),
        ("a.test:relay.test:0", "bad port"),
        ("a.test:relay.test:65536", "bad port"),
        ("a.test:relay.test:25x", "bad port"),
        ("a.test:relay.test:25:26", "too many colons"),
        ("a.test:2001:db8::1", "too many colons"),
        ("a.test:[192.0.2.300]", "bad IP literal"),
        ("a.test:[IPv6:192.0.2.1]", "bad IP literal"),
        ("a.test:[2001:db8::1]", "bad IP literal"),
        ("a.test:[192.0.2.1", "unclosed ["),
        ("a.test:[192.0.2.1]x", "expected :port"),
        ("a.test:relay .test", "blank inside"),
        ("a..test:relay.test", "bad domain"),
        ("a.test:relay..test", "bad relay host"),
        ("a/b.test:relay.test", "bad domain"),
        ("[not-an-ip]:relay.test", "bad domain"),
    ],
)
def test_bad_lines_name_the_line(line, words):
    with pytest.raises(ValueError) as info:
        parse_routes(["# first", "ok.test:relay.test", line])
    line_no, msg = info.value.args
    assert line_no == 3
    assert words in msg and line.strip() in msg


# -- precedence -------------------------------------------------------------------------


ROUTES = parse_routes([
    ":default.test",
    ".example.com:suffix.test",
    ".deep.example.com:deep.test",
    "example.com:exact.test",
    "example.com:second-exact.test",
    "mx.example.com:",
])


@pytest.mark.parametrize(
    "domain, host",
    [
        ("example.com", "exact.test"),  # exact beats .suffix; first line wins
        ("EXAMPLE.com", "exact.test"),
        ("a.example.com", "suffix.test"),
        ("a.deep.example.com", "deep.test"),  # the longest suffix wins
        ("deep.example.com", "suffix.test"),  # .deep.example.com is subdomains only
        ("mx.example.com", ""),  # an exception: use MX
        ("other.org", "default.test"),
        ("[192.0.2.1]", "default.test"),  # the default route takes literals too
    ],
)
def test_route_precedence(domain, host):
    assert route_for(domain, ROUTES).host == host


def test_no_route_without_default():
    assert route_for("other.org", parse_routes(["example.com:relay.test"])) is None


# -- resolution ----------------------------------------------------------------------


ZONE = {
    "example.test": {"MX": [[10, "mx.example.test"]]},
    "mx.example.test": {"A": ["127.0.0.11"]},
    "relay.test": {"A": ["127.0.0.21"], "AAAA": ["::1"],
                   "MX": [[10, "not-used.test"]]},
    "gone.test": {"behaviour": "nxdomain"},
    "sick.test": {"behaviour": "servfail"},
}


@pytest.fixture
def resolver(dns_server):
    dns_server.set_zone(ZONE)
    return Resolver(dns_server.nameservers, timeout=2.0, local_ips=["127.0.0.9"])


def test_no_route_uses_mx(resolver):
    assert run(resolve_destination("example.test", (), resolver)) == [("127.0.0.11", 25)]


def test_relay_host_resolved_by_address_not_mx(resolver, dns_server):
    routes = parse_routes(["example.test:relay.test:2525"])
    assert run(resolve_destination("Example.Test.", routes, resolver)) == [
        ("127.0.0.21", 2525), ("::1", 2525)]
    assert dns_server.count("relay.test", "MX") == 0
    assert dns_server.count("example.test") == 0  # the route replaces the domain's DNS


def test_literal_relay_needs_no_dns(resolver, dns_server):
    routes = parse_routes([":[127.0.0.31]:2626"])
    assert run(resolve_destination("anything.test", routes, resolver)) == [("127.0.0.31", 2626)]
    assert dns_server.queries == []


def test_empty_relay_uses_mx_with_the_route_port(resolver):
    routes = parse_routes([":[127.0.0.31]", "example.test::2727"])
    assert run(resolve_destination("example.test", routes, resolver)) == [("127.0.0.11", 2727)]


def test_domain_literal_recipient(resolver, dns_server):
    assert run(resolve_destination("[127.0.0.41]", (), resolver)) == [("127.0.0.41", 25)]
    assert run(resolve_destination("[IPv6:0::1]", (), resolver)) == [("::1", 25)]
    assert run(resolve_destination("[127.0.0.9]", (), resolver)) == PermFail(AMBIG_MX, "5.4.6")
    bad = run(resolve_destination("[bogus]", (), resolver))
    assert isinstance(bad, PermFail) and bad.dsn == "5.1.2"
    assert dns_server.queries == []


def test_relay_that_does_not_resolve_is_temporary(resolver):
    got = run(resolve_destination("x.test", parse_routes([":gone.test"]), resolver))
    assert isinstance(got, TempFail) and got.dsn == "4.4.3"
    assert "gone.test" in got.reason
    got = run(resolve_destination("x.test", parse_routes([":sick.test"]), resolver))
    assert got == TempFail(TEMP_DNS, "4.1.2")


def test_dns_failures_pass_through(resolver):
    assert run(resolve_destination("sick.test", (), resolver)) == TempFail(TEMP_DNS, "4.1.2")
    got = run(resolve_destination("gone.test", (), resolver))
    assert isinstance(got, PermFail) and got.dsn == "5.1.2"


def test_route_table_is_cached_per_tuple_and_a_new_tuple_is_honoured():
    first = parse_routes(["a.test:relay1.test", ".b.test:relay2.test", ":default.test"])
    assert route_for("A.test", first).host == "relay1.test"
    assert route_for("x.b.test", first).host == "relay2.test"
    assert route_for("a.test", first) is route_for("a.test", first)
    reloaded = parse_routes(["a.test:relay3.test"])  # SIGHUP: a new tuple
    assert route_for("a.test", reloaded).host == "relay3.test"
    assert route_for("x.b.test", reloaded) is None
    assert route_for("a.test", list(first)).host == "relay1.test"  # any iterable still works
    assert route_for("a.test", first).host == "relay1.test"
