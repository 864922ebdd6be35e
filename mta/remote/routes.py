"""Static routes (control/smtproutes) and where a recipient domain's mail goes.

What it does: parses qmail's ``smtproutes`` syntax into ``Route`` values and
combines them with DNS into the list of (ip, port) to try for one domain, as
qmail-remote does before it connects.

smtproutes syntax (qmail-control(5), qmail-remote(8)), one route a line::

    example.com:relay.example.net       exact domain -> relay, port 25
    example.com:relay.example.net:2525  ... on port 2525
    .example.com:[192.0.2.7]            every subdomain (not example.com itself)
    :smarthost.example.net              default route, for any other domain
    example.org:                        empty relay: use MX as usual (an exception)
    example.org::2525                   use MX, but connect on port 2525
    example.com:[IPv6:2001:db8::1]:26   IP literal relay (also bare IPv4: 192.0.2.7)

Blank lines and lines starting with ``#`` are skipped; surrounding blanks are
ignored. Lookup order is qmail's: the exact domain, then ``.suffix`` entries from
the longest suffix to the shortest, then the default route; the first line wins
among duplicates. A relay given as a host name is resolved with A/AAAA only (no
MX, no further routes). A recipient domain literal (``user@[192.0.2.7]``) goes to
that address, unless a route (typically the default route) says otherwise.

Public API:
    Route(domain, host, port)                  frozen; host "" = use MX, an IP
                                               literal is stored without brackets
    parse_routes(lines) -> tuple[Route, ...]   raises ValueError(line_no, msg)
    route_for(domain, routes) -> Route | None
    await resolve_destination(domain, routes, resolver)
        -> list[(ip, port)] | TempFail | PermFail

How it fails: DNS failures come back as ``mta.dns`` classifies them. One
departure from qmail: a relay host name that does not resolve is a TempFail
(#4.4.3), not qmail's permanent perm_dns, because a typo in smtproutes should
delay mail until it is fixed, not bounce every message routed through it. A
domain literal that is not an IP address is a PermFail (#5.1.2); a domain
literal naming one of our own addresses is qmail's perm_ambigmx (#5.4.6).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Union

from mta.interfaces import PermFail, TempFail

if TYPE_CHECKING:  # mta.dns (dnspython, asyncio) only where a route is resolved: every
    from mta.dns import Resolver  # process reading control files imports this module

__all__ = ["Route", "parse_routes", "route_for", "resolve_destination"]

DEFAULT_PORT = 25
_HOST = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")

Destinations = Union[list[tuple[str, int]], TempFail, PermFail]


@dataclass(frozen=True, slots=True)
class Route:
    """One smtproutes line.

    ``domain``: exact domain, ``.suffix`` for its subdomains, or "" (default
    route). ``host``: relay host name, IP address (no brackets), or "" to use
    the domain's MX. ``port``: where to connect.
    """

    domain: str
    host: str
    port: int = DEFAULT_PORT


def parse_routes(lines: Iterable[str]) -> tuple[Route, ...]:
    """Parse smtproutes lines; ValueError(line_no, message) on the first bad one."""
    routes = []
    for line_no, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            routes.append(_parse_line(line))
        except ValueError as exc:
            raise ValueError(line_no, f"{exc.args[0]}: {line!r}") from None
    return tuple(routes)


def _parse_line(line: str) -> Route:
    if any(c.isspace() for c in line):
        raise ValueError("blank inside a route")
    domain, sep, rest = line.partition(":")
    if not sep:
        raise ValueError("expected domain:relay or domain:relay:port")
    domain = domain.lower()
    if domain and not _valid_domain_pattern(domain):
        raise ValueError(f"bad domain {domain!r}")
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ValueError("unclosed [ in relay")
        host = _parse_literal(rest[: end + 1])
        if host is None:
            raise ValueError(f"bad IP literal {rest[: end + 1]!r}")
        tail = rest[end + 1 :]
        if tail and not tail.startswith(":"):
            raise ValueError("expected :port after the IP literal")
        port_text = tail[1:] if tail else None
    else:
        host, sep, port_text = rest.partition(":")
        host = host.lower()
        if not sep:
            port_text = None
        if ":" in (port_text or ""):
            raise ValueError("too many colons (write IPv6 relays as [IPv6:addr])")
        if host and not _HOST.match(host):
            raise ValueError(f"bad relay host {host!r}")
    return Route(domain, host, _parse_port(port_text))


def _valid_domain_pattern(domain: str) -> bool:
    if domain.startswith("["):
        return _parse_literal(domain) is not None  # a route for user@[ip]
    name = domain[1:] if domain.startswith(".") else domain
    return bool(_HOST.match(name))


def _parse_port(text: str | None) -> int:
    if text is None:
        return DEFAULT_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port {text!r}")
    return int(text)


def _parse_literal(text: str) -> str | None:
    """``[192.0.2.7]`` or ``[IPv6:2001:db8::1]`` -> the address; None if not one."""
    if not (text.startswith("[") and text.endswith("]")):
        return None
    inner = text[1:-1]
    if inner[:5].lower() == "ipv6:":  # RFC 5321 section 4.1.3
        inner = inner[5:]
        version = 6
    else:
        version = 4
    try:
        ip = ipaddress.ip_address(inner)
    except ValueError:
        return None
    return str(ip) if ip.version == version else None


_TABLES: dict[int, tuple[tuple, dict[str, Route]]] = {}  # id(routes tuple) -> (it, table)


def _route_table(routes: Iterable[Route]) -> dict[str, Route]:
    """Domain -> route (the first line wins), built once per routes tuple.

    The scheduler looks up every due recipient's domain against the same immutable
    tuple (control/smtproutes, re-read only on SIGHUP): building the table each time
    cost 1,000 routes x 1,000 domains a batch in the fan-out benchmark. The tuple itself
    is kept with its table, so its id cannot be reused while cached.
    """
    if isinstance(routes, tuple):
        hit = _TABLES.get(id(routes))
        if hit is not None and hit[0] is routes:
            return hit[1]
    table: dict[str, Route] = {}
    for route in routes:
        table.setdefault(route.domain, route)
    if isinstance(routes, tuple):
        if len(_TABLES) >= 8:  # old tables of reloaded configurations
            _TABLES.clear()
        _TABLES[id(routes)] = (routes, table)
    return table


def route_for(domain: str, routes: Iterable[Route]) -> Route | None:
    """The route for ``domain``: exact, then longest ``.suffix``, then default."""
    domain = domain.lower()
    table = _route_table(routes)
    if domain in table:
        return table[domain]
    labels = domain.split(".")
    for i in range(1, len(labels)):
        suffix = "." + ".".join(labels[i:])
        if suffix in table:
            return table[suffix]
    return table.get("")


async def resolve_destination(
    domain: str, routes: Iterable[Route], resolver: Resolver
) -> Destinations:
    """The (ip, port) pairs to try for mail to ``domain``, best first.

    A route with a relay uses ``resolver.addresses`` (A/AAAA); otherwise the
    domain's MX via ``resolver.destinations``, on the route's port if any.
    """
    from mta.dns import AMBIG_MX, perm_dns

    domain = domain.strip().rstrip(".").lower()
    route = route_for(domain, routes)
    port = route.port if route else DEFAULT_PORT
    if route and route.host:
        return await _resolve_relay(route, resolver)
    if domain.startswith("["):
        ip = _parse_literal(domain)
        if ip is None:
            return perm_dns(domain)
        if ip in resolver.local_ips:
            return PermFail(AMBIG_MX, "5.4.6")
        return [(ip, port)]
    got = await resolver.destinations(domain)
    if isinstance(got, list):
        return [(ip, port) for ip in got]
    return got


async def _resolve_relay(route: Route, resolver: Resolver) -> Destinations:
    got = await resolver.addresses(route.host)
    if isinstance(got, list):
        return [(ip, route.port) for ip in got]
    if isinstance(got, PermFail):
        return TempFail(
            f"Sorry, I couldn't find the smtproutes relay {route.host}: "
            f"{got.reason} (#4.4.3)",
            "4.4.3",
        )
    return got
