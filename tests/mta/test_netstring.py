"""Netstring encoder and bounded incremental decoder."""

import time

import pytest

from mta.netstring import NetstringDecoder, NetstringError, encode_netstring, parse_length


def test_encode():
    assert encode_netstring(b"hello world!") == b"12:hello world!,"
    assert encode_netstring(b"") == b"0:,"


def test_decode_whole_and_byte_by_byte():
    stream = encode_netstring(b"abc") + encode_netstring(b"") + encode_netstring(b"x,y:z")
    assert NetstringDecoder(100).feed(stream) == [b"abc", b"", b"x,y:z"]
    decoder, got = NetstringDecoder(100), []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
    assert got == [b"abc", b"", b"x,y:z"]
    decoder.close()  # nothing pending: a clean end


def test_length_exactly_at_limit_is_accepted():
    assert NetstringDecoder(5).feed(b"5:12345,") == [b"12345"]


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"12a:", "non-digit"),
        (b"a", "non-digit"),
        (b"-1:x,", "non-digit"),
        (b" 1:x,", "non-digit"),
        (b":", "empty"),
        (b"01:x,", "leading zero"),
        (b"00:,", "leading zero"),
        (b"99999999999:", "beyond the limit"),
        (b"1001:", "beyond the limit"),
        (b"3:abc;", "missing comma"),
        (b"0:x", "missing comma"),
    ],
)
def test_malformed_is_refused_with_a_reason(data, reason):
    decoder = NetstringDecoder(1000)
    with pytest.raises(NetstringError) as info:
        decoder.feed(data)
    assert reason in info.value.reason
    with pytest.raises(NetstringError):  # a dead decoder stays dead
        decoder.feed(b"1:x,")


def test_overlong_length_refused_before_the_colon_arrives():
    # 5 digits can only mean >= 10000 > limit: refuse without waiting for more.
    with pytest.raises(NetstringError, match="beyond the limit"):
        NetstringDecoder(1000).feed(b"12345")


def test_oversized_body_never_buffered():
    decoder = NetstringDecoder(100)
    with pytest.raises(NetstringError, match="beyond the limit"):
        decoder.feed(b"101:" + b"x" * 50)


@pytest.mark.parametrize("data", [b"3", b"3:", b"3:ab", b"3:abc"])
def test_truncated_stream_at_eof(data):
    decoder = NetstringDecoder(100)
    assert decoder.feed(data) == []
    assert decoder.pending
    with pytest.raises(NetstringError, match="truncated"):
        decoder.close()


def test_parse_length_incremental():
    assert parse_length(b"12", 0, 1000) is None
    assert parse_length(b"xx12:", 2, 1000) == (12, 5)
    assert parse_length(b"0:", 0, 0) == (0, 2)


def test_many_small_netstrings_in_one_feed_is_linear():
    count = 200_000
    stream = b"".join(encode_netstring(b"r%d@example.org" % i) for i in range(count))
    started = time.perf_counter()
    got = NetstringDecoder(1000).feed(stream)
    elapsed = time.perf_counter() - started
    assert len(got) == count and got[-1] == b"r%d@example.org" % (count - 1)
    assert elapsed < 5.0, f"decoding {count} netstrings took {elapsed:.2f}s"
