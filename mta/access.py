"""Who may talk to the SMTP listener, and who may relay: ``control/smtpaccess``.

What it does: parses the per-instance access file (ours; the job tcpserver's
``tcp.smtp`` rules and ``RELAYCLIENT`` do for qmail-smtpd) and answers, for one
client IP address, one of three actions:

- ``allow``: may send mail to the domains in ``rcpthosts`` (or, without that file,
  to local domains only);
- ``relay``: may also send to any other domain (qmail's ``RELAYCLIENT``);
- ``deny``: refused at connect (``554`` and close).

File format, one rule a line, first match wins::

    # comment lines and blank lines are ignored; trailing blanks too
    127.0.0.1:relay          an IP address (v4 or v6)
    10.1.0.0/16:allow        a CIDR block (v4 or v6)
    2001:db8::/32:deny
    :allow                   an empty prefix matches everyone

The action is after the *last* colon, so IPv6 prefixes need no quoting. A client
no rule matches is allowed. Without the file, ``DEFAULT_RULES`` apply: 127.0.0.1
and ::1 may relay, everyone else is allowed. IPv4-mapped IPv6 client addresses
(``::ffff:192.0.2.1``) are looked up as their IPv4 address.

``control/qmqpaccess`` (who may hand mail to the QMQP listener and query the
progress endpoint) has the same format with two differences, because QMQP relays to
any destination: without the file only loopback clients (127.0.0.0/8, ::1) are
allowed (``LOOPBACK_ONLY``), and a client no rule matches is denied (fail closed).

Public: ``Action``, ``AccessRules`` (``.lookup(ip) -> Action``), ``parse_access(text,
name)``, ``load_access(root)``, ``DEFAULT_RULES``, ``AccessError``.

How it fails: a malformed line (bad address or prefix, unknown action, no colon)
raises ``AccessError`` naming the file and the line number; an unreadable file
raises ``AccessError`` too. A listener must refuse to start on it rather than run
with half its rules. ``lookup`` of a peer name that is not an IP address (a Unix
socket) matches only the empty prefix, else it is allowed, never relayed.
Answers are remembered per address string (at most ``CACHE_MAX``, then forgotten
all at once) by the rules object; reloading the file makes a new one.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Action", "AccessRules", "AccessError", "DEFAULT_RULES", "parse_access", "load_access"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
CACHE_MAX = 4096  # distinct client addresses remembered by one AccessRules


class AccessError(Exception):
    """control/smtpaccess cannot be used as it is."""

    def __init__(self, name: str, line: int, message: str):
        where = name + (f" line {line}" if line else "")
        super().__init__(f"{where}: {message}")
        self.name, self.line, self.message = name, line, message


class Action(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    RELAY = "relay"


@dataclass(frozen=True)
class AccessRules:
    """Ordered rules; ``network`` None is the empty (match-all) prefix."""

    rules: tuple[tuple[Network | None, Action], ...]
    # ip string -> action: parsing the address costs more than the rest of a connect's
    # bookkeeping. Per rules object, so a reload (new rules) starts empty; bounded.
    _cache: dict[str, Action] = field(default_factory=dict, compare=False, repr=False)

    def lookup(self, ip: str) -> Action:
        """The action of the first rule matching ``ip``; ``ALLOW`` when none does."""
        action = self._cache.get(ip)
        if action is None:
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            action = self._cache[ip] = self._match(ip)
        return action

    def _match(self, ip: str) -> Action:
        addr = _client_address(ip)
        for network, action in self.rules:
            if network is None:
                return action
            if addr is not None and addr.version == network.version and addr in network:
                return action
        return Action.ALLOW


DEFAULT_RULES = AccessRules(
    (
        (ipaddress.ip_network("127.0.0.1/32"), Action.RELAY),
        (ipaddress.ip_network("::1/128"), Action.RELAY),
    )
)


def _client_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_access(text: str, name: str = "control/smtpaccess") -> AccessRules:
    """Parse the rules in ``text``; ``name`` is used in error messages."""
    rules: list[tuple[Network | None, Action]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        prefix, colon, word = line.rpartition(":")
        if not colon:
            raise AccessError(name, number, f"expected PREFIX:ACTION, got {line!r}")
        try:
            action = Action(word.strip().lower())
        except ValueError:
            raise AccessError(name, number, f"unknown action {word.strip()!r} (allow, deny or relay)") from None
        rules.append((_parse_prefix(prefix.strip(), name, number), action))
    return AccessRules(tuple(rules))


def _parse_prefix(prefix: str, name: str, number: int) -> Network | None:
    if not prefix:
        return None
    if prefix.startswith("[") and prefix.endswith("]"):
        prefix = prefix[1:-1]
    try:
        return ipaddress.ip_network(prefix, strict=False)
    except ValueError as e:
        raise AccessError(name, number, f"bad address or CIDR block {prefix!r}: {e}") from None


LOOPBACK_ONLY = AccessRules(
    (
        (ipaddress.ip_network("127.0.0.0/8"), Action.ALLOW),
        (ipaddress.ip_network("::1/128"), Action.ALLOW),
        (None, Action.DENY),
    )
)


# Files whose unmatched clients are refused. QMQP relays to any destination, so its
# allow-list fails closed (DESIGN.md decision 4); smtpaccess lets unmatched clients in.
FAIL_CLOSED = frozenset({"qmqpaccess"})


def load_access(root: Path | str, name: str = "smtpaccess",
                default: AccessRules = DEFAULT_RULES) -> AccessRules:
    """Rules from ``ROOT/control/NAME``, or ``default`` without the file.

    ``load_access(root, "qmqpaccess", LOOPBACK_ONLY)`` gives the QMQP (and progress
    endpoint) rules: without the file, only loopback clients may hand over mail;
    with it, only the clients an ``allow`` (or ``relay``) rule names (a client no
    rule matches is denied, as if the file ended in ``:deny``).
    """
    path = Path(root) / "control" / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    except (OSError, UnicodeDecodeError) as e:
        raise AccessError(f"control/{name}", 0, f"unable to read: {e}") from e
    rules = parse_access(text, f"control/{name}")
    if name in FAIL_CLOSED:
        rules = AccessRules(rules.rules + ((None, Action.DENY),))
    return rules
