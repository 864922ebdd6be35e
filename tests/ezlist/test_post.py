"""Post checks and preparation; rendered messages are compared with golden files."""

from pathlib import Path

import pytest

from ezlist.headers import parse_fields, split_message
from ezlist.listdir import ListOptions, edit_list, make_list
from ezlist.oneclick import PLACEHOLDER, post_key, verify
from ezlist.post import check_post, list_fields, prepare_post
from mta.rcpt_token import personalize, strip_private

FIX = Path(__file__).parent / "fixtures"
GOLDEN = Path(__file__).parent / "golden"
TRAILER = "-- \nsos list: <#L#>-unsubscribe@<#H#> (post <#n#>)\n"


KEY = bytes(range(32))  # a fixed list key, so the golden files' private field is stable


@pytest.fixture
def listcfg(root: Path):
    cfg = make_list(root, "sos@lists.local.test", ListOptions(
        prefix="[sos #]", trailer=TRAILER, unsubscribe_url="https://lists.local.test/unsubscribe"))
    (cfg.path / "key").write_bytes(KEY)
    return cfg


def test_dkim_signed_mime_post_matches_golden_and_keeps_bytes(listcfg):
    raw = (FIX / "post-dkim-mime.eml").read_bytes()
    out = prepare_post(raw, listcfg, 42)
    assert out == (GOLDEN / "post-dkim-mime.ref").read_bytes()
    header_in, _, body_in = split_message(raw)
    header_out, sep, body_out = split_message(out)
    assert sep == b"\r\n" and body_out == body_in  # no trailer on multipart / signed posts
    dkim = [f for f in parse_fields(header_in) if f.startswith(b"DKIM-Signature")]
    assert dkim and dkim[0] in parse_fields(header_out)  # the folded field byte-exact
    assert b"\n" not in out.replace(b"\r\n", b"")  # no bare LF introduced


def test_plain_lf_post_gets_trailer_and_no_second_prefix(listcfg):
    raw = (FIX / "post-plain-lf.eml").read_bytes()
    out = prepare_post(raw, listcfg, 42)
    assert out == (GOLDEN / "post-plain-lf.ref").read_bytes()
    assert b"Subject: Re: [sos 41] plans\n" in out and b"\r" not in out


def test_subject_forms(listcfg):
    def subject(raw: bytes) -> bytes:
        fields = parse_fields(split_message(prepare_post(raw, listcfg, 7))[0])
        return b"".join(f for f in fields if f.lower().startswith(b"subject:"))
    assert subject(b"From: a@b.test\n\nbody\n") == b"Subject: [sos 7]\n"
    assert subject(b"Subject:\n\nx\n") == b"Subject: [sos 7]\n"
    assert subject(b"Subject: hi\n there\n\nx\n") == b"Subject: [sos 7] hi\n there\n"
    folded = b"Subject:\n =?utf-8?B?w6l0w6k=?=\n\nx\n"
    assert subject(folded) == b"Subject: [sos 7] =?utf-8?B?w6l0w6k=?=\n"
    # prefix already there inside an encoded word: left alone
    encoded = b"Subject: =?utf-8?Q?Re=3A_=5Bsos_3=5D_=C3=A9t=C3=A9?=\n\nx\n"
    assert subject(encoded) == encoded.split(b"\n\n")[0] + b"\n"


def test_received_lines_and_removed_headers(root: Path, listcfg):
    raw = (b"Received: newest\nReceived: older\nReceived: oldest\nList-Id: <evil>\n"
           b"Mailing-List: contact other-help@else.test\nX-Keep: yes\n\nbody\n")
    out = prepare_post(raw, listcfg, 1)
    assert out.count(b"Received:") == 1 and b"Received: newest\n" in out
    assert b"<evil>" not in out and b"other-help" not in out and b"X-Keep: yes\n" in out
    kept = prepare_post(raw, edit_list(root, "sos", keep_received=True), 1)
    assert kept.count(b"Received:") == 3


