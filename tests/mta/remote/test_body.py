"""Body preparation: CRLF normalization, dot-stuffing, termination (SM7)."""

from __future__ import annotations

import io
import re
import time

import pytest

from mta.remote.body import has_8bit, prepare_body, prepare_body_chunks

CASES = [
    (b"", b".\r\n"),
    (b"a", b"a\r\n.\r\n"),
    (b"a\n", b"a\r\n.\r\n"),
    (b"a\r\n", b"a\r\n.\r\n"),
    (b"a\r", b"a\r\n.\r\n"),
    (b"a\r.\nMAIL FROM:<x@y>\n", b"a\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n"),  # SM7
    (b".\n", b"..\r\n.\r\n"),
    (b".start\n..two\nmid.dot\n", b"..start\r\n...two\r\nmid.dot\r\n.\r\n"),
    (b"a\r\n.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
    (b"x\n\r\ny\r\r\nz", b"x\r\n\r\ny\r\n\r\nz\r\n.\r\n"),
    (b"\n\n", b"\r\n\r\n.\r\n"),
]


@pytest.mark.parametrize("raw,want", CASES)
def test_prepare_body(raw, want):
    assert prepare_body(raw) == want


def wire_is_clean(out: bytes) -> bool:
    """No lone CR or LF, no undoubled leading dot before the terminator."""
    body = out[:-3]
    assert out.endswith(b".\r\n")
    if re.search(rb"\r(?!\n)|(?<!\r)\n", out):
        return False
    return all(not line.startswith(b".") or line.startswith(b"..")
               for line in body.split(b"\r\n"))


@pytest.mark.parametrize("raw,want", CASES)
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 20])
def test_streaming_variant_matches(raw, want, chunk):
    assert b"".join(prepare_body_chunks(io.BytesIO(raw), chunk)) == want


def test_random_bodies_never_leak_line_ends():
    import random
    rnd = random.Random(7)
    alphabet = b"ab.\r\n"
    for _ in range(500):
        raw = bytes(rnd.choice(alphabet) for _ in range(rnd.randrange(0, 40)))
        out = prepare_body(raw)
        assert wire_is_clean(out), (raw, out)
        assert b"".join(prepare_body_chunks(io.BytesIO(raw), rnd.randrange(1, 9))) == out


def test_has_8bit():
    assert has_8bit(prepare_body("caf\u00e9".encode()))
    assert not has_8bit(prepare_body(b"plain"))


def test_multi_megabyte_body_is_fast():
    raw = b"".join(b".line %d with a lone\rcarriage return\n" % i for i in range(200_000))
    assert len(raw) > 7_000_000
    started = time.process_time()
    out = prepare_body(raw)
    spent = time.process_time() - started
    assert wire_is_clean(out)
    assert spent < 1.0, f"prepare_body took {spent:.3f} s CPU for {len(raw)} bytes"
