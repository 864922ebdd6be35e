"""parse_mailbox's one-regex path for plain local@domain gives what the general parser gives."""

import itertools
import random

import pytest

from mta.smtp._address import (
    _SIMPLE, AddressError, _parse_general, parse_mailbox, split_argument,
)

LOCALS = ["u", "a.b", "x+tag", "o'brien", "ab%cd", "bang!path", "#hash", "a" * 64, "a" * 65,
          "-dash", "a..b", "{curly}", "x|y", "Mixed.Case"]
DOMAINS = ["local.test", "Local.TEST", "x.y.", "a-b.c", "-bad.test", "bad-.test", "a..b",
           "under_score.test", "[127.0.0.1]", "", "b" * 250 + ".test", "1.2.3.4"]


def _outcome(fn, path):
    try:
        return fn(path)
    except AddressError as exc:
        return ("error", exc.reply)


@pytest.mark.parametrize("local,domain", list(itertools.product(LOCALS, DOMAINS)))
def test_fast_path_equals_general_parser(local, domain):
    path = f"{local}@{domain}" if domain else local
    assert _outcome(parse_mailbox, path) == _outcome(_parse_general, path)


def test_random_paths_agree():
    rng = random.Random(5)
    alphabet = "abcdefgh" * 4 + "..-_@@%!+\"\\ <>[]:,\x7f\x01Z9"
    taken = 0
    for _ in range(20000):
        path = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        taken += _SIMPLE.match(path) is not None
        assert _outcome(parse_mailbox, path) == _outcome(_parse_general, path), path
    assert taken > 200  # the fast path was exercised, not only the general one


def test_fast_path_keeps_relay_tricks_and_case():
    assert parse_mailbox("user%other@Local.Test").relay_trick
    assert parse_mailbox("a!b@local.test").relay_trick
    assert parse_mailbox("User@Local.Test").local == "User"
    assert parse_mailbox("User@Local.Test").domain == "local.test"


def test_bracket_without_quotes_and_unclosed_bracket():
    assert split_argument("FROM:<a@b.test> SIZE=10", "FROM") == ("a@b.test", ["SIZE=10"])
    assert split_argument('TO:<"x>y"@b.test>', "TO") == ('"x>y"@b.test', [])
    with pytest.raises(AddressError):
        split_argument("TO:<a@b.test", "TO")
