"""Classify delivery trouble once: temporary or permanent (STYLE.md "Errors").

What it does: every failure the remote-delivery side meets (an SMTP reply, a
timeout, an ``OSError``, a DNS answer) is turned here, and only here, into an
``Outcome`` from ``mta.interfaces``: ``Delivered``, ``TempFail`` or ``PermFail``.
The rules (each row tested in tests/mta/test_status.py):

- reply codes: 2xx/3xx success, 4xx temporary, 5xx permanent, except ``552``
  after RCPT, which RFC 5321 4.5.3.1.10 says to treat as ``452`` (temporary);
  anything outside 200-599 is a protocol error, hence temporary (in doubt, temporary);
- an RFC 3463 enhanced status code at the start of the reply text (``5.1.1``) is
  carried into ``dsn``; otherwise ``dsn`` is ``4.0.0`` / ``5.0.0``. When the class
  of the enhanced code disagrees with the outcome (552 -> temporary) its first
  digit is rewritten so ``TempFail.dsn`` always starts with ``4``;
- timeouts and ``OSError``: temporary (qmail ``error_temp.c``, dsn ``4.4.1`` before
  the connection exists, ``4.4.2`` after);
- DNS: NXDOMAIN, a null MX (RFC 7505) and "no address records" are permanent;
  SERVFAIL, timeouts and anything unknown are temporary.
- ``soften(outcome)``: Postfix's ``soft_bounce``: every PermFail becomes TempFail.

Public functions: ``classify_reply(code, text, stage)``, ``enhanced_status(text)``,
``classify_oserror(exc, stage)``, ``classify_timeout(stage)``,
``classify_dns(kind, name)``, ``classify_dns_error(exc, name)``, ``soften(outcome)``.
Constants: the ``Stage`` names and ``DnsTrouble`` kinds.

How it fails: it does not; every input maps to some outcome.
"""

from __future__ import annotations

import re
from enum import Enum

from mta.interfaces import Delivered, Outcome, PermFail, TempFail


class Stage(str, Enum):
    """Where in an SMTP session a reply or failure happened."""

    CONNECT = "connect"
    GREETING = "greeting"
    EHLO = "ehlo"
    STARTTLS = "starttls"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    DOT = "dot"  # the reply to the final "." (the message itself)
    RSET = "rset"
    QUIT = "quit"
    IDLE = "idle"  # between transactions on a kept-open connection


class DnsTrouble(str, Enum):
    """What a DNS lookup for a mail domain ended in (mta.dns reports one of these)."""

    NXDOMAIN = "nxdomain"
    NULL_MX = "null_mx"
    NO_ADDRESS = "no_address"  # the name exists but has no MX/A/AAAA data
    SERVFAIL = "servfail"
    TIMEOUT = "timeout"


_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")


def enhanced_status(text: str) -> str | None:
    """The RFC 3463 status code that opens reply ``text`` (``"5.1.1 no"`` -> ``"5.1.1"``).

    ``text`` may carry the reply code in front (``"550 5.1.1 no"``). Returns None
    when there is none.
    """
    if text[:3].isdigit() and text[3:4] in (" ", "-"):
        text = text[4:]
    m = _ENHANCED.match(text.lstrip())
    return m.group(0) if m else None


def _dsn_for(text: str, klass: str) -> str:
    found = enhanced_status(text)
    if found is None:
        return klass + ".0.0"
    if found[0] != klass:
        return klass + found[1:]
    return found


def classify_reply(code: int, text: str, stage: Stage | str) -> Outcome:
    """Classify SMTP reply ``code`` (with its ``text``) received at ``stage``.

    The returned reason is ``text`` unchanged; callers prefix their own context
    ("x does not like recipient.").
    """
    if 200 <= code < 400:
        return Delivered(text)
    if 400 <= code < 500:
        return TempFail(text, _dsn_for(text, "4"))
    if code == 552 and stage == Stage.RCPT:
        # RFC 5321 4.5.3.1.10: 552 after RCPT is "too many recipients"/"storage"
        # and must be treated as 452 (temporary).
        return TempFail(text, _dsn_for(text, "4"))
    if 500 <= code < 600:
        return PermFail(text, _dsn_for(text, "5"))
    return TempFail(f"protocol error: unexpected reply code {code}: {text}", "4.5.0")


def classify_timeout(stage: Stage | str) -> TempFail:
    """A wait at ``stage`` ran out: always temporary (qmail ``timeoutremote``)."""
    stage = Stage(stage)
    if stage == Stage.CONNECT:
        return TempFail("timed out while connecting", "4.4.1")
    return TempFail(f"timed out waiting for the reply to {stage.value}", "4.4.2")


def classify_oserror(exc: OSError, stage: Stage | str = Stage.CONNECT) -> TempFail:
    """An ``OSError`` from socket work: always temporary (qmail ``error_temp.c``)."""
    stage = Stage(stage)
    detail = exc.strerror or str(exc) or type(exc).__name__
    if stage == Stage.CONNECT:
        return TempFail(f"unable to connect: {detail}", "4.4.1")
    return TempFail(f"connection trouble at {stage.value}: {detail}", "4.4.2")


def classify_dns(kind: DnsTrouble | str, name: str) -> TempFail | PermFail:
    """Classify a DNS result for mail domain ``name`` (qmail-remote's wording)."""
    kind = DnsTrouble(kind)
    if kind == DnsTrouble.NXDOMAIN:
        return PermFail(f"Sorry, I couldn't find any host named {name}. (#5.1.2)", "5.1.2")
    if kind == DnsTrouble.NULL_MX:
        return PermFail(f"Sorry, {name} does not accept mail (null MX). (#5.1.10)", "5.1.10")
    if kind == DnsTrouble.NO_ADDRESS:
        return PermFail(f"Sorry, I couldn't find a mail exchanger or IP address for {name}. (#5.4.4)", "5.4.4")
    return TempFail(f"Sorry, I couldn't find any host by that name ({name}: {kind.value}). (#4.1.2)", "4.1.2")


def classify_dns_error(exc: BaseException, name: str) -> TempFail | PermFail:
    """Classify a dnspython exception raised while resolving ``name``."""
    import dns.exception
    import dns.resolver

    if isinstance(exc, dns.resolver.NXDOMAIN):
        return classify_dns(DnsTrouble.NXDOMAIN, name)
    if isinstance(exc, dns.resolver.NoAnswer):
        return classify_dns(DnsTrouble.NO_ADDRESS, name)
    if isinstance(exc, dns.exception.Timeout):
        return classify_dns(DnsTrouble.TIMEOUT, name)
    return classify_dns(DnsTrouble.SERVFAIL, name)


def soften(outcome: Outcome) -> Outcome:
    """Postfix ``soft_bounce = yes``: turn a permanent failure into a temporary one."""
    if isinstance(outcome, PermFail):
        return TempFail(outcome.reason, "4" + outcome.dsn[1:])
    return outcome
