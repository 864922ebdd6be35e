"""qmail's senderadd() VERP rewriting (qmail-ezmlm.md 1.4, security matrix RD6)."""

from __future__ import annotations

import pytest

from mta.verp import bounce_address, is_verp, verp_sender


@pytest.mark.parametrize("sender,rcpt,want", [
    ("list-return-7-@lists.local.test-@[]", "a@other.example",
     "list-return-7-a=other.example@lists.local.test"),
    ("sos-return-123-@example.org-@[]", "God@heaven.af.mil",
     "sos-return-123-God=heaven.af.mil@example.org"),
    # the last '@' of the recipient separates box and domain
    ("l-@h.test-@[]", "we@ird@d.test", "l-we@ird=d.test@h.test"),
    # the last '@' before the suffix is the host separator
    ("a@b-@h.test-@[]", "x@y", "a@b-x=y@h.test"),
    # recipient without '@': sender unchanged (qmail)
    ("l-@h.test-@[]", "postmaster", "l-@h.test-@[]"),
    # not a VERP sender: unchanged
    ("owner@h.test", "x@y", "owner@h.test"),
    ("", "x@y", ""),
    ("#@[]", "x@y", "#@[]"),
    # no '@' before the suffix: qmail's j = 0
    ("nohost-@[]", "x@y", "x=y@ohost"),
])
def test_verp_sender(sender, rcpt, want):
    assert verp_sender(sender, rcpt) == want


def test_is_verp_and_bounce_address():
    assert is_verp("owner-@host-@[]") and not is_verp("owner@host") and not is_verp("#@[]")
    assert bounce_address("owner-@host-@[]") == "owner-@host"
    assert bounce_address("list-return-7-@lists.local.test-@[]") == "list-return-7-@lists.local.test"
    assert bounce_address("plain@host") == "plain@host"
    assert bounce_address("") == ""
