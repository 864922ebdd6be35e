"""Envelope address parsing for the SMTP server core (RFC 5321 4.1.2, qmail leniency).

What it does: splits ``MAIL FROM:`` / ``RCPT TO:`` arguments into a path and its
ESMTP parameters, strips and records a source route, finds the domain (the last
``@`` outside quotes), unquotes the local part as qmail-smtpd's ``addrparse`` does,
enforces the RFC 5321 4.5.3.1 size limits and reports the old relay tricks
(source routes, ``%``, ``!``, an ``@`` hidden in the local part).

Public (to ``mta.smtp.server`` only): ``split_argument(text, keyword)``,
``parse_mailbox(path)``, ``mail_params_refusal(params, size_limit)``,
``literal_ip(domain)``, ``ParsedAddress``, ``AddressError``,
``MAX_LOCAL_PART`` (64), ``MAX_PATH`` (256).

How it fails: ``AddressError(reply)`` carrying the reply constant to send; an
address is never accepted in a truncated or partly parsed form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mta.smtp import replies as R

MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
MAX_PATH = 256  # RFC 5321 4.5.3.1.3

_ATOM_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]+\Z")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?\Z")
_SIMPLE = re.compile(rf"([A-Za-z0-9!#$%&'*+/=?^_`{{|}}~.-]{{1,{MAX_LOCAL_PART}}})@({_LABEL}(?:\.{_LABEL})*\.?)\Z")
_PARAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(?:=[!-<>-~]+)?\Z")


class AddressError(Exception):
    """The argument cannot be used; ``reply`` is what to answer."""

    def __init__(self, reply: str):
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True)
class ParsedAddress:
    local: str  # unquoted local part
    domain: str  # lower-cased; "" when the address has no @; "[...]" for a literal
    routed: bool  # a source route (@a,@b:) was given
    quoted_at: bool  # the local part, once unquoted, contains an @

    @property
    def relay_trick(self) -> bool:
        """Source route, percent hack, bang path or quoted @: refused unless relaying."""
        return self.routed or self.quoted_at or "%" in self.local or "!" in self.local


def split_argument(text: str, keyword: str) -> tuple[str, list[str]]:
    """``FROM:<path> PARAMS`` -> (path, params). Raises AddressError(555) on bad syntax."""
    head, colon, rest = text.partition(":")
    if not colon or head.strip().upper() != keyword:
        raise AddressError(R.R555_SYNTAX)
    rest = rest.lstrip(" ")
    if rest.startswith("<"):
        end = rest.find(">") if '"' not in rest else _closing_bracket(rest)
        if end < 0:
            raise AddressError(R.R555_SYNTAX)
        path, tail = rest[1:end], rest[end + 1 :]
        if tail and not tail.startswith(" "):
            raise AddressError(R.R555_SYNTAX)
    else:  # qmail accepts a path without brackets
        path, _, tail = rest.partition(" ")
    params = tail.split()
    for p in params:
        if not _PARAM.match(p):
            raise AddressError(R.R555_SYNTAX)
    return path, params


def mail_params_refusal(params: list[str], size_limit: int) -> str:
    """The reply refusing MAIL FROM's ESMTP ``params``, or "" when they are fine.

    SIZE above ``size_limit`` gets 552 (RFC 1870 6.1, LM-4); BODY=7BIT/8BITMIME is
    accepted; any other parameter gets 555."""
    for param in params:
        key, _, value = param.partition("=")
        key = key.upper()
        if key == "SIZE" and value.isdigit() and len(value) < 20:
            if int(value) > size_limit:
                return R.R552_TOO_BIG
        elif not (key == "BODY" and value.upper() in ("7BIT", "8BITMIME")):
            return R.R555_PARAMETER.format(param=key)
    return ""


def _closing_bracket(rest: str) -> int:
    quoted, i = False, 1
    while i < len(rest):
        c = rest[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            return i
        i += 1
    raise AddressError(R.R555_SYNTAX)


def parse_mailbox(path: str) -> ParsedAddress:
    """Parse a non-empty path (without the angle brackets)."""
    simple = _SIMPLE.match(path)  # the common plain local@domain: one regex
    if simple is not None and len(path) <= MAX_PATH:
        return ParsedAddress(simple[1], simple[2].lower(), False, False)
    return _parse_general(path)


def _parse_general(path: str) -> ParsedAddress:
    """Every form: quotes, backslashes, source routes, literals, no @."""
    if len(path) > MAX_PATH:
        raise AddressError(R.R501_ADDRESS_TOO_LONG)
    if not path.isascii() or any(ord(c) < 33 and c != " " or ord(c) == 127 for c in path):
        raise AddressError(R.R501_ADDRESS_SYNTAX)
    routed = False
    if path.startswith("@"):  # RFC 5321 4.1.2 source route, "@a,@b:box@host"
        route, colon, path = path.partition(":")
        if not colon or not path:
            raise AddressError(R.R501_ADDRESS_SYNTAX)
        routed = True
    at = _last_unquoted_at(path)
    raw_local, domain = (path[:at], path[at + 1 :]) if at >= 0 else (path, "")
    if len(raw_local) > MAX_LOCAL_PART:
        raise AddressError(R.R501_ADDRESS_TOO_LONG)
    local = _unquote(raw_local)
    if not local:
        raise AddressError(R.R501_ADDRESS_SYNTAX)
    if at >= 0 and not _valid_domain(domain):
        raise AddressError(R.R501_ADDRESS_SYNTAX)
    return ParsedAddress(local, domain.lower(), routed, "@" in local)


def _last_unquoted_at(path: str) -> int:
    quoted, last, i = False, -1, 0
    while i < len(path):
        c = path[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == "@" and not quoted:
            last = i
        i += 1
    if quoted:
        raise AddressError(R.R501_ADDRESS_SYNTAX)
    return last


def _unquote(raw: str) -> str:
    """qmail-smtpd's addrparse: drop the quotes and backslashes, keep what they protect."""
    if '"' not in raw and "\\" not in raw:
        if " " in raw or not _ATOM_LOCAL.match(raw):
            raise AddressError(R.R501_ADDRESS_SYNTAX)
        return raw
    out, quoted, i = [], False, 0
    while i < len(raw):
        c = raw[i]
        if c == "\\" and i + 1 < len(raw):
            out.append(raw[i + 1])
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == " " and not quoted:
            raise AddressError(R.R501_ADDRESS_SYNTAX)
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _valid_domain(domain: str) -> bool:
    if domain.startswith("[") and domain.endswith("]"):
        inner = domain[1:-1]
        return bool(inner) and all(c.isalnum() or c in ".:" for c in inner)
    return bool(_DOMAIN.match(domain))


def literal_ip(domain: str) -> str | None:
    """The address inside ``[1.2.3.4]`` or ``[IPv6:...]``; None for a name."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    return inner[5:] if inner.lower().startswith("ipv6:") else inner
