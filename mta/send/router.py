"""Where a remote domain's mail goes: static routes first, else DNS (cached by TTL).

``Router(ctl).resolve(domain)`` returns a list of ``(ip, port)`` in the order to
try, or a ``TempFail`` / ``PermFail`` (qmail's texts, from ``mta.dns``). Routes come
from ``control/smtproutes``; DNS uses ``control/nameservers`` when present, else
the system resolver. Domains listed in ``control/qmtproutes`` (same syntax; port
209 when a line gives none) are delivered with QMTP instead of SMTP. Lookups for many domains run concurrently and share the
resolver's cache; ``forget()`` drops cached answers (SIGALRM does this so a fixed
DNS problem is seen at once). This machine's addresses (``mta.ipme``, read when
the Router is built: at start and on SIGHUP) plus ``local_ips`` (more addresses to
count as ours, e.g. a listener's behind NAT) are "us": an MX list whose best host
is us is a permanent error (qmail's perm_ambigmx, #5.4.6), not a loop.
"""

from __future__ import annotations

from mta.dns import Resolver
from mta.ipme import local_addresses
from mta.interfaces import PermFail, TempFail
from mta.remote.routes import resolve_destination, route_for

__all__ = ["Router"]

DNS_TIMEOUT = 10.0


class Router:
    def __init__(self, ctl, timeout: float = DNS_TIMEOUT, local_ips=()):
        self.ctl = ctl
        self.resolver = Resolver(list(ctl.nameservers) or None, timeout=timeout,
                                 local_ips=local_addresses() | set(local_ips))

    async def resolve(self, domain: str) -> list[tuple] | TempFail | PermFail:
        """Destinations for ``domain``: ``(ip, port)`` for SMTP, ``(ip, port, "qmtp")``
        when ``control/qmtproutes`` has a route for it."""
        qmtp = route_for(domain, self.ctl.qmtproutes)
        if qmtp is not None:
            got = await resolve_destination(domain, (qmtp,), self.resolver)
            return [(ip, port, "qmtp") for ip, port in got] if isinstance(got, list) else got
        return await resolve_destination(domain, self.ctl.smtproutes, self.resolver)

    def forget(self) -> None:
        self.resolver.clear_cache()
