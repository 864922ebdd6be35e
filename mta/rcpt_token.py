"""Per-recipient tokens in a shared body: the ``X-Mta-Rcpt-Token`` private header.

What it does: a list post is ONE stored body for every recipient, yet RFC 8058
one-click unsubscribe needs a URL that names the recipient and cannot be forged.
ezlist puts a placeholder in the URL and a private field in the header::

    X-Mta-Rcpt-Token: <key-hex> @@RCPT_TOKEN@@

(``key`` = HMAC-SHA256(list key, b"oneclick\\0" + post number); the second word
declares the placeholder, ``@@[A-Z0-9_]{1,32}@@``). Whatever delivers the message
removes every such field and replaces each placeholder occurrence IN THE HEADER
(never in the body: a post may quote the placeholder) with ``fill_for(key,
recipients)``: ``a=<address as queued, percent-encoded>&t=<token>`` for a single recipient,
where token = lower-case base32 of the first 80 bits of HMAC-SHA256(key, address
lower-cased) (16 characters); empty for several recipients (the URL then fails
verification and the web side asks for a confirmation by mail). ezlist's
``ezlist.oneclick.verify`` recomputes the same token.

The field must never leave the mta: remote delivery (``mta.remote.body``) and
local delivery (``mta.local.deliver``) strip it; the SMTP and QMTP listeners
strip it on ingress (``strip_private``) so an outsider cannot plant one.

Public:
    FIELD, token_for(key, address) -> str, fill_for(key, recipients) -> bytes
    header_end(raw) -> int
    extract(raw) -> (RcptToken | None, raw without the field)
    strip_private(raw) -> bytes;  personalize(raw, recipients) -> bytes
How it fails: never on hostile input. A malformed field (bad hex, bad
placeholder) is removed and ignored: nothing is substituted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import quote

__all__ = ["FIELD", "RcptToken", "extract", "fill_for", "header_end", "personalize",
           "strip_private", "token_for"]

FIELD = b"x-mta-rcpt-token"
MAX_ADDRESS = 254  # RFC 5321 4.5.3.1.3 path limit; longer gets no token (line length)
_VALUE = re.compile(rb"[ \t]*([0-9a-f]{64})[ \t]+(@@[A-Z0-9_]{1,32}@@)[ \t]*\r?\n?")


@dataclass(frozen=True, slots=True)
class RcptToken:
    """The key and placeholder a message's private field declared."""

    key: bytes
    placeholder: bytes


def token_for(key: bytes, address: str) -> str:
    """The 16-character token for ``address`` (compared lower-cased)."""
    mac = hmac.new(key, address.lower().encode("utf-8", "surrogateescape"),
                   hashlib.sha256).digest()[:10]
    return base64.b32encode(mac).decode("ascii").lower()


def fill_for(key: bytes, recipients: Sequence[str]) -> bytes:
    """What replaces the placeholder for a transaction to ``recipients``."""
    if len(recipients) != 1 or not recipients[0] or len(recipients[0]) > MAX_ADDRESS:
        return b""
    address = recipients[0]  # as queued: a local part's case is the subscriber's own
    return (b"a=" + quote(address, safe="@").encode("ascii") + b"&t="
            + token_for(key, address).encode("ascii"))


def header_end(raw: bytes) -> int:
    """Index of the empty line ending the header (``len(raw)`` when there is none)."""
    if raw.startswith(b"\n") or raw.startswith(b"\r\n"):
        return 0
    ends = [i + 1 for i in (raw.find(b"\n\n"), raw.find(b"\n\r\n")) if i >= 0]
    return min(ends) if ends else len(raw)


def extract(raw: bytes) -> tuple[RcptToken | None, bytes]:
    """Remove every private field from the header; the first valid one is returned.

    ``raw`` is returned unchanged (the same object) when it has no such field.
    """
    end = header_end(raw)
    head = raw[:end]
    if FIELD not in head.lower():
        return None, raw
    kept: list[bytes] = []
    token, dropping, pos = None, False, 0
    while pos < end:
        nl = head.find(b"\n", pos)
        nl = end if nl < 0 else nl + 1
        line = head[pos:nl]
        pos = nl
        if dropping and line[:1] in (b" ", b"\t"):
            continue  # a continuation line of the field being removed
        name, colon, value = line.partition(b":")
        dropping = bool(colon) and name.strip().lower() == FIELD
        if not dropping:
            kept.append(line)
        elif token is None:
            m = _VALUE.fullmatch(value)
            if m:
                token = RcptToken(bytes.fromhex(m.group(1).decode()), m.group(2))
    return token, b"".join(kept) + raw[end:]


def strip_private(raw: bytes) -> bytes:
    """``raw`` without any private field (ingress: nobody outside may plant one)."""
    return extract(raw)[1]


def personalize(raw: bytes, recipients: Sequence[str]) -> bytes:
    """The message as ``recipients`` get it: field removed, placeholder filled."""
    token, raw = extract(raw)
    if token is None:
        return raw
    end = header_end(raw)
    fill = fill_for(token.key, recipients)
    return raw[:end].replace(token.placeholder, fill) + raw[end:]
