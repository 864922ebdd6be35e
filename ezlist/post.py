"""Check and prepare a list post, editing the header on raw bytes.

What it does:
``check_post`` refuses, as permanent failures (mta.interfaces.PermFail):
bounces (sender ``<>`` or ``#@[]``; LS11, #5.7.2), a post that already carries
``Delivered-To: mailing list L@H`` or our own ``Mailing-List:`` header (a loop;
LP4, #5.4.6), one over the size limit (#5.2.3) and, on a subscribers-only list,
one from a non-subscriber (when the caller passes ``is_subscriber``; #5.7.2).

``prepare_post`` turns an accepted post into the message that is distributed:
  1. removes ezmlm's ``headerremove`` set (``REMOVED``: Return-Path, Precedence,
     Content-Length, read-receipt requests, every List-* field and a foreign
     Mailing-List), so only our list fields remain;
  2. keeps only the topmost (newest) ``Received:`` line unless ``keep_received``
     (ezmlm -R default: the archive and subscribers need not see the poster's
     route, and long list chains must not hit a hop limit; the message is
     already ours, having passed our MTA);
  3. prefixes the Subject (``#`` in the prefix becomes the post number) unless
     the prefix is already there; the prefix goes before the old value, never
     inside an RFC 2047 encoded word; a missing Subject gets the bare prefix;
  4. prepends, in this order: Mailing-List, List-Id (RFC 2919), List-Help,
     List-Post, List-Subscribe, List-Unsubscribe (RFC 2369), List-Unsubscribe-Post
     (RFC 8058, only with an https ``unsuburl``), Precedence: list,
     ``Delivered-To: mailing list L@H`` and, with ``unsuburl``, the private field;
  5. appends ``text/trailer`` to the body only for a single-part text/plain
     message in 7bit/8bit without a DKIM-Signature (any signature covers the
     body); multipart, encoded or signed posts are left byte-exact and get no
     trailer (we chose not to add a MIME part: it would rewrite the body).
Every field not named above, and the body (when no trailer is added), is kept
byte for byte: DKIM-Signature fields and MIME bodies survive.

One-click unsubscribe (RFC 8058): a post body is shared by all recipients, so
with ``unsubscribe_url`` set List-Unsubscribe carries ezlist.oneclick's template
URL (post number and a placeholder), List-Unsubscribe-Post is added, and the
private ``X-Mta-Rcpt-Token`` field tells the mta's delivery how to fill the
placeholder for each recipient (mta.rcpt_token; the field never leaves the mta).
The archive copy must be stored without that field (``strip_private``).

Public functions:
    check_post(raw, sender, cfg, is_subscriber=None) -> PermFail | None
    prepare_post(raw, cfg, number) -> bytes
    list_fields(cfg, eol, number) -> list[bytes]

Failures: both functions return values, never raise on hostile messages.
"""

from __future__ import annotations

import re
from email.header import decode_header, make_header
from email.errors import HeaderParseError
from typing import Callable

from ezlist import oneclick, templates
from ezlist.headers import (field_name, field_value, join_fields, line_ending, make_field,
                            parse_fields, remove_fields, split_message, values_of)
from ezlist.listdir import ListConfig, read_key
from mta.interfaces import PermFail

REMOVED = frozenset({
    b"return-path", b"return-receipt-to", b"content-length", b"precedence",
    b"x-confirm-reading-to", b"x-pmrqc", b"list-subscribe", b"list-unsubscribe",
    b"list-unsubscribe-post", b"list-help", b"list-post", b"list-id", b"list-owner",
    b"list-archive", b"mailing-list",
})
_PLAIN_ENCODINGS = {b"", b"7bit", b"8bit"}


def check_post(raw: bytes, sender: str, cfg: ListConfig,
               is_subscriber: Callable[[str], bool] | None = None) -> PermFail | None:
    """Return why the post must not be distributed, or None when it may be."""
    if sender in ("", "#@[]"):
        return PermFail("I do not distribute bounce messages (#5.7.2)", "5.7.2")
    fields = parse_fields(split_message(raw)[0])
    mine = f"mailing list {cfg.address}".lower().encode()
    if any(v.lower() == mine for v in values_of(fields, b"delivered-to")):
        return PermFail("this message is looping: it already has my Delivered-To line (#5.4.6)",
                        "5.4.6")
    help_address = f"{cfg.name}-help@{cfg.host}".lower().encode()
    if any(help_address in v.lower() for v in values_of(fields, b"mailing-list")):
        return PermFail("this message is looping: it already has my Mailing-List line (#5.4.6)",
                        "5.4.6")
    limit = cfg.options.max_message_size
    if limit and len(raw) > limit:
        return PermFail(f"message is larger than the list's limit of {limit} bytes (#5.2.3)",
                        "5.2.3")
    if cfg.options.subscribers_only and is_subscriber is not None and not is_subscriber(sender):
        return PermFail("only subscribers may post to this list (#5.7.2)", "5.7.2")
    return None


