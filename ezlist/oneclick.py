"""RFC 8058 one-click unsubscribe: per-recipient URLs in a shared post, and their check.

What it does: a post is ONE stored body for every subscriber, yet a one-click
URL must name its recipient and be unforgeable. ``prepare_post`` (ezlist.post)
therefore writes, when the list has an ``unsuburl``:

    List-Unsubscribe: <BASE?l=NAME@HOST&n=NUM&@@RCPT_TOKEN@@>, <mailto:NAME-unsubscribe@HOST>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click
    X-Mta-Rcpt-Token: <hex of post_key(list key, NUM)> @@RCPT_TOKEN@@

and the mta's delivery (mta.rcpt_token) removes the private field and fills the
placeholder, for each single-recipient transaction (every VERPed post), with
``a=ADDRESS&t=TOKEN`` where TOKEN = lower-case base32 of 80 bits of
HMAC-SHA256(post key, address lower-cased). Only the list key can make a post
key, so only we can make a token; a post key names one post, so a leaked URL
unsubscribes one address from one list and nothing else.

The web side that checks a filled URL and unsubscribes is ezlist.oneclick_web.

Public:
    PLACEHOLDER, post_key(list_key, number) -> bytes
    template_url(cfg, number) -> str;  private_field(list_key, number, eol) -> bytes
    parse_query(query) -> Request | None;  verify(list_key, number, address, token) -> bool

Failures: ``parse_query`` and ``verify`` never raise on hostile input (None, False).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import parse_qs, quote

from ezlist.listdir import ListConfig
from ezlist.subscribers import normalize_address
from mta.rcpt_token import token_for

PLACEHOLDER = b"@@RCPT_TOKEN@@"


@dataclass(frozen=True, slots=True)
class Request:
    list_address: str
    number: int
    address: str
    token: str


def post_key(list_key: bytes, number: int) -> bytes:
    """The key whose tokens belong to post ``number`` of the list keyed ``list_key``."""
    return hmac.new(list_key, b"oneclick\0" + str(number).encode("ascii"),
                    hashlib.sha256).digest()


def template_url(cfg: ListConfig, number: int) -> str:
    """The List-Unsubscribe https URL of post ``number``, placeholder included."""
    base = cfg.options.unsubscribe_url
    joiner = "&" if "?" in base else "?"
    return (f"{base}{joiner}l={quote(cfg.address, safe='@')}&n={number}&"
            + PLACEHOLDER.decode("ascii"))


def private_field(list_key: bytes, number: int, eol: bytes) -> bytes:
    """The ``X-Mta-Rcpt-Token`` field telling the mta how to fill the placeholder."""
    return (b"X-Mta-Rcpt-Token: " + post_key(list_key, number).hex().encode("ascii")
            + b" " + PLACEHOLDER + eol)


def verify(list_key: bytes, number: int, address: str, token: str) -> bool:
    expected = token_for(post_key(list_key, number), address)
    return hmac.compare_digest(expected.encode(), token.encode("utf-8", "replace"))


def parse_query(query: str) -> Request | None:
    """The four parameters of a filled URL, or None when one is missing or malformed."""
    try:
        params = parse_qs(query, strict_parsing=False, max_num_fields=16)
    except ValueError:
        return None
    values = {k: v[0] for k, v in params.items() if len(v) == 1}
    if not {"l", "n", "a", "t"} <= values.keys() or not values["n"].isdigit():
        return None
    address = normalize_address(values["a"])
    if address is None or len(values["n"]) > 12:
        return None
    return Request(values["l"].strip(), int(values["n"]), address, values["t"].strip())
