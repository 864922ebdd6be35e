"""Where a remote domain's mail goes: static routes first, else DNS (cached by TTL).

``Router(ctl).resolve(domain)`` returns a list of ``(ip, port)`` in the order to
try, or a ``TempFail`` / ``PermFail`` (qmail's texts, from ``mta.dns``). Routes come
from ``control/smtproutes``; DNS uses ``control/nameservers`` when present, else
the system resolver. Lookups for many domains run concurrently; ``forget()``
drops cached answers (SIGALRM does this so a fixed DNS problem is seen at once).
"""

from __future__ import annotations

from mta.dns import Resolver
from mta.interfaces import PermFail, TempFail
from mta.remote.routes import resolve_destination

__all__ = ["Router"]

DNS_TIMEOUT = 10.0


class Router:
    def __init__(self, ctl, timeout: float = DNS_TIMEOUT):
        self.ctl = ctl
        self.timeout = timeout
        self.resolver = Resolver(list(ctl.nameservers) or None, timeout=timeout)

    async def resolve(self, domain: str) -> list[tuple[str, int]] | TempFail | PermFail:
        return await resolve_destination(domain, self.ctl.smtproutes, self.resolver)

    def forget(self) -> None:
        self.resolver = Resolver(list(self.ctl.nameservers) or None, timeout=self.timeout)
