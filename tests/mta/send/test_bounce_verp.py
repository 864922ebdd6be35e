"""End to end: bounces at the mta level (RD4, per-recipient VERP bounces, QSBMF layout).

qmail-queue shim -> `mta send` -> a sink that refuses one recipient with 550; the
bounce goes through the queue again, to a second sink that stands for the sender's
host (host.test / home.test routed there). The bounce's text is compared line by
line with qmail-send's layout.
"""

from __future__ import annotations

import email
import email.policy


from tests.sink import Sink

REFUSAL = "550 5.1.1 no such user here"




def report_of(bounce) -> tuple[list[str], str]:
    """(header lines, report part up to the break paragraph) of a bounce as received."""
    text = bounce.data.decode().replace("\r\n", "\n")
    header, body = text.split("\n\n", 1)
    report, sep, _copy = body.partition("--- Below this line is a copy of the message.\n\n")
    assert sep, f"no break paragraph in {body!r}"
    return header.split("\n"), report


def assert_qsbmf_for(bounce, failed: str, peer: str) -> None:
    header, report = report_of(bounce)
    assert "From: MAILER-DAEMON@mx.test" in header and "Subject: failure notice" in header
    assert report == (
        "Hi. This is the qmail-send program at mx.test.\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\n"
        "\n"
        f"<{failed}>:\n"
        f"{peer} does not like recipient.\n"
        f"Remote host said: {REFUSAL}\n"
        "\n")


def test_verp_message_bounces_per_recipient_to_its_verp_address(inst):
    with Sink("127.0.3.1", rcpt_reply={"b@x.test": REFUSAL}) as s, Sink("127.0.3.2") as home:
        inst.route([("x.test", "127.0.3.1", s.port), ("host.test", "127.0.3.2", home.port)])
        inst.start()
        body = b"Subject: post\n\nhello\n"
        assert inst.inject("pre-@host.test-@[]", ["a@x.test", "b@x.test", "c@x.test"], body) == 0
        home.wait_for(1, 30)
        inst.wait_empty(30)
        assert sorted((m.sender, tuple(m.rcpts)) for m in s.messages) == [
            ("pre-a=x.test@host.test", ("a@x.test",)), ("pre-c=x.test@host.test", ("c@x.test",))]
        [bounce] = home.messages  # exactly one: the delivered ones are not reported
        assert bounce.sender == "" and bounce.rcpts == ["pre-b=x.test@host.test"]
        assert_qsbmf_for(bounce, "b@x.test", "127.0.3.1")
        header, report = report_of(bounce)
        assert "To: pre-b=x.test@host.test" in header
        assert "a@x.test" not in report and "c@x.test" not in report
        copy = bounce.data.decode().replace("\r\n", "\n").split("of the message.\n\n", 1)[1]
        ret, received, rest = copy.split("\n", 2)  # qmail-queue added its Received line
        assert ret == "Return-Path: <pre-@host.test>"  # qmail: the -@[] stripped
        assert received.startswith("Received: (qmail ") and rest == "Subject: post\n\nhello\n"


def test_partial_rcpt_failure_one_bounce_listing_only_the_failed_one(inst):
    """RD4: RCPT #2 of 3 gets 550: #1 and #3 delivered, one bounce listing only #2."""
    with Sink("127.0.3.3", rcpt_reply={"two@x.test": REFUSAL}) as s, Sink("127.0.3.4") as home:
        inst.route([("x.test", "127.0.3.3", s.port), ("home.test", "127.0.3.4", home.port)])
        inst.start()
        rcpts = ["one@x.test", "two@x.test", "three@x.test"]
        assert inst.inject("sender@home.test", rcpts) == 0
        home.wait_for(1, 30)
        inst.wait_empty(30)
        [delivery] = s.messages  # one transaction, the refused RCPT left out
        assert delivery.sender == "sender@home.test"
        assert delivery.rcpts == ["one@x.test", "three@x.test"]
        [bounce] = home.messages
        assert bounce.sender == "" and bounce.rcpts == ["sender@home.test"]
        assert_qsbmf_for(bounce, "two@x.test", "127.0.3.3")
        _, report = report_of(bounce)
        assert "one@x.test" not in report and "three@x.test" not in report
        assert "Return-Path: <sender@home.test>\n" in bounce.data.decode().replace("\r\n", "\n")


def test_verp_dsn_bounce_carries_the_remote_enhanced_status(inst):
    """bounceformat dsn: the per-recipient VERP bounce's Status is the remote's 5.1.1."""
    with Sink("127.0.3.7", rcpt_reply={"b@x.test": REFUSAL}) as s, Sink("127.0.3.8") as home:
        inst.route([("x.test", "127.0.3.7", s.port), ("host.test", "127.0.3.8", home.port)])
        inst.control("bounceformat", "dsn\n")
        inst.start()
        assert inst.inject("pre-@host.test-@[]", ["a@x.test", "b@x.test"]) == 0
        home.wait_for(1, 30)
        inst.wait_empty(30)
        [bounce] = home.messages
        assert bounce.sender == "" and bounce.rcpts == ["pre-b=x.test@host.test"]
        msg = email.message_from_bytes(bounce.data.replace(b"\r\n", b"\n"),
                                       policy=email.policy.default)
        _human, status, _copy = msg.iter_parts()
        _per_msg, *blocks = status.get_payload()
        assert [(b["Final-Recipient"], b["Action"], b["Status"]) for b in blocks] == [
            ("rfc822; b@x.test", "failed", "5.1.1")]
        assert blocks[0]["Diagnostic-Code"] == (
            f"smtp; 127.0.3.7 does not like recipient. Remote host said: {REFUSAL}")
