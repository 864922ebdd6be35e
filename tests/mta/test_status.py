"""Every classification row of mta/status.py."""

from __future__ import annotations

import errno

import dns.exception
import dns.resolver
import pytest

from mta.interfaces import Delivered, PermFail, TempFail
from mta.status import (
    DnsTrouble, Stage, classify_dns, classify_dns_error, classify_oserror, classify_reply,
    classify_timeout, enhanced_status, soften,
)


@pytest.mark.parametrize("code,text,stage,kind,dsn", [
    (250, "250 ok", Stage.DOT, Delivered, None),
    (354, "354 go", Stage.DATA, Delivered, None),
    (421, "421 busy", Stage.GREETING, TempFail, "4.0.0"),
    (450, "450 4.2.1 mailbox busy", Stage.RCPT, TempFail, "4.2.1"),
    (451, "451 4.3.0 local error", Stage.MAIL, TempFail, "4.3.0"),
    (452, "452 4.5.3 too many recipients", Stage.RCPT, TempFail, "4.5.3"),
    (550, "550 5.1.1 no such user", Stage.RCPT, PermFail, "5.1.1"),
    (550, "550 no such user", Stage.RCPT, PermFail, "5.0.0"),
    (554, "554 5.7.1 rejected", Stage.DOT, PermFail, "5.7.1"),
    (554, "554 go away", Stage.GREETING, PermFail, "5.0.0"),
    # RFC 5321 4.5.3.1.10: 552 after RCPT is temporary; the dsn class follows
    (552, "552 5.2.2 mailbox full", Stage.RCPT, TempFail, "4.2.2"),
    (552, "552 too many recipients", Stage.RCPT, TempFail, "4.0.0"),
    # ... but 552 elsewhere (message too big after the dot) stays permanent
    (552, "552 5.3.4 message too big", Stage.DOT, PermFail, "5.3.4"),
    (552, "552 5.3.4 too big", Stage.MAIL, PermFail, "5.3.4"),
    # a 4xx carrying a 5.x.x code is still temporary, with a 4.x.x dsn
    (450, "450 5.7.1 greylisted", Stage.RCPT, TempFail, "4.7.1"),
    # out-of-range codes are protocol errors: temporary
    (199, "199 what", Stage.MAIL, TempFail, "4.5.0"),
    (600, "600 what", Stage.MAIL, TempFail, "4.5.0"),
])
def test_classify_reply(code, text, stage, kind, dsn):
    out = classify_reply(code, text, stage)
    assert type(out) is kind
    if dsn is not None:
        assert out.dsn == dsn
    assert text in (out.text if kind is Delivered else out.reason)


@pytest.mark.parametrize("text,want", [
    ("550 5.1.1 no", "5.1.1"), ("5.1.10 null mx", "5.1.10"), ("250-2.0.0 ok", "2.0.0"),
    ("550 no code", None), ("550 5.1 short", None), ("550 1.2.3 bad class", None),
    ("550 5.1.1.1 too many parts", None), ("", None)])
def test_enhanced_status(text, want):
    assert enhanced_status(text) == want


def test_timeouts_are_temporary():
    assert classify_timeout(Stage.CONNECT) == TempFail("timed out while connecting", "4.4.1")
    out = classify_timeout("dot")
    assert isinstance(out, TempFail) and out.dsn == "4.4.2" and "dot" in out.reason


@pytest.mark.parametrize("err", [errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                                 errno.ENETUNREACH, errno.ECONNRESET, errno.EPIPE])
def test_oserrors_are_temporary(err):
    exc = OSError(err, "some trouble")
    assert classify_oserror(exc).dsn == "4.4.1"
    later = classify_oserror(exc, Stage.DATA)
    assert isinstance(later, TempFail) and later.dsn == "4.4.2" and "some trouble" in later.reason


@pytest.mark.parametrize("kind,want,dsn", [
    (DnsTrouble.NXDOMAIN, PermFail, "5.1.2"), (DnsTrouble.NULL_MX, PermFail, "5.1.10"),
    (DnsTrouble.NO_ADDRESS, PermFail, "5.4.4"), (DnsTrouble.SERVFAIL, TempFail, "4.1.2"),
    (DnsTrouble.TIMEOUT, TempFail, "4.1.2"), ("servfail", TempFail, "4.1.2")])
def test_classify_dns(kind, want, dsn):
    out = classify_dns(kind, "other.example")
    assert type(out) is want and out.dsn == dsn and "other.example" in out.reason


@pytest.mark.parametrize("exc,want", [
    (dns.resolver.NXDOMAIN(), PermFail), (dns.resolver.NoAnswer(), PermFail),
    (dns.exception.Timeout(), TempFail), (dns.resolver.LifetimeTimeout(timeout=1.0, errors={}),
                                          TempFail),
    (dns.resolver.NoNameservers(), TempFail), (RuntimeError("odd"), TempFail)])
def test_classify_dns_error(exc, want):
    assert type(classify_dns_error(exc, "x.example")) is want


def test_soften_is_soft_bounce():
    assert soften(PermFail("550 no", "5.1.1")) == TempFail("550 no", "4.1.1")
    assert soften(TempFail("451", "4.3.0")) == TempFail("451", "4.3.0")
    assert soften(Delivered("ok")) == Delivered("ok")
