"""mta.bounce: where bounces go, and qmail-send's exact QSBMF layout (and the DSN variant).

The expected texts are qmail-send.c's ``injectbounce()``/``addbounce()`` output
(qmail-ezmlm.md 1.6): header, the "Hi. This is the qmail-send program at
BOUNCEHOST." paragraph, one ``<address>:`` paragraph per failure (blank lines in
the text escaped as ``/``), the break paragraph, ``Return-Path:`` and the message.
"""

from __future__ import annotations

import email
from email import policy

import pytest

from mta.bounce import DOUBLE_BOUNCE_SENDER, Failure, bounce_recipient, build_bounce

NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 +0000
ORIGINAL = b"Subject: hello\r\nFrom: a@home.test\r\n\r\nbody line\r\n.dot line\r\n"
REMOTE = "127.0.3.1 does not like recipient.\nRemote host said: 550 no such user"


@pytest.mark.parametrize("sender,rcpt,want", [
    ("a@home.test", "x@y.test", ("", "a@home.test")),
    # per-recipient VERP: the bounce goes to the address the recipient's copy carried
    ("pre-@host.test-@[]", "box@dom.test", ("", "pre-box=dom.test@host.test")),
    ("list-return-7-@lists.test-@[]", "u@o.test", ("", "list-return-7-u=o.test@lists.test")),
    # a bounce that bounces: a double bounce to the postmaster, sender #@[]
    ("", "x@y.test", (DOUBLE_BOUNCE_SENDER, "postmaster@mx.test")),
    # a double bounce that fails is dropped
    (DOUBLE_BOUNCE_SENDER, "postmaster@mx.test", None),
])
def test_bounce_recipient(sender, rcpt, want):
    assert bounce_recipient(sender, rcpt, "postmaster@mx.test") == want


def qsbmf(failures, sender="a@home.test", to="a@home.test", double=False,
          bouncehost="mx.test", original=ORIGINAL) -> str:
    return build_bounce(original=original, sender=sender, failures=failures, me="mx.test",
                        bouncefrom="MAILER-DAEMON", bouncehost=bouncehost, to=to,
                        double=double, now=NOW).decode()


def test_qsbmf_exact_layout():
    text = qsbmf([Failure("b@x.test", REMOTE, "5.1.1"), Failure("c@x.test", "second\n")])
    assert text == (
        "Date: Tue, 14 Nov 2023 22:13:20 +0000\n"
        "From: MAILER-DAEMON@mx.test\n"
        "To: a@home.test\n"
        "Subject: failure notice\n"
        "\n"
        "Hi. This is the qmail-send program at mx.test.\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\n"
        "\n"
        "<b@x.test>:\n"
        "127.0.3.1 does not like recipient.\n"
        "Remote host said: 550 no such user\n"
        "\n"
        "<c@x.test>:\n"
        "second\n"
        "\n"
        "--- Below this line is a copy of the message.\n"
        "\n"
        "Return-Path: <a@home.test>\n"
        "Subject: hello\n"
        "From: a@home.test\n"
        "\n"
        "body line\n"
        ".dot line\n")


def test_qsbmf_names_bouncehost_as_qmail_does():
    """qmail-send: "Hi. This is the qmail-send program at " + bouncehost (not me)."""
    text = qsbmf([Failure("b@x.test", REMOTE)], bouncehost="bounces.example")
    assert "\nFrom: MAILER-DAEMON@bounces.example\n" in text
    assert "\n\nHi. This is the qmail-send program at bounces.example.\n" in text


def test_qsbmf_return_path_of_a_verp_sender_drops_the_verp_suffix():
    """injectbounce(): ``owner-@host-@[]`` -> ``owner-@host`` before Return-Path is written."""
    text = qsbmf([Failure("b@x.test", REMOTE)], sender="pre-@host.test-@[]",
                 to="pre-b=x.test@host.test")
    assert "\nTo: pre-b=x.test@host.test\n" in text
    assert "\nReturn-Path: <pre-@host.test>\n" in text
    assert "-@[]" not in text


