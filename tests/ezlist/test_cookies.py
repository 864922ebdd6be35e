from ezlist.cookies import WINDOW, check_cookie, make_cookie, new_key, split_cookie

KEY = b"k" * 32
LIST = "sos@lists.local.test"
NOW = 1_700_000_000


def test_roundtrip_and_shape():
    token = make_cookie(KEY, LIST, "sc", "alice@local.test", NOW)
    when, mac = split_cookie(token)
    assert when == NOW and len(mac) == 16 and mac.isalnum() and mac == mac.lower()
    assert check_cookie(KEY, LIST, "sc", "alice@local.test", token, NOW)
    assert check_cookie(KEY, LIST, "sc", "alice@LOCAL.TEST", token, NOW + 10)  # domain case
    assert check_cookie(KEY, LIST, "sc", "alice@local.test", token.upper(), NOW)  # MTA folding


def test_bound_to_every_field():
    token = make_cookie(KEY, LIST, "sc", "alice@local.test", NOW)
    assert not check_cookie(KEY, "other@lists.local.test", "sc", "alice@local.test", token, NOW)
    assert not check_cookie(KEY, LIST, "uc", "alice@local.test", token, NOW)
    assert not check_cookie(KEY, LIST, "sc", "bob@local.test", token, NOW)
    assert not check_cookie(KEY, LIST, "sc", "Alice@local.test", token, NOW)  # local part exact
    assert not check_cookie(new_key(), LIST, "sc", "alice@local.test", token, NOW)
    shifted = f"{NOW - 1}.{split_cookie(token)[1]}"  # same MAC, other time
    assert not check_cookie(KEY, LIST, "sc", "alice@local.test", shifted, NOW)


def test_window_expired_and_future():
    old = make_cookie(KEY, LIST, "sc", "a@b.test", NOW - 1_000_001)
    edge = make_cookie(KEY, LIST, "sc", "a@b.test", NOW - WINDOW)
    future = make_cookie(KEY, LIST, "sc", "a@b.test", NOW + 60)
    assert not check_cookie(KEY, LIST, "sc", "a@b.test", old, NOW)
    assert check_cookie(KEY, LIST, "sc", "a@b.test", edge, NOW)
    assert not check_cookie(KEY, LIST, "sc", "a@b.test", future, NOW)


def test_malformed_tokens_are_refused():
    for token in ["", "abc", "123", "123.", ".abcdefghabcdefgh", "12.abcdefgh1bcdefgh",
                  "-5.abcdefghabcdefgh", "1234567890123.abcdefghabcdefgh", "١٢٣.abcdefghabcdefgh"]:
        assert split_cookie(token) is None
        assert not check_cookie(KEY, LIST, "sc", "a@b.test", token, NOW)
