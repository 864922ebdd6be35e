"""control/smtpaccess: parsing, first-match lookup, defaults, errors naming the line."""

from __future__ import annotations

import pytest

from mta.access import DEFAULT_RULES, AccessError, Action, load_access, parse_access

RULES = """\
# who may talk to us
127.0.0.1:relay
10.1.0.0/16:allow   \n\
10.0.0.0/8:deny

2001:db8::/32:relay
[2001:db9::1]:deny
::1:RELAY
:allow
192.0.2.1:deny
"""


@pytest.mark.parametrize("ip, action", [
    ("127.0.0.1", Action.RELAY),
    ("10.1.2.3", Action.ALLOW),      # first match wins over the wider deny below it
    ("10.2.0.1", Action.DENY),
    ("2001:db8::5", Action.RELAY),
    ("2001:db9::1", Action.DENY),
    ("::1", Action.RELAY),
    ("::ffff:127.0.0.1", Action.RELAY),  # IPv4-mapped client address
    ("192.0.2.1", Action.ALLOW),     # the catch-all comes first
    ("not-an-ip", Action.ALLOW),     # only the empty prefix can match it
])
def test_lookup_first_match_wins(ip, action):
    assert parse_access(RULES).lookup(ip) is action


def test_no_matching_rule_means_allow_never_relay():
    rules = parse_access("192.0.2.0/24:deny\n")
    assert rules.lookup("198.51.100.1") is Action.ALLOW
    assert rules.lookup("192.0.2.77") is Action.DENY
    assert parse_access("127.0.0.1:relay\n").lookup("garbage") is Action.ALLOW


def test_defaults_without_the_file(tmp_path):
    (tmp_path / "control").mkdir()
    assert load_access(tmp_path) is DEFAULT_RULES
    assert DEFAULT_RULES.lookup("127.0.0.1") is Action.RELAY
    assert DEFAULT_RULES.lookup("::1") is Action.RELAY
    assert DEFAULT_RULES.lookup("127.0.0.2") is Action.ALLOW
    assert DEFAULT_RULES.lookup("203.0.113.9") is Action.ALLOW


def test_load_from_control_dir(tmp_path):
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "smtpaccess").write_text("127.0.0.3:deny\n:allow\n")
    rules = load_access(tmp_path)
    assert rules.lookup("127.0.0.3") is Action.DENY
    assert rules.lookup("127.0.0.1") is Action.ALLOW  # the file replaces the defaults


@pytest.mark.parametrize("text, line, words", [
    ("127.0.0.1:relay\n10.0.0.1\n", 2, "PREFIX:ACTION"),
    ("# c\n\n10.0.0.1:permit\n", 3, "unknown action 'permit'"),
    ("10.0.0.300:allow\n", 1, "bad address"),
    ("10.0.0.0/33:allow\n", 1, "bad address"),
    ("example.com:deny\n", 1, "bad address"),
])
def test_malformed_lines_name_file_and_line(text, line, words):
    with pytest.raises(AccessError) as e:
        parse_access(text)
    assert e.value.line == line
    assert str(e.value).startswith(f"control/smtpaccess line {line}: ")
    assert words in str(e.value)


def test_unreadable_file_is_an_error(tmp_path):
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "smtpaccess").write_bytes(b"\xff\xfe:allow\n")
    with pytest.raises(AccessError, match="control/smtpaccess: unable to read"):
        load_access(tmp_path)