def test_trailer_rules(root: Path, listcfg):
    plain = b"Content-Type: text/plain; charset=us-ascii\n\nhello\n"
    assert prepare_post(plain, listcfg, 5).endswith(b"hello\n-- \nsos list: "
                                                    b"sos-unsubscribe@lists.local.test (post 5)\n")
    for raw in [b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\naGVsbG8K\n",
                b"Content-Type: text/html\n\n<p>x</p>\n",
                b"DKIM-Signature: v=1; bh=x; b=y\n\nsigned body\n"]:
        assert prepare_post(raw, listcfg, 5).endswith(split_message(raw)[2])
    header_only = prepare_post(b"Subject: x\n", listcfg, 5)
    assert header_only.endswith(b"Subject: [sos 5] x\n\n-- \nsos list: "
                                b"sos-unsubscribe@lists.local.test (post 5)\n")
    utf8 = edit_list(root, "sos", trailer="Café\n")
    assert not prepare_post(b"Subject: x\n\nascii only\n", utf8, 1).endswith(b"Caf\xc3\xa9\n")
    eight = b"Content-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\nx\n"
    assert prepare_post(eight, utf8, 1).endswith(b"x\nCaf\xc3\xa9\n")


def test_check_post_refusals(root: Path, listcfg):
    ok = b"From: a@b.test\nSubject: x\n\nbody\n"
    assert check_post(ok, "a@b.test", listcfg) is None
    for sender in ("", "#@[]"):  # LS11
        assert check_post(ok, sender, listcfg).dsn == "5.7.2"
    looped = prepare_post(ok, listcfg, 1)  # LP4: our own distributed copy comes back
    assert check_post(looped, "a@b.test", listcfg).dsn == "5.4.6"
    only_ml = b"Mailing-List: contact SOS-help@lists.local.test; run by ezlist\n\nx\n"
    assert check_post(only_ml, "a@b.test", listcfg).dsn == "5.4.6"
    only_dt = b"Delivered-To: Mailing list SOS@lists.local.test\n\nx\n"
    assert check_post(only_dt, "a@b.test", listcfg).dsn == "5.4.6"
    other_list = b"Mailing-List: contact other-help@else.test\n\nx\n"
    assert check_post(other_list, "a@b.test", listcfg) is None
    small = edit_list(root, "sos", max_message_size=20, subscribers_only=True)
    assert check_post(ok, "a@b.test", small).dsn == "5.2.3"
    tiny = b"\nx\n"
    assert check_post(tiny, "a@b.test", small, lambda a: False).dsn == "5.7.2"
    assert check_post(tiny, "a@b.test", small, lambda a: True) is None


def test_one_click_fields_template_and_private_field(listcfg):
    fields = b"".join(list_fields(listcfg, b"\r\n", 12))
    url = (b"https://lists.local.test/unsubscribe?l=sos@lists.local.test&n=12&" + PLACEHOLDER)
    assert b"List-Unsubscribe: <" + url + b">, <mailto:sos-unsubscribe@lists.local.test>\r\n" in fields
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in fields
    assert b"X-Mta-Rcpt-Token: " + post_key(KEY, 12).hex().encode() + b" " + PLACEHOLDER in fields
    assert post_key(KEY, 12) != post_key(KEY, 13)  # a token names one post


def test_one_click_url_filled_by_the_mta_verifies_for_that_recipient_only(listcfg):
    out = prepare_post(b"Subject: x\n\nbody mentions @@RCPT_TOKEN@@\n", listcfg, 3)
    mine = personalize(out, ["Jo@ex.org"])
    assert b"X-Mta-Rcpt-Token" not in mine
    assert split_message(mine)[2].startswith(b"body mentions @@RCPT_TOKEN@@\n")  # body untouched
    line = [f for f in parse_fields(split_message(mine)[0]) if f.startswith(b"List-Unsubscribe:")][0]
    query = line.split(b"?", 1)[1].split(b">", 1)[0].decode()
    params = dict(p.split("=", 1) for p in query.split("&"))
    assert params["l"] == "sos@lists.local.test" and params["n"] == "3" and params["a"] == "Jo@ex.org"
    assert verify(KEY, 3, "Jo@ex.org", params["t"])
    assert not verify(KEY, 3, "ann@ex.org", params["t"]) and not verify(KEY, 4, "Jo@ex.org", params["t"])
    assert not verify(bytes(32), 3, "Jo@ex.org", params["t"])
    # several recipients in one transaction: no identity, the URL cannot verify
    assert b"n=3&>" in personalize(out, ["a@ex.org", "b@ex.org"])


def test_no_unsubscribe_url_means_mailto_only_and_no_private_field(root):
    cfg = make_list(root, "plain@lists.local.test")
    fields = b"".join(list_fields(cfg, b"\n", 1))
    assert b"List-Unsubscribe: <mailto:plain-unsubscribe@lists.local.test>\n" in fields
    assert b"List-Unsubscribe-Post" not in fields and b"X-Mta-Rcpt-Token" not in fields
    out = prepare_post(b"Subject: x\n\nb\n", cfg, 1)
    assert strip_private(out) is out  # nothing to strip: the very same object
