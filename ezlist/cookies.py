"""Confirmation cookies: short HMAC-SHA256 tokens bound to list, action, address, time.

What it does: ezmlm's cookies (qmail-ezmlm.md 2.3) with a modern MAC. A token is
``TIME.MAC``: ``TIME`` the decimal UNIX time it was made, ``MAC`` the first 80
bits of HMAC-SHA256(key, list NUL action NUL address NUL TIME) in lower-case
base32 (16 characters from ``a-z2-7``; safe in a local part, and immune to MTAs
that fold the case of local parts). The address's domain is compared
case-insensitively, its local part exactly. A token is valid only when
``TIME <= now`` and ``now - TIME <= window`` (ezmlm: 1,000,000 s for
confirmations, 3,000,000 s for bounce warnings and probes).

Single use (DESIGN decision 5) is not a property of the MAC: it is enforced by
``SubscriberDB.apply_confirmed`` (ezlist.subscribers), which records consumed
tokens and refuses a token older than the address's last subscription change.

Public functions:
    new_key() -> bytes                          32 random bytes for ``dir/key``
    make_cookie(key, list_address, action, address, when) -> str   "TIME.MAC"
    check_cookie(key, list_address, action, address, token, now, window=WINDOW) -> bool
    split_cookie(token) -> (time, mac) | None
    canonical_address(address) -> str           domain lower-cased

Failures: ``check_cookie`` never raises on hostile input; it answers False.
``make_cookie`` raises ``ValueError`` for an action containing NUL or an empty key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

WINDOW = 1_000_000  # seconds a confirmation cookie stays valid (ezmlm)
BOUNCE_WINDOW = 3_000_000  # seconds a warn/probe cookie stays valid (ezmlm)
KEY_BYTES = 32
_MAC_BYTES = 10  # 80 bits -> exactly 16 base32 characters, no padding
_TOKEN = re.compile(r"([0-9]{1,12})\.([a-z2-7]{16})", re.ASCII)


def new_key() -> bytes:
    """A fresh per-list secret."""
    return os.urandom(KEY_BYTES)


def canonical_address(address: str) -> str:
    """``local@domain`` with the domain lower-cased (the local part is kept)."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    return f"{local}@{domain.lower()}"


def _mac(key: bytes, list_address: str, action: str, address: str, when: int) -> str:
    if not key:
        raise ValueError("empty cookie key")
    if "\0" in action:
        raise ValueError("NUL in cookie action")
    fields = (list_address.lower(), action, canonical_address(address), str(when))
    digest = hmac.new(key, "\0".join(fields).encode("utf-8", "surrogateescape"), hashlib.sha256)
    return base64.b32encode(digest.digest()[:_MAC_BYTES]).decode("ascii").lower()


def make_cookie(key: bytes, list_address: str, action: str, address: str, when: int) -> str:
    """Return the token ``TIME.MAC`` for (list, action, address, time)."""
    return f"{int(when)}.{_mac(key, list_address, action, address, int(when))}"


def split_cookie(token: str) -> tuple[int, str] | None:
    """Split ``TIME.MAC`` into (time, mac); None when it is not well formed."""
    match = _TOKEN.fullmatch(token.lower()) if token.isascii() else None
    if match is None:
        return None
    return int(match.group(1)), match.group(2)


def check_cookie(
    key: bytes,
    list_address: str,
    action: str,
    address: str,
    token: str,
    now: int,
    window: int = WINDOW,
) -> bool:
    """True when ``token`` was made by us for exactly this tuple and is in its window.

    A token from the future (clock skew or forgery) is refused, as ezmlm does.
    """
    parsed = split_cookie(token)
    if parsed is None:
        return False
    when, mac = parsed
    if when > now or now - when > window:
        return False
    expected = _mac(key, list_address, action, address, when)
    return hmac.compare_digest(expected, mac)
