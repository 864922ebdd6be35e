"""This machine's own IP addresses (qmail's ipme), for the "MX points to us" check.

What it does: ``local_addresses()`` returns the addresses of this host's network
interfaces, so that remote delivery can tell when a domain's best MX is this
machine (qmail-remote's perm_ambigmx, #5.4.6: mail for a domain we do not treat
as local would loop back to us). Read at each call; the scheduler calls it when it
builds its router (at start and on SIGHUP), so an address added later counts after
a HUP.

Sources, on Linux:
- IPv4: the ``/32 host LOCAL`` leaves of ``/proc/net/fib_trie`` (every address
  configured on an interface, secondary ones included; qmail uses SIOCGIFCONF,
  which misses addresses added without a label). Without ``/proc``, SIOCGIFADDR on
  each interface from ``socket.if_nameindex()`` (one address an interface).
- IPv6: ``/proc/net/if_inet6``.
- Always: ``0.0.0.0`` and ``::`` ("this host", RFC 1122 section 3.2.1.3; qmail
  adds 0.0.0.0 too), ``127.0.0.1`` and ``::1``.

Deliberately not the whole of 127.0.0.0/8: Linux answers on all of it, but only
127.0.0.1 is "us" here; other loopback addresses name distinct local services (a
content filter, a test's receiving servers on 127.0.1.x), which are legitimate MX
targets. An explicitly configured 127.x alias other than 127.0.0.1 is left out for
the same reason.

Public: local_addresses(proc="/proc") -> frozenset[str] (canonical text).
How it fails: never raises; a source that cannot be read contributes nothing
(then only the fixed addresses above are known).
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

__all__ = ["local_addresses"]

ALWAYS = ("0.0.0.0", "::", "127.0.0.1", "::1")
SIOCGIFADDR = 0x8915
LOOPBACK_NET = ipaddress.ip_network("127.0.0.0/8")


def local_addresses(proc: str | Path = "/proc") -> frozenset[str]:
    """Addresses of this machine's interfaces, plus the fixed ones (see the module doc)."""
    proc = Path(proc)
    v4 = _fib_trie_locals(proc / "net" / "fib_trie")
    if v4 is None:
        v4 = _ioctl_addresses()
    found = set(ALWAYS)
    for ip in list(v4) + _inet6_addresses(proc / "net" / "if_inet6"):
        addr = ipaddress.ip_address(ip)
        if addr.version == 4 and addr in LOOPBACK_NET:
            continue  # only 127.0.0.1 (in ALWAYS) is us; see the module docstring
        found.add(str(addr))
    return frozenset(found)


def _fib_trie_locals(path: Path) -> list[str] | None:
    """IPv4 addresses of the ``/32 host LOCAL`` leaves; None when the file is missing."""
    try:
        text = path.read_text()
    except OSError:
        return None
    out, leaf = [], None
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "|--":
            leaf = words[1]
        elif leaf is not None and words[:3] == ["/32", "host", "LOCAL"]:
            out.append(leaf)
    return [ip for ip in dict.fromkeys(_valid(t, 4) for t in out) if ip]


def _inet6_addresses(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        hexaddr = (line.split() or [""])[0]  # 32 hex digits, then index, prefix, ...
        ip = _valid(":".join(hexaddr[i:i + 4] for i in range(0, 32, 4)), 6)
        if len(hexaddr) == 32 and ip:
            out.append(ip)
    return out


def _ioctl_addresses() -> list[str]:
    """Each interface's (primary) IPv4 address via SIOCGIFADDR, as qmail's ipme does."""
    out = []
    try:
        names = [name for _, name in socket.if_nameindex()]
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return out
    with s:
        for name in names:
            try:
                req = fcntl.ioctl(s.fileno(), SIOCGIFADDR,
                                  struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on this interface, or it is down
            out.append(socket.inet_ntoa(req[20:24]))
    return out


def _valid(text: str, version: int) -> str | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return str(addr) if addr.version == version else None