def test_qsbmf_text_never_breaks_its_paragraph():
    text = qsbmf([Failure("b@x.test", "line one\n\nline three\r\n\n\n"),
                  Failure("c@x.test", "\n\nfirst blank\n")])
    assert "<b@x.test>:\nline one\n/\nline three\n\n<c@x.test>:\n/\n/\nfirst blank\n\n" in text
    assert "\r" not in text.split("--- Below")[0]


def test_qsbmf_address_with_a_newline_cannot_forge_a_paragraph():
    """addbounce(): a newline in the recipient becomes '_' (an envelope address is NUL-ended)."""
    text = qsbmf([Failure("evil@x.test\n\n<forged@x.test>", "no")])
    report = text.split("--- Below")[0]
    assert "\n<forged@x.test>" not in report
    assert "<evil@x.test__<forged@x.test>>:\nno\n\n" in report


def test_newlines_in_addresses_cannot_forge_header_fields():
    forged = "a@home.test\nBcc: victim@else.test"
    for fmt in ("qsbmf", "dsn"):
        raw = build_bounce(original=ORIGINAL, sender=forged, to=forged, me="mx.test",
                           failures=[Failure("b@x.test\r\nX-Forged: 1", REMOTE)],
                           bouncefrom="MAILER-DAEMON", bouncehost="mx.test", fmt=fmt, now=NOW)
        lines = raw.decode().split("\n")
        assert not any(ln.startswith(("Bcc:", "X-Forged:")) for ln in lines), fmt
        assert "To: a@home.test_Bcc: victim@else.test" in lines, fmt
        assert "Return-Path: <a@home.test_Bcc: victim@else.test>" in lines, fmt


def test_double_bounce_wording():
    text = qsbmf([Failure("a@home.test", REMOTE)], sender="", to="postmaster@mx.test",
                 double=True)
    body = text.split("\n\n", 1)[1]
    assert body.startswith(
        "Hi. This is the qmail-send program at mx.test.\n"
        "I tried to deliver a bounce message to this address, but the bounce bounced!\n"
        "\n<a@home.test>:\n")
    assert "I'm afraid" not in body
    assert "\n--- Below this line is the original bounce.\n\nReturn-Path: <>\n" in body
    assert "copy of the message" not in body


def test_original_is_copied_whole_with_lf_line_ends():
    original = b"Subject: s\r\n\r\n" + b"".join(b"line %d\r\n" % i for i in range(1000))
    text = qsbmf([Failure("b@x.test", REMOTE)], original=original)
    assert text.endswith("\nReturn-Path: <a@home.test>\n"
                         + original.decode().replace("\r\n", "\n"))


def test_dsn_report_parses_as_rfc3464():
    raw = build_bounce(original=ORIGINAL, sender="a@home.test", me="mx.test",
                       failures=[Failure("b@x.test", REMOTE, "5.1.1"),
                                 Failure("c@x.test", "mailbox full\n\nsorry", "5.2.2")],
                       bouncefrom="MAILER-DAEMON", bouncehost="mx.test", to="a@home.test",
                       fmt="dsn", now=NOW)
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    human, status, copy = msg.get_payload()
    assert "<b@x.test>: 127.0.3.1 does not like recipient." in human.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_msg, *per_rcpt = status.get_payload()
    assert per_msg["Reporting-MTA"] == "dns; mx.test"
    assert [(b["Final-Recipient"], b["Action"], b["Status"]) for b in per_rcpt] == [
        ("rfc822; b@x.test", "failed", "5.1.1"), ("rfc822; c@x.test", "failed", "5.2.2")]
    assert per_rcpt[0]["Diagnostic-Code"] == (
        "smtp; 127.0.3.1 does not like recipient. Remote host said: 550 no such user")
    assert copy.get_content_type() == "message/rfc822"
    [inner] = copy.get_payload()
    assert inner["Subject"] == "hello"
    assert inner["Return-Path"] == "<a@home.test>"


def test_dsn_return_path_of_a_verp_sender_drops_the_verp_suffix():
    raw = build_bounce(original=ORIGINAL, sender="pre-@host.test-@[]", me="mx.test",
                       failures=[Failure("b@x.test", REMOTE)], bouncefrom="MAILER-DAEMON",
                       bouncehost="mx.test", to="pre-b=x.test@host.test", fmt="dsn", now=NOW)
    assert b"\nReturn-Path: <pre-@host.test>\n" in raw and b"-@[]" not in raw
