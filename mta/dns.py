"""DNS for remote delivery: MX and address lookups, classified and cached.

What it does: turns a recipient domain into the IP addresses to try, in the
order qmail-remote and RFC 5321 section 5.1 prescribe, using dnspython's async
resolver so that many domains resolve at once on one event loop (a domain whose
name servers never answer delays only its own deliveries: security matrix DN2).

- MX records sorted by preference, shuffled among equal preferences (RFC 5321
  section 5.1: "randomize" to spread load); no MX records but the name exists:
  the implicit MX, the domain itself at preference 0; a null MX (``MX 0 .``,
  RFC 7505) refuses mail.
- Each MX host is resolved with A then AAAA (CNAMEs followed); hosts that do not
  exist are skipped, as qmail's dns_mxip does.
- An MX list naming one of our own addresses (``local_ips``) keeps only the hosts
  strictly more preferred than us; if none remains, we would deliver to ourselves
  a domain we do not treat as local: permanent (qmail ``perm_ambigmx``, DN4).
- Answers are cached by (name, type) until their TTL runs out on the injected
  clock, negative answers (NXDOMAIN, no data) by the SOA minimum (RFC 2308); the
  cache holds at most ``cache_size`` entries (least recently used go first).
  Temporary failures are not cached. Concurrent lookups of one name share one
  query.

Public API:
    Resolver(nameservers=None, timeout=30.0, clock=time.monotonic, *,
             local_ips=(), rng=None, cache_size=4096, max_ttl=86400)
    await Resolver.mx_hosts(domain) -> list[(preference, host)] | TempFail | PermFail
    await Resolver.addresses(host) -> list[str] | TempFail | PermFail
    await Resolver.destinations(domain) -> list[str] | TempFail | PermFail
    Resolver.clear_cache(); Resolver.local_ips
    temp_dns(), perm_dns(name), perm_null_mx(domain): the failure values

How it fails (values, never exceptions; texts are qmail-remote's):
    NXDOMAIN                       PermFail 5.1.2 "Sorry, I couldn't find any host named D. (#5.1.2)"
    SERVFAIL, REFUSED, timeout     TempFail 4.1.2 "Sorry, I couldn't find any host by that name. (#4.1.2)"
    null MX                        PermFail 5.1.10
    MX hosts without any address   PermFail 5.4.4 "Sorry, I couldn't find a mail exchanger or IP address. (#5.4.4)"
    best MX is ourselves           PermFail 5.4.6 (qmail perm_ambigmx)
A name dnspython cannot even parse (an empty label, a label over 63 octets) is
treated as not existing (5.1.2).
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Union

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from mta.interfaces import PermFail, TempFail

MxResult = Union[list[tuple[int, str]], TempFail, PermFail]
AddressResult = Union[list[str], TempFail, PermFail]

TEMP_DNS = "Sorry, I couldn't find any host by that name. (#4.1.2)"
NO_MX = "Sorry, I couldn't find a mail exchanger or IP address. (#5.4.4)"
AMBIG_MX = (
    "Sorry. Although I'm listed as a best-preference MX or A for that host,\n"
    "it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)"
)


def temp_dns() -> TempFail:
    """SERVFAIL, REFUSED or no answer in time: try again later (qmail temp_dns)."""
    return TempFail(TEMP_DNS, "4.1.2")


def perm_dns(name: str) -> PermFail:
    """The name does not exist (qmail perm_dns)."""
    return PermFail(f"Sorry, I couldn't find any host named {name}. (#5.1.2)", "5.1.2")


def perm_null_mx(domain: str) -> PermFail:
    """The domain publishes a null MX: it accepts no mail (RFC 7505 section 4.2)."""
    return PermFail(
        f"Sorry, {domain} does not accept mail (null MX, RFC 7505). (#5.1.10)", "5.1.10"
    )


# -- raw lookup outcomes (internal) --------------------------------------------


@dataclass(frozen=True, slots=True)
class _Found:
    values: tuple  # ("1.2.3.4", ...) or ((10, "mx.example"), ...); "" = the root


@dataclass(frozen=True, slots=True)
class _NoData:
    """The name exists but has no record of the asked type."""


@dataclass(frozen=True, slots=True)
class _NxDomain:
    """The name does not exist."""


@dataclass(frozen=True, slots=True)
class _Trouble:
    why: str


_Lookup = Union[_Found, _NoData, _NxDomain, _Trouble]


class Resolver:
    """MX and address resolution with TTL caching; one per process is enough.

    Args:
        nameservers: (ip, port) pairs to ask, in order (``control/nameservers``);
            None reads the system configuration (/etc/resolv.conf), falling back
            to 127.0.0.1:53 as the C library does when it is missing.
        timeout: seconds one lookup may take in all, retries included.
        clock: monotonic seconds; TTLs are counted on it (tests inject one).
        local_ips: our own addresses, for the MX-points-to-us check.
        rng: source of the equal-preference shuffle (tests pass a seeded one).
        cache_size: most (name, type) answers kept.
        max_ttl: longest time any answer is kept, whatever its TTL says.
    """

    def __init__(
        self,
        nameservers: Iterable[tuple[str, int]] | None = None,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        local_ips: Iterable[str] = (),
        rng: random.Random | None = None,
        cache_size: int = 4096,
        max_ttl: float = 86400.0,
    ) -> None:
        self._dns = _make_dnspython_resolver(nameservers, timeout)
        self._timeout = timeout
        self._clock = clock
        self._local_ips = frozenset(_canonical_ip(ip) for ip in local_ips)
        self._rng = rng or random.Random()
        self._cache_size = cache_size
        self._max_ttl = max_ttl
        self._cache: OrderedDict[tuple[str, str], tuple[float, _Lookup]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Task] = {}

    # -- public -------------------------------------------------------------------

    @property
    def local_ips(self) -> frozenset[str]:
        """Our own addresses (canonical text), as given at construction."""
        return self._local_ips

    def clear_cache(self) -> None:
        """Forget every cached answer (on SIGALRM, so a fixed DNS problem shows at once)."""
        self._cache.clear()

    async def mx_hosts(self, domain: str) -> MxResult:
        """MX hosts of ``domain`` as (preference, host), best first.

        Equal preferences come in random order (a fresh shuffle on every call,
        cached or not). No MX records: ``[(0, domain)]``, the implicit MX.
        """
        name = _norm(domain)
        got = await self._lookup(name, "MX")
        if isinstance(got, _NxDomain):
            return perm_dns(name)
        if isinstance(got, _Trouble):
            return temp_dns()
        if isinstance(got, _NoData):
            return [(0, name)]  # RFC 5321 section 5.1: the implicit MX
        # RFC 7505 section 3: a null MX is the only MX; if a domain mixes it with
        # real ones, "." is not a host we could reach, so only the others count.
        hosts = [(pref, host) for pref, host in got.values if host]
        if not hosts:
            return perm_null_mx(name)
        return self._shuffle_equal(hosts)

    async def addresses(self, host: str) -> AddressResult:
        """IPv4 then IPv6 addresses of ``host`` (an IP literal stands for itself).

        Both lookups run at once and both are awaited: a host whose AAAA lookup
        hangs answers only after the timeout, with its A addresses.
        """
        if _is_ip(host):
            return [_canonical_ip(host)]
        name = _norm(host)
        a, aaaa = await asyncio.gather(self._lookup(name, "A"), self._lookup(name, "AAAA"))
        found = [ip for got in (a, aaaa) if isinstance(got, _Found) for ip in got.values]
        if found:
            return found
        if isinstance(a, _Trouble) or isinstance(aaaa, _Trouble):
            return temp_dns()
        if isinstance(a, _NxDomain) or isinstance(aaaa, _NxDomain):
            return perm_dns(name)
        return PermFail(NO_MX, "5.4.4")

    async def destinations(self, domain: str) -> AddressResult:
        """The IPs to try for mail to ``domain``, most preferred first, no repeats."""
        mx = await self.mx_hosts(domain)
        if not isinstance(mx, list):
            return mx
        unique = list(dict.fromkeys(host for _, host in mx))
        found = dict(zip(unique, await asyncio.gather(*map(self.addresses, unique))))
        ranked: dict[str, int] = {}
        for pref, host in mx:
            if isinstance(found[host], list):
                for ip in found[host]:
                    ranked.setdefault(ip, pref)
        return self._pick(ranked, list(found.values()))

    # -- ordering and classification ------------------------------------------------

    def _shuffle_equal(self, hosts: list[tuple[int, str]]) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        for _, group in itertools.groupby(sorted(hosts), key=lambda mx: mx[0]):
            same = list(group)
            self._rng.shuffle(same)
            out.extend(same)
        return out

    def _pick(self, ranked: dict[str, int], results: list[AddressResult]) -> AddressResult:
        ours = [pref for ip, pref in ranked.items() if ip in self._local_ips]
        if ours:
            # qmail-remote: connect only to hosts more preferred than we are.
            ranked = {ip: pref for ip, pref in ranked.items() if pref < min(ours)}
            if not ranked:
                return PermFail(AMBIG_MX, "5.4.6")
        if ranked:
            return list(ranked)  # dicts keep MX order
        if any(isinstance(r, TempFail) for r in results):
            return temp_dns()
        if len(results) == 1 and isinstance(results[0], PermFail):
            return results[0]  # one host (often the implicit MX): say why exactly
        return PermFail(NO_MX, "5.4.4")

    # -- lookups with cache ----------------------------------------------------------

    async def _lookup(self, name: str, rdtype: str) -> _Lookup:
        key = (name, rdtype)
        hit = self._cache.get(key)
        if hit is not None:
            if self._clock() < hit[0]:
                self._cache.move_to_end(key)
                return hit[1]
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(self._ask(name, rdtype))
            self._inflight[key] = task
            task.add_done_callback(lambda t, key=key: self._forget(key, t))
        # shield: one caller giving up must not cancel the query for the others
        return await asyncio.shield(task)

    def _forget(self, key: tuple[str, str], task: asyncio.Task) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    async def _ask(self, name: str, rdtype: str) -> _Lookup:
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException:
            return _NxDomain()
        try:
            answer = await self._dns.resolve(
                qname, rdtype, search=False, raise_on_no_answer=False, lifetime=self._timeout
            )
        except dns.resolver.NXDOMAIN as exc:
            self._store(name, rdtype, _NxDomain(), _negative_ttl(exc))
            return _NxDomain()
        except (dns.exception.DNSException, OSError) as exc:
            # NoNameservers (SERVFAIL, REFUSED, bad replies), Timeout, socket errors
            return _Trouble(f"{type(exc).__name__}: {exc}")
        ttl = answer.chaining_result.minimum_ttl
        if answer.rrset is None:
            got: _Lookup = _NoData()
        elif rdtype == "MX":
            got = _Found(tuple((rd.preference, _host(rd.exchange)) for rd in answer.rrset))
        else:
            got = _Found(tuple(_canonical_ip(rd.address) for rd in answer.rrset))
        self._store(name, rdtype, got, ttl)
        return got

    def _store(self, name: str, rdtype: str, got: _Lookup, ttl: float) -> None:
        ttl = min(ttl, self._max_ttl)
        if ttl <= 0 or self._cache_size <= 0:
            return
        self._cache[(name, rdtype)] = (self._clock() + ttl, got)
        self._cache.move_to_end((name, rdtype))
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def _make_dnspython_resolver(
    nameservers: Iterable[tuple[str, int]] | None, timeout: float
) -> dns.asyncresolver.Resolver:
    if nameservers is None:
        try:
            res = dns.asyncresolver.Resolver(configure=True)
        except dns.resolver.NoResolverConfiguration:
            res = dns.asyncresolver.Resolver(configure=False)
            res.nameservers = ["127.0.0.1"]
    else:
        res = dns.asyncresolver.Resolver(configure=False)
        servers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in nameservers]
        if not servers:
            raise ValueError("nameservers: empty list (use None for the system's)")
        res.nameservers = servers
    # Each server gets a share of the lookup's time, so a dead first server
    # still leaves time to ask the next one within ``timeout``.
    res.timeout = timeout / max(1, len(res.nameservers))
    res.lifetime = timeout
    res.cache = None  # ours: TTLs on the injected clock, negative entries, a cap
    return res


def _negative_ttl(exc: dns.resolver.NXDOMAIN) -> float:
    # RFC 2308 section 5: min(SOA TTL, SOA minimum); dnspython computes it.
    try:
        ttls = [msg.resolve_chaining().minimum_ttl for msg in exc.responses().values()]
    except dns.exception.DNSException:
        return 0  # a malformed negative answer: do not cache it
    return min(ttls, default=0)


def _host(name: dns.name.Name) -> str:
    return "" if name == dns.name.root else _norm(name.to_text())


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _canonical_ip(text: str) -> str:
    return str(ipaddress.ip_address(text))
