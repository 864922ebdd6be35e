"""Read bounce messages that carry no VERP address: QSBMF and RFC 3464 DSN.

What it does:
``failed_addresses`` returns the recipients a bounce reports as failed:
  * QSBMF (qmail's format, qmail-ezmlm.md 1.6): the body's first paragraph
    starts with ``Hi. This is the``; each following paragraph that starts with
    ``<`` and whose first line ends in ``>:`` names one failed address; the
    break paragraph (starting with ``-``) ends the list.
  * DSN (RFC 3464): a ``multipart/report; report-type=delivery-status`` whose
    ``message/delivery-status`` part has per-recipient groups; a group counts
    only with ``Action: failed`` (section 2.3.3), and its address is the
    Original-Recipient when present (the address we sent to), else the
    Final-Recipient (section 2.3.1-2.3.2), type ``rfc822`` only.
``is_ignorable`` is our ezmlm-weed: True for mail that is not a failure report
and must not count as a bounce: delay and success notices (qmail-style
``Subject: success notice`` / ``deferral notice``, DSNs none of whose groups is
``failed``, sendmail's "Warning: could not send message for past ..."),
auto-replies (``Auto-Submitted: auto-replied``) and ``Precedence: bulk|junk``.

This module only reads: ``email`` parses the DSN's MIME structure, and nothing
is ever written back. Addresses are returned with the domain lower-cased,
duplicates removed, in report order.

Public functions:
    failed_addresses(raw) -> list[str]
    is_ignorable(raw) -> bool
    is_qsbmf(raw) -> bool

Failures: never raises on malformed input; an unreadable bounce yields [].
"""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from email.message import Message

from ezlist.headers import parse_fields, split_message, values_of
from ezlist.subscribers import normalize_address

_PARAGRAPH = re.compile(rb"\r?\n[ \t]*\r?\n")
_IGNORED_SUBJECTS = (
    "success notice", "deferral notice", "delivery status notification (delay)",
    "delivery status notification (success)", "warning: could not send message",
    "delayed mail", "delivery delayed",
)


def is_qsbmf(raw: bytes) -> bool:
    body = split_message(raw)[2]
    return body.lstrip(b"\r\n").startswith(b"Hi. This is the")


def _qsbmf_addresses(body: bytes) -> list[str]:
    found = []
    for paragraph in _PARAGRAPH.split(body.lstrip(b"\r\n"))[1:]:
        if paragraph.startswith(b"-"):
            break
        first = paragraph.split(b"\n", 1)[0].rstrip(b"\r")
        if paragraph.startswith(b"<") and first.endswith(b">:"):
            found.append(first[1:-2].decode("utf-8", errors="replace"))
    return found


def _groups(raw: bytes) -> list[Message] | None:
    """The per-recipient groups of a DSN, or None when this is not a DSN."""
    try:
        msg = message_from_bytes(raw, policy=policy.compat32)
        if msg.get_content_type() != "multipart/report":
            return None
        for part in msg.walk():
            if part.get_content_type() == "message/delivery-status":
                blocks = part.get_payload()
                return list(blocks[1:]) if isinstance(blocks, list) else []
    except (ValueError, TypeError, LookupError, IndexError):
        return None
    return None


def _recipient(group: Message) -> str | None:
    for name in ("Original-Recipient", "Final-Recipient"):
        value = str(group.get(name, ""))
        kind, sep, address = value.partition(";")
        if sep and kind.strip().lower() == "rfc822" and address.strip():
            return address.strip().strip("<>")
    return None


def _dsn_addresses(groups: list[Message]) -> list[str]:
    found = []
    for group in groups:
        if str(group.get("Action", "")).strip().lower() == "failed":
            address = _recipient(group)
            if address:
                found.append(address)
    return found


def failed_addresses(raw: bytes) -> list[str]:
    """The addresses this bounce reports as permanently failed."""
    if is_qsbmf(raw):
        candidates = _qsbmf_addresses(split_message(raw)[2])
    else:
        groups = _groups(raw)
        candidates = _dsn_addresses(groups) if groups else []
    result: list[str] = []
    for text in candidates:
        address = normalize_address(text)
        if address and address not in result:
            result.append(address)
    return result


def is_ignorable(raw: bytes) -> bool:
    """True for delay/success notices and auto-replies (ezmlm-weed).

    A failure report wins over its headers: Postfix marks its real bounces
    ``Auto-Submitted: auto-replied``, so that test applies only to mail that is
    neither QSBMF nor a DSN.
    """
    fields = parse_fields(split_message(raw)[0])
    subject = b" ".join(values_of(fields, b"subject")).decode("utf-8", "replace").lower()
    if any(subject.startswith(s) for s in _IGNORED_SUBJECTS):
        return True
    if is_qsbmf(raw):
        return False
    groups = _groups(raw)
    if groups is not None:
        return not _dsn_addresses(groups)
    if any(v.lower().startswith(b"auto-replied") for v in values_of(fields, b"auto-submitted")):
        return True
    return any(v.lower() in (b"bulk", b"junk") for v in values_of(fields, b"precedence"))
