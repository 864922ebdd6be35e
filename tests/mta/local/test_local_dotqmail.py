"""dot-qmail file selection (qmesearch order, DEFAULT, case, dots, LD1, LD4) and parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from local_helpers import write_qmail
from mta.local import DotQmailError, find_dotqmail, has_delivery
from mta.local.dotqmail import Instruction, Kind, forward_sender, parse_dotqmail


def names(alias_dir: Path, *files: str) -> None:
    for name in files:
        write_qmail(alias_dir, name, "./Maildir/\n")


@pytest.mark.parametrize(
    "present, local, expected, default",
    [
        ((".qmail-joe-foo-bar", ".qmail-joe-foo-default"), "joe-foo-bar", ".qmail-joe-foo-bar", None),
        ((".qmail-joe-foo-default", ".qmail-joe-default"), "joe-foo-bar", ".qmail-joe-foo-default", "bar"),
        ((".qmail-joe-default", ".qmail-default"), "joe-foo-bar", ".qmail-joe-default", "foo-bar"),
        ((".qmail-default",), "joe-foo-bar", ".qmail-default", "joe-foo-bar"),
        ((".qmail-joe", ".qmail-default"), "joe", ".qmail-joe", None),
        ((".qmail-joe-default",), "joe", None, None),
        ((".qmail-joe-", ".qmail-joe-default"), "joe-", ".qmail-joe-", None),
        ((".qmail-joe-default", ".qmail-default"), "joe-", ".qmail-joe-default", ""),
        ((".qmail-joe-default",), "joe-default", ".qmail-joe-default", "default"),
    ],
)
def test_search_order_and_default(alias_dir, present, local, expected, default):
    names(alias_dir, *present)
    match = find_dotqmail(alias_dir, local)
    if expected is None:
        assert match is None
        return
    assert match is not None
    assert match.path == alias_dir / expected
    assert match.default == default


def test_default_keeps_original_case_while_file_names_are_lower_case(alias_dir):
    names(alias_dir, ".qmail-joe-default")
    match = find_dotqmail(alias_dir, "Joe-FOO")
    assert match.path.name == ".qmail-joe-default"
    assert match.default == "FOO"


def test_ld6_upper_case_address_finds_lower_case_file(alias_dir):
    names(alias_dir, ".qmail-joe-foo")
    assert find_dotqmail(alias_dir, "Joe-FOO").path.name == ".qmail-joe-foo"


def test_dots_become_colons(alias_dir):
    names(alias_dir, ".qmail-joe:smith")
    assert find_dotqmail(alias_dir, "Joe.Smith").path.name == ".qmail-joe:smith"
    assert find_dotqmail(alias_dir, "joe:smith").path.name == ".qmail-joe:smith"


def test_no_file_means_no_delivery(alias_dir):
    names(alias_dir, ".qmail-jane")
    assert find_dotqmail(alias_dir, "joe") is None
    assert has_delivery(alias_dir, "joe") is False
    assert has_delivery(alias_dir, "JANE") is True


@pytest.mark.parametrize("local", ["joe-../jane/foo", "joe-x/../../etc/passwd", "../../secret", "joe-x/y"])
def test_ld1_traversal_never_leaves_alias_dir(tmp_path, alias_dir, local):
    # Files an escaping lookup could reach: outside alias/, and inside a
    # subdirectory of alias/ named like a mapped candidate.
    (tmp_path / "jane").mkdir()
    write_qmail(tmp_path / "jane", "foo", "|touch /tmp/pwned\n")
    write_qmail(tmp_path, ".qmail-secret", "|touch /tmp/pwned\n")
    sub = alias_dir / ".qmail-joe-::"
    sub.mkdir()
    (sub / "jane").mkdir()
    write_qmail(sub / "jane", "foo", "|touch /tmp/pwned\n")
    assert find_dotqmail(alias_dir, local) is None
    names(alias_dir, ".qmail-default")
    match = find_dotqmail(alias_dir, local)
    assert match.path.parent == alias_dir
    assert match.path.name in (".qmail-joe-default", ".qmail-default")


def test_ld1_default_fallback_inside_alias_dir(alias_dir):
    names(alias_dir, ".qmail-joe-default")
    match = find_dotqmail(alias_dir, "joe-../jane/foo")
    assert match.path == alias_dir / ".qmail-joe-default"
    assert match.default == "../jane/foo"


def test_directory_named_like_a_candidate_is_not_a_match(alias_dir):
    (alias_dir / ".qmail-joe").mkdir()
    names(alias_dir, ".qmail-default")
    assert find_dotqmail(alias_dir, "joe").path.name == ".qmail-default"


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_ld4_writable_dotqmail_is_temporary(alias_dir, mode):
    write_qmail(alias_dir, ".qmail-joe", "./Maildir/\n", mode=mode)
    with pytest.raises(DotQmailError) as info:
        find_dotqmail(alias_dir, "joe")
    assert info.value.reason == "Uh-oh: .qmail file is writable. (#4.7.0)"
    # The SMTP server accepts: the message stays queued until the file is fixed.
    assert has_delivery(alias_dir, "joe") is True


def test_execute_bit_marks_forward_only(alias_dir):
    write_qmail(alias_dir, ".qmail-joe", "&a@b.test\n", mode=0o744)
    assert find_dotqmail(alias_dir, "joe").forward_only is True


def test_parse_all_line_kinds():
    data = b"# comment\n|prog arg  \n./Maildir/\n/var/mbox\n&a@b.test\nc@d.test\n\n+list\n+other\n"
    assert parse_dotqmail(data) == (
        Instruction(Kind.COMMENT, " comment"),
        Instruction(Kind.PROGRAM, "prog arg"),
        Instruction(Kind.MAILDIR, "./Maildir/"),
        Instruction(Kind.MBOX, "/var/mbox"),
        Instruction(Kind.FORWARD, "a@b.test"),
        Instruction(Kind.FORWARD, "c@d.test"),
        Instruction(Kind.FORWARD_ONLY, "list"),
        Instruction(Kind.COMMENT, "other"),
    )


def test_parse_last_line_without_newline():
    assert parse_dotqmail(b"|true") == (Instruction(Kind.PROGRAM, "true"),)


def test_parse_blank_first_line_is_temporary():
    with pytest.raises(DotQmailError, match=r"first line .* blank. \(#4\.2\.1\)"):
        parse_dotqmail(b"\n./Maildir/\n")


def test_forward_sender_owner_rules(alias_dir):
    assert forward_sender(alias_dir, "list", "h.test", "bob@x.test") == "bob@x.test"
    names(alias_dir, ".qmail-list-owner")
    assert forward_sender(alias_dir, "List", "h.test", "bob@x.test") == "List-owner@h.test"
    names(alias_dir, ".qmail-list-owner-default")
    assert forward_sender(alias_dir, "list", "h.test", "bob@x.test") == "list-owner-@h.test-@[]"
    assert forward_sender(alias_dir, "list", "h.test", "") == ""
    assert forward_sender(alias_dir, "list", "h.test", "#@[]") == "#@[]"
