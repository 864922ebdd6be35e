"""The ``Received:`` trace line a listener prepends, in qmail's ``received.c`` form.

What it does: formats, for one accepted message, exactly what qmail-smtpd writes::

    Received: from REMOTEHOST (HELO helo) (IP)
      by ME with ESMTP; 26 Sep 1995 04:46:54 -0000

``REMOTEHOST`` is the client's verified name, ``unknown`` when there is none (we do
no reverse lookups, as tcpserver -H). The ``(HELO helo)`` part is left out when the
HELO name equals the host name (case-insensitive), as qmail does. Every character
outside qmail's safe set (letters, digits and ``.@%+/=:-[]``) is written as ``?``,
so a client cannot inject header lines or odd bytes through its HELO. The protocol
word follows RFC 3848: ``SMTP`` after HELO, ``ESMTP`` after EHLO, ``ESMTPS`` under
TLS. The date is qmail's ``date822fmt``: UTC, no weekday, ``-0000``.

Public: ``format_received(...) -> bytes`` (LF line ends, ending in LF, ready to
prepend to a message stored with LF line ends), ``date822(when) -> str``.

How it fails: it does not; any input string is made safe.
"""

from __future__ import annotations

import re
import time

__all__ = ["format_received", "date822"]

_SAFE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.@%+/=:-[]"
_ALL_SAFE = re.compile("[" + re.escape(_SAFE_CHARS) + "]*").fullmatch
_UNSAFE = re.compile("[^" + re.escape(_SAFE_CHARS) + "]").sub
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_last_date: tuple[int, str] = (-1, "")  # one message after another share a second


def _safe(text: str) -> str:
    # The usual name is all safe: one C-level match, no per-character Python loop.
    return text if _ALL_SAFE(text) else _UNSAFE("?", text)


def date822(when: float) -> str:
    """``26 Sep 1995 04:46:54 -0000`` for the Unix time ``when`` (qmail's date822fmt)."""
    global _last_date
    second = int(when)
    if _last_date[0] == second:
        return _last_date[1]
    t = time.gmtime(second)
    text = (f"{t.tm_mday} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} -0000")
    _last_date = (second, text)
    return text


def format_received(
    *,
    local: str,
    remote_ip: str,
    helo: str,
    when: float,
    protocol: str = "ESMTP",
    remote_host: str = "",
    remote_info: str = "",
) -> bytes:
    """The two-line Received header for one message, LF line ends.

    Args:
        local: our name (``control/me``).
        remote_ip: the client's address.
        helo: the name the client gave in HELO/EHLO ("" if it gave none).
        when: Unix time of acceptance.
        protocol: ``SMTP``, ``ESMTP`` or ``ESMTPS``.
        remote_host: the client's verified host name, "" for ``unknown``.
        remote_info: the ident/user part qmail shows before ``@IP``; usually "".
    """
    host = remote_host or "unknown"
    parts = ["Received: from ", _safe(host)]
    if helo and helo.lower() != host.lower():
        parts += [" (HELO ", _safe(helo), ")"]
    parts.append(" (")
    if remote_info:
        parts += [_safe(remote_info), "@"]
    parts += [_safe(remote_ip), ")\n  by ", _safe(local), " with ", _safe(protocol), "; ", date822(when), "\n"]
    return "".join(parts).encode("ascii")
