"""Bounce messages: qmail's QSBMF layout, or RFC 3464 delivery status notifications.

``build_bounce`` renders the failure report for one message: the header
(``Date``, ``From: bouncefrom@bouncehost``, ``To: <sender>``, ``Subject: failure
notice``), qmail-send's introductory paragraph (naming ``bouncehost``, as
``injectbounce()`` does), one ``<address>:`` paragraph per failed recipient
carrying the remote's text (blank lines inside it escaped as ``/``, as qmail does,
so a paragraph never contains an empty line), the break paragraph and a copy of the
original message after a ``Return-Path`` line (a VERP sender's ``-@[]`` stripped,
as qmail). A CR or LF in an address is shown as ``_`` (qmail ``addbounce()``), so
an envelope address cannot forge a paragraph or a header field.
A double bounce (the failed message was itself a bounce) uses qmail's other
wording. With ``fmt="dsn"`` the same facts become a ``multipart/report`` (RFC 3464)
with a human-readable part, a ``message/delivery-status`` part with one
per-recipient block (``Final-Recipient``, ``Action: failed``, ``Status``,
``Diagnostic-Code``) and the original message as ``message/rfc822``.

Public:
    Failure(address, text, dsn)     one failed recipient
    build_bounce(...) -> bytes       LF line ends, ready for the queue
    bounce_recipient(sender, ...)    where a bounce for ``sender`` goes (qmail's rules)

Nothing here touches the queue; the scheduler injects what this returns.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime

from mta.verp import bounce_address, is_verp, verp_sender

__all__ = ["Failure", "build_bounce", "bounce_recipient", "DOUBLE_BOUNCE_SENDER"]

DOUBLE_BOUNCE_SENDER = "#@[]"


@dataclass(frozen=True)
class Failure:
    address: str
    text: str
    dsn: str = "5.0.0"


def bounce_recipient(sender: str, recipient: str, doublebounce: str) -> tuple[str, str] | None:
    """(envelope sender, recipient) of the bounce for a failure of ``sender``'s message.

    A normal message bounces to its sender with the empty sender; a VERPed one to the
    per-recipient VERP address; a bounce (empty sender) double-bounces to the
    postmaster with sender ``#@[]``; a double bounce that fails is dropped (None).
    """
    if sender == DOUBLE_BOUNCE_SENDER:
        return None
    if sender == "":
        return DOUBLE_BOUNCE_SENDER, doublebounce
    if is_verp(sender):
        return "", verp_sender(sender, recipient)
    return "", sender


def _safe(text: str) -> str:
    lines = [ln.rstrip() for ln in text.replace("\r", "").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(ln if ln else "/" for ln in lines)


def _addr(address: str) -> str:
    """An address as a report shows it: a CR or LF becomes ``_`` (qmail ``addbounce()``)."""
    return address.replace("\r", "_").replace("\n", "_")


def _header(bouncefrom: str, bouncehost: str, to: str, subject: str, now: float) -> list[str]:
    date = format_datetime(datetime.fromtimestamp(now, timezone.utc))
    return [f"Date: {date}", f"From: {bouncefrom}@{bouncehost}", f"To: {_addr(to)}",
            f"Subject: {subject}"]


def build_bounce(*, original: bytes, sender: str, failures: list[Failure], me: str,
                 bouncefrom: str, bouncehost: str, to: str, double: bool = False,
                 fmt: str = "qsbmf", now: float | None = None) -> bytes:
    """Render the bounce; ``to`` is its recipient, ``sender`` the failed message's sender."""
    now = time.time() if now is None else now
    if fmt == "dsn":
        return _build_dsn(original, sender, failures, me, bouncefrom, bouncehost, to, now)
    lines = _header(bouncefrom, bouncehost, to, "failure notice", now)
    lines += ["", f"Hi. This is the qmail-send program at {bouncehost}."]
    if double:
        lines.append("I tried to deliver a bounce message to this address, but the bounce bounced!")
    else:
        lines += ["I'm afraid I wasn't able to deliver your message to the following addresses.",
                  "This is a permanent error; I've given up. Sorry it didn't work out."]
    for f in failures:
        lines += ["", f"<{_addr(f.address)}>:", _safe(f.text)]
    lines += ["", "--- Below this line is the original bounce." if double
              else "--- Below this line is a copy of the message.", "",
              f"Return-Path: <{_addr(bounce_address(sender))}>"]
    return ("\n".join(lines) + "\n").encode("utf-8", "replace") + original.replace(b"\r\n", b"\n")


def _build_dsn(original: bytes, sender: str, failures: list[Failure], me: str,
               bouncefrom: str, bouncehost: str, to: str, now: float) -> bytes:
    boundary = f"{int(now)}.{os.getpid()}.dsn/{me}"
    lines = _header(bouncefrom, bouncehost, to, "Delivery Status Notification (Failure)", now)
    lines += ["MIME-Version: 1.0",
              f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
              "", "This is a MIME-encapsulated message.", "", f"--{boundary}",
              "Content-Type: text/plain; charset=utf-8", "",
              f"This is the mail system at {me}.",
              "I was not able to deliver your message to the following addresses.", ""]
    for f in failures:
        lines += [f"<{_addr(f.address)}>: {_safe(f.text)}", ""]
    lines += [f"--{boundary}", "Content-Type: message/delivery-status", "",
              f"Reporting-MTA: dns; {me}",
              f"Arrival-Date: {format_datetime(datetime.fromtimestamp(now, timezone.utc))}"]
    for f in failures:
        diag = " ".join(_safe(f.text).split("\n"))
        lines += ["", f"Final-Recipient: rfc822; {_addr(f.address)}", "Action: failed",
                  f"Status: {f.dsn}", f"Diagnostic-Code: smtp; {diag}"]
    lines += ["", f"--{boundary}", "Content-Type: message/rfc822", "",
              f"Return-Path: <{_addr(bounce_address(sender))}>"]
    tail = f"\n--{boundary}--\n".encode()
    body = original.replace(b"\r\n", b"\n")
    if not body.endswith(b"\n"):
        body += b"\n"
    return ("\n".join(lines) + "\n").encode("utf-8", "replace") + body + tail
