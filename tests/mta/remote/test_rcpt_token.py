"""The private X-Mta-Rcpt-Token field: parsing, stripping, per-recipient fill, SMTP buffers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re

from mta.interfaces import Delivered
from mta.net.smtp_client import open_smtp_connection
from mta.rcpt_token import extract, fill_for, personalize, strip_private, token_for
from mta.remote.body import TokenBody, prepare_body, prepare_message, split_token
from mta.smtp.client import SMTPClient
from mta.smtp.client_events import TransactionDone
from tests.sink import Sink

KEY = hashlib.sha256(b"k").digest()
PH = b"@@RCPT_TOKEN@@"
FIELD = b"X-Mta-Rcpt-Token: " + KEY.hex().encode() + b" " + PH + b"\n"
POST = (b"Received: from x\n" + FIELD +
        b"List-Unsubscribe: <https://l.test/u?l=a&n=3&" + PH + b">, <mailto:a-unsubscribe@l.test>\n"
        b"Subject: hi\n\n.body mentions " + PH + b" and stays as is\n")


def test_token_is_16_lowercase_base32_chars_of_hmac():
    t = token_for(KEY, "Jo@Example.ORG")
    assert re.fullmatch(r"[a-z2-7]{16}", t)
    assert t == token_for(KEY, "jo@example.org")
    mac = hmac.new(KEY, b"jo@example.org", hashlib.sha256).digest()[:10]
    assert t == base64.b32encode(mac).decode().lower()
    assert token_for(KEY, "other@example.org") != t


def test_fill_names_the_address_for_one_recipient_only():
    fill = fill_for(KEY, ["a+b&c@x.test"])
    assert fill == b"a=a%2Bb%26c@x.test&t=" + token_for(KEY, "a+b&c@x.test").encode()
    assert fill_for(KEY, ["a@x.test", "b@x.test"]) == b""
    assert fill_for(KEY, ["a" * 250 + "@x.test"]) == b""


def test_extract_removes_every_field_and_keeps_the_rest_byte_exact():
    raw = (b"A: 1\nx-mta-RCPT-token: " + KEY.hex().encode() + b" " + PH + b"\n"
           b"X-Mta-Rcpt-Token: junk\n\tcontinued\nB: 2\n\nX-Mta-Rcpt-Token: in body\n")
    token, clean = extract(raw)
    assert token is not None and token.key == KEY and token.placeholder == PH
    assert clean == b"A: 1\nB: 2\n\nX-Mta-Rcpt-Token: in body\n"
    plain = b"A: 1\n\nbody\n"
    assert extract(plain) == (None, plain) and extract(plain)[1] is plain
    assert strip_private(b"X-Mta-Rcpt-Token: zz\r\nA: 1\r\n\r\nb\r\n") == b"A: 1\r\n\r\nb\r\n"


def test_malformed_field_is_removed_and_nothing_substituted():
    raw = b"X-Mta-Rcpt-Token: nothex " + PH + b"\nL: <u?" + PH + b">\n\nb\n"
    assert personalize(raw, ["a@x.test"]) == b"L: <u?" + PH + b">\n\nb\n"
    assert split_token(raw) is None and prepare_message(raw) == prepare_body(extract(raw)[1])


def test_segments_joined_by_fill_equal_the_personalized_message():
    body = prepare_message(POST)
    assert isinstance(body, TokenBody) and len(body.segments) == 2
    for rcpts in (["jo@x.test"], ["a@x.test", "b@x.test"]):
        joined = b"".join(body.for_recipients(rcpts))
        assert joined == prepare_body(personalize(POST, rcpts))
        assert b"x-mta-rcpt-token" not in joined.lower().split(b"\r\n\r\n")[0]
    one = b"".join(body.for_recipients(["jo@x.test"]))
    assert b"&a=jo@x.test&t=" + token_for(KEY, "jo@x.test").encode() + b">" in one
    assert b"..body mentions " + PH + b" and stays" in one  # body untouched, dot-stuffed
    # the body is shared: the last segment is the same object for every transaction
    assert body.for_recipients(["a@x.test"])[-1] is body.for_recipients(["b@x.test"])[-1]


def test_message_without_field_takes_the_bytes_path():
    raw = b"Subject: x\n\nhello\n"
    assert prepare_message(raw) == prepare_body(raw)
    assert type(prepare_message(raw)) is bytes
    no_ph = FIELD + b"Subject: x\n\nhello\n"
    assert prepare_message(no_ph) == prepare_body(b"Subject: x\n\nhello\n")


def test_sans_io_client_sends_buffers_in_order_with_total_size():
    c = SMTPClient("me.test")
    c.receive_data(b"220 hi\r\n")
    c.take_output()
    c.receive_data(b"250-x\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250 8BITMIME\r\n")
    bufs = [b"A: 1\r\n", b"\xc3\xa9", b"\r\n\r\nbody\r\n.\r\n"]
    assert c.start_transaction("s@x.test", ["r@y.test"], bufs) == []
    head = b"".join(c.take_output())
    assert f"SIZE={sum(map(len, bufs))} BODY=8BITMIME".encode() in head
    c.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    out = c.take_output()
    assert out == bufs and all(a is b for a, b in zip(out, bufs))
    (done,) = c.receive_data(b"250 queued\r\n")
    assert isinstance(done, TransactionDone) and done.dot_sent
    c2 = SMTPClient("me.test")
    c2.receive_data(b"220 hi\r\n")
    c2.receive_data(b"250-x\r\n250 SIZE 10\r\n")
    (over,) = c2.start_transaction("s@x.test", ["r@y.test"], [b"123456", b"78901"])
    assert "exceeds its size limit of 10" in over.outcomes[0].reason


def test_loopback_fanout_each_recipient_gets_its_own_url_and_no_private_field():
    body = prepare_message(POST)
    rcpts = [f"user{i}@x.test" for i in range(5)]

    async def run(port):
        conn = await open_smtp_connection("127.0.0.1", port, helo="me.test",
                                          timeout_connect=5, timeout_reply=10)
        try:
            for r in rcpts:
                outs = await conn.send_transaction(f"l-return-{r}@l.test", [r],
                                                   body.for_recipients([r]))
                assert isinstance(outs[0], Delivered), outs
        finally:
            await conn.quit()

    with Sink("127.0.0.1") as sink:
        asyncio.run(asyncio.wait_for(run(sink.port), 30))
        sink.wait_for(len(rcpts), 10)
        assert len(sink.messages) == len(rcpts)
        for m in sink.messages:
            assert b"x-mta-rcpt-token" not in m.data.lower()
            (r,) = m.rcpts
            assert b"a=" + r.encode() + b"&t=" + token_for(KEY, r).encode() + b">" in m.data
