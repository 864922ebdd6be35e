"""The listener's policy: names, limits, relay and recipient checks (``SmtpPolicy``).

What it does: one frozen value holds everything ``mta.smtp.server`` and the
transport ``mta.smtpd`` need to decide about a client: our name and greeting,
``databytes``, ``timeoutsmtpd``, ``smtpgreetdelay``, ``rcpthosts``, the
``smtpaccess`` rules, the local-domain and recipient-exists callables, and the caps
that keep one client or many from holding the server. ``SmtpPolicy.from_control`` builds it from a
loaded ``mta.control.Control``.

Public: ``SmtpPolicy``.

How it fails: it does not; it checks nothing at construction (control.py and
access.py validate their files). The callables it holds must not raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mta.access import DEFAULT_RULES, AccessRules

__all__ = ["SmtpPolicy"]


def _always(address: str) -> bool:
    return True


@dataclass(frozen=True)
class SmtpPolicy:
    """Everything the core and transport need to know about this listener.

    ``rcpthosts`` None means the file is absent: only local domains are accepted
    from clients that may not relay (fail closed, DESIGN decision 4). The default
    caps let 500 idle connections from 50 addresses leave room for new clients
    (LO1): 1000 overall, 50 per client address.
    """

    me: str
    is_local_domain: Callable[[str], bool]
    rcpt_exists: Callable[[str], bool] = _always
    greeting: str = ""  # control/smtpgreeting; "" = me
    localiphost: str = ""  # replaces a local [IP] literal; "" = me
    databytes: int = 0  # 0 = no configured limit (max_message_bytes still applies)
    timeoutsmtpd: float = 1200.0  # seconds to wait for each command line (mta.smtpd)
    rcpthosts: tuple[str, ...] | None = None
    access: AccessRules = DEFAULT_RULES
    local_ips: frozenset[str] = frozenset()  # our own addresses, besides the socket's
    max_message_bytes: int = 32 * 1024 * 1024
    max_command_line: int = 512  # octets including CRLF, RFC 5321 4.5.3.1.4
    max_recipients: int = 100  # RFC 5321 4.5.3.1.8 minimum
    max_errors: int = 20  # Postfix smtpd_hard_error_limit
    max_junk: int = 100  # NOOP/RSET/VRFY/HELP a session before each counts as an error
    max_connections: int = 1000
    max_per_ip: int = 50
    greet_delay: float = 0.0  # control/smtpgreetdelay; input before the greeting is an early talker
    min_data_rate: float = 500.0  # bytes/s a DATA client must keep up (Postfix smtpd_min_data_rate)

    def rcpt_domain_allowed(self, domain: str) -> bool:
        """May a client that may not relay send to ``domain``? (rcpthosts, or local only)"""
        if self.rcpthosts is None:
            return self.is_local_domain(domain)
        hosts = self._rcpthosts_set
        if domain in hosts:
            return True
        dot = domain.find(".")
        while dot >= 0:  # ".example.com" covers every name ending in it
            if domain[dot:] in hosts:
                return True
            dot = domain.find(".", dot + 1)
        return False

    def __post_init__(self) -> None:
        hosts = frozenset(p.lower() for p in self.rcpthosts or ())
        object.__setattr__(self, "_rcpthosts_set", hosts)  # O(1) a RCPT, built once

    @property
    def size_limit(self) -> int:
        return self.databytes if self.databytes > 0 else self.max_message_bytes

    @classmethod
    def from_control(cls, control, *, access: AccessRules = DEFAULT_RULES,
                     rcpt_exists: Callable[[str], bool] = _always, **caps) -> "SmtpPolicy":
        """A policy from a loaded ``mta.control.Control`` (duck-typed) plus caps."""
        def is_local(domain: str) -> bool:
            return control.is_local(domain) or control.virtual_prepend(domain.lower()) is not None

        rcpthosts = None if control.rcpthosts is None else tuple(control.rcpthosts)
        return cls(me=control.me, is_local_domain=is_local, rcpt_exists=rcpt_exists,
                   greeting=control.smtpgreeting, localiphost=control.localiphost,
                   databytes=control.databytes, timeoutsmtpd=float(control.timeoutsmtpd),
                   greet_delay=control.smtpgreetdelay, rcpthosts=rcpthosts, access=access,
                   **caps)