def list_fields(cfg: ListConfig, eol: bytes, number: int) -> list[bytes]:
    """The fields post ``number`` gets, in order (see module docstring, step 4)."""
    name, host = cfg.name, cfg.host
    unsubscribe = f"<mailto:{name}-unsubscribe@{host}>"
    web = cfg.options.unsubscribe_url
    if web:
        unsubscribe = f"<{oneclick.template_url(cfg, number)}>, {unsubscribe}"
    pairs = [
        ("Mailing-List", f"contact {name}-help@{host}; run by ezlist"),
        ("List-Id", f"<{name}.{host}>"),
        ("List-Help", f"<mailto:{name}-help@{host}>"),
        ("List-Post", f"<mailto:{name}@{host}>"),
        ("List-Subscribe", f"<mailto:{name}-subscribe@{host}>"),
        ("List-Unsubscribe", unsubscribe),
    ]
    if web:
        pairs.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    pairs += [("Precedence", "list"), ("Delivered-To", f"mailing list {name}@{host}")]
    fields = [make_field(k, v, eol) for k, v in pairs]
    if web:
        fields.append(oneclick.private_field(read_key(cfg.path), number, eol))
    return fields


def _keep_first_received(fields: list[bytes]) -> list[bytes]:
    out, seen = [], False
    for field in fields:
        if field_name(field) == b"received":
            if seen:
                continue
            seen = True
        out.append(field)
    return out


def _decoded(value: bytes) -> str:
    text = value.decode("utf-8", errors="replace")
    try:
        return str(make_header(decode_header(text)))
    except (HeaderParseError, LookupError, UnicodeError, ValueError):
        return text


def _prefix_subject(fields: list[bytes], prefix: str, number: int, eol: bytes) -> list[bytes]:
    wanted = prefix.replace("#", str(number)).encode("ascii")
    pattern = re.compile(re.escape(prefix).replace("\\#", "#").replace("#", r"[0-9]+"), re.I)
    for i, field in enumerate(fields):
        if field_name(field) != b"subject":
            continue
        if pattern.search(_decoded(field_value(field))):
            return fields
        colon = field.index(b":")
        rest = field[colon + 1 :].lstrip(b" \t\r\n")
        new = b"Subject: " + wanted + (b" " + rest if rest else eol)
        return fields[:i] + [new] + fields[i + 1 :]
    return fields + [b"Subject: " + wanted + eol]


def _trailer_allowed(fields: list[bytes], trailer: bytes) -> bool:
    if values_of(fields, b"dkim-signature"):
        return False
    ctype = b"".join(values_of(fields, b"content-type")[:1]).lower()
    mtype = ctype.split(b";", 1)[0].strip()
    if mtype not in (b"", b"text/plain"):
        return False
    cte = b"".join(values_of(fields, b"content-transfer-encoding")[:1]).lower().strip()
    if cte not in _PLAIN_ENCODINGS:
        return False
    if trailer.isascii():
        return True
    return b"utf-8" in ctype.replace(b'"', b"") and cte == b"8bit"


def _append_trailer(body: bytes, trailer: bytes, eol: bytes) -> bytes:
    lines = trailer.splitlines()
    if body and not body.endswith(b"\n"):
        body += eol
    return body + eol.join(lines) + eol


def prepare_post(raw: bytes, cfg: ListConfig, number: int) -> bytes:
    """The message as distributed for post ``number`` (see module docstring)."""
    header, separator, body = split_message(raw)
    eol = line_ending(raw)
    fields = remove_fields(parse_fields(header), REMOVED)
    if not cfg.options.keep_received:
        fields = _keep_first_received(fields)
    if cfg.options.prefix:
        fields = _prefix_subject(fields, cfg.options.prefix, number, eol)
    if cfg.options.trailer:
        trailer = templates.render(cfg.path, "trailer", n=number).encode("utf-8")
        if trailer.strip() and _trailer_allowed(fields, trailer):
            body = _append_trailer(body, trailer, eol)
            separator = separator or eol
    new_header = join_fields(list_fields(cfg, eol, number) + fields, eol)
    return new_header + separator + body
