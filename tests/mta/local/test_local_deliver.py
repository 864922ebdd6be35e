"""deliver_local end to end: real sh programs, real Maildir and mbox files, forwards, loops."""

from __future__ import annotations

import mailbox
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from local_helpers import DOMAIN, MESSAGE, make_maildir, write_qmail
from mta.interfaces import Delivered, PermFail, TempFail
from mta.local import deliver_local


def outcome_of(make_job, local, **kw):
    return deliver_local(make_job(local, **kw)).outcome


# -- programs: exit codes (LD5), stdin, environment ------------------------------


@pytest.mark.parametrize(
    "code, kind, after_runs",
    [
        (0, Delivered, True),
        (99, Delivered, False),
        (100, PermFail, False),
        (64, PermFail, False),
        (111, TempFail, False),
        (1, TempFail, False),
    ],
)
def test_ld5_exit_codes(alias_dir, make_job, code, kind, after_runs):
    write_qmail(alias_dir, ".qmail-joe", f"|exit {code}\n|touch after\n")
    outcome = outcome_of(make_job, "joe")
    assert type(outcome) is kind
    assert (alias_dir / "after").exists() is after_runs


@pytest.mark.parametrize("code", [65, 70, 76, 77, 78, 112])
def test_other_permanent_exit_codes(alias_dir, make_job, code):
    write_qmail(alias_dir, ".qmail-joe", f"|exit {code}\n")
    assert isinstance(outcome_of(make_job, "joe"), PermFail)


def test_program_output_is_the_failure_text_with_its_dsn(alias_dir, make_job):
    write_qmail(alias_dir, ".qmail-joe", "|echo 'Mailbox full. (#4.2.2)' >&2; exit 111\n")
    assert outcome_of(make_job, "joe") == TempFail("Mailbox full. (#4.2.2)", "4.2.2")
    write_qmail(alias_dir, ".qmail-jim", "|echo 'no such user'; exit 100\n")
    assert outcome_of(make_job, "jim") == PermFail("no such user", "5.0.0")


def test_program_output_is_bounded(alias_dir, make_job):
    write_qmail(alias_dir, ".qmail-joe", "|head -c 1000000 /dev/zero | tr '\\0' x; exit 111\n")
    outcome = outcome_of(make_job, "joe")
    assert isinstance(outcome, TempFail)
    assert 0 < len(outcome.reason) <= 4096


def test_program_killed_by_signal_is_temporary(alias_dir, make_job):
    write_qmail(alias_dir, ".qmail-joe", "|kill -9 $$\n")
    outcome = outcome_of(make_job, "joe")
    assert outcome == TempFail("Aack, child crashed. (#4.3.0)", "4.3.0")


def test_program_gets_the_message_without_return_path_or_delivered_to(alias_dir, make_job):
    write_qmail(alias_dir, ".qmail-joe", "|cat > got\n")
    assert outcome_of(make_job, "joe") == Delivered("did 0+0+1")
    assert (alias_dir / "got").read_bytes() == MESSAGE
    assert (alias_dir / "got").stat().st_mode & 0o077 == 0  # umask 077


def read_env(path):
    items = path.read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in items if item)


def test_environment_seen_by_a_program(alias_dir, make_job, monkeypatch):
    monkeypatch.setenv("SOME_WORKER_SECRET", "x")
    write_qmail(alias_dir, ".qmail-joe-list-default", "|env -0 > env.out\n")
    job = make_job("joe-list-return-5-x=y.z", sender="a b@remote.test", extra_env=(("MTA_ROOT", "/r"),))
    assert isinstance(deliver_local(job).outcome, Delivered)
    env = read_env(alias_dir / "env.out")
    assert "SOME_WORKER_SECRET" not in env
    assert env["MTA_ROOT"] == "/r" and env["PATH"]
    expected = {
        "SENDER": "a b@remote.test",
        "NEWSENDER": "a b@remote.test",
        "RECIPIENT": f"joe-list-return-5-x=y.z@{DOMAIN}",
        "USER": "alias",
        "HOME": str(alias_dir),
        "HOST": "local.test",
        "HOST2": "local",
        "HOST3": "local",
        "HOST4": "local",
        "LOCAL": "joe-list-return-5-x=y.z",
        "EXT": "joe-list-return-5-x=y.z",
        "EXT2": "list-return-5-x=y.z",
        "EXT3": "return-5-x=y.z",
        "EXT4": "5-x=y.z",
        "DEFAULT": "return-5-x=y.z",
        "DTLINE": f"Delivered-To: joe-list-return-5-x=y.z@{DOMAIN}\n",
        "RPLINE": 'Return-Path: <"a b"@remote.test>\n',
    }
    assert {k: env.get(k) for k in expected} == expected
    assert env["UFLINE"].startswith("From a-b@remote.test ") and env["UFLINE"].endswith("\n")


def test_environment_has_no_default_for_an_exact_match(alias_dir, make_job):
    write_qmail(alias_dir, ".qmail-joe", "|env -0 > env.out\n")
    assert isinstance(outcome_of(make_job, "joe", sender=""), Delivered)
    env = read_env(alias_dir / "env.out")
    assert "DEFAULT" not in env
    assert env["RPLINE"] == "Return-Path: <>\n"
    assert env["UFLINE"].startswith("From MAILER-DAEMON ")
    assert env["EXT2"] == ""


# -- Maildir and mbox --------------------------------------------------------------


def test_maildir_delivery_readable_with_mailbox(alias_dir, make_job):
    make_maildir(alias_dir / "Maildir")
    write_qmail(alias_dir, ".qmail-joe", "./Maildir/\n")
    assert outcome_of(make_job, "Joe") == Delivered("did 1+0+0")
    box = mailbox.Maildir(alias_dir / "Maildir", factory=None)
    (msg,) = list(box)
    raw = msg.as_bytes()
    assert raw.startswith(b"Return-Path: <bob@remote.test>\nDelivered-To: Joe@local.test\n")
    assert msg["Subject"] == "hello"
    assert msg.get_payload() == "line one\nFrom the start\n>From quoted\n"
    assert os.listdir(alias_dir / "Maildir" / "tmp") == []


def test_empty_dotqmail_delivers_to_default_maildir(alias_dir, make_job):
    make_maildir(alias_dir / "Maildir")
    write_qmail(alias_dir, ".qmail-joe", "")
    assert outcome_of(make_job, "joe") == Delivered("did 1+0+0")
    assert len(os.listdir(alias_dir / "Maildir" / "new")) == 1


def test_missing_maildir_is_temporary(alias_dir, make_job):
    write_qmail(alias_dir, ".qmail-joe", "./Maildir/\n")
    assert outcome_of(make_job, "joe") == TempFail("Unable to chdir to maildir. (#4.2.1)", "4.2.1")


def test_mbox_delivery_quotes_from_lines(alias_dir, make_job):
    write_qmail(alias_dir, ".qmail-joe", "./mbox\n")
    assert outcome_of(make_job, "joe") == Delivered("did 1+0+0")
    assert isinstance(outcome_of(make_job, "joe", sender=""), Delivered)
    box = mailbox.mbox(alias_dir / "mbox")
    first, second = list(box)
    assert first.get_from().startswith("bob@remote.test ")
    assert second.get_from().startswith("MAILER-DAEMON ")
    assert first["Return-Path"] == "<bob@remote.test>"
    assert first["Delivered-To"] == f"joe@{DOMAIN}"
    assert first.get_payload() == "line one\n>From the start\n>>From quoted\n"
    raw = (alias_dir / "mbox").read_bytes()
    assert raw.count(b"\nFrom ") == 1 and raw.startswith(b"From bob@remote.test ")
    assert raw.endswith(b">>From quoted\n\n")


def test_mbox_adds_missing_final_newline(alias_dir, make_job, tmp_path):
    message = tmp_path / "nonl"
    message.write_bytes(b"Subject: x\n\nno newline")
    write_qmail(alias_dir, ".qmail-joe", "./mbox\n")
    assert isinstance(outcome_of(make_job, "joe", message_path=message), Delivered)
    assert (alias_dir / "mbox").read_bytes().endswith(b"\n\nno newline\n\n")


def test_mbox_that_cannot_be_opened_is_temporary(alias_dir, make_job):
    (alias_dir / "mbox").mkdir()
    write_qmail(alias_dir, ".qmail-joe", "./mbox\n")
    outcome = outcome_of(make_job, "joe")
    assert isinstance(outcome, TempFail) and outcome.reason.startswith("Unable to open ")


# -- forwards -----------------------------------------------------------------------


def test_forwards_injected_once_after_other_lines(alias_dir, make_job, injector):
    write_qmail(alias_dir, ".qmail-joe", "&a@x.test\n|true\nb@y.test\n")
    assert outcome_of(make_job, "joe") == Delivered("did 0+2+1")
    assert injector.calls == [
        ("bob@remote.test", ("a@x.test", "b@y.test"), f"Delivered-To: joe@{DOMAIN}\n".encode() + MESSAGE)
    ]


def test_failing_line_cancels_forwards(alias_dir, make_job, injector):
    write_qmail(alias_dir, ".qmail-joe", "&a@x.test\n|exit 111\n&b@y.test\n")
    assert isinstance(outcome_of(make_job, "joe"), TempFail)
    assert injector.calls == []


def test_exit_99_keeps_earlier_forwards_only(alias_dir, make_job, injector):
    write_qmail(alias_dir, ".qmail-joe", "&a@x.test\n|exit 99\n&b@y.test\n")
    assert isinstance(outcome_of(make_job, "joe"), Delivered)
    assert [call[1] for call in injector.calls] == [("a@x.test",)]


def test_forward_uses_owner_sender_but_keeps_bounces(alias_dir, make_job, injector):
    write_qmail(alias_dir, ".qmail-joe", "&a@x.test\n")
    write_qmail(alias_dir, ".qmail-joe-owner", "&owner@x.test\n")
    assert isinstance(outcome_of(make_job, "joe"), Delivered)
    assert isinstance(outcome_of(make_job, "joe", sender=""), Delivered)
    assert isinstance(outcome_of(make_job, "joe", sender="#@[]"), Delivered)
    assert [call[0] for call in injector.calls] == [f"joe-owner@{DOMAIN}", "", "#@[]"]


class Refused(Exception):
    def __init__(self, text, permanent):
        super().__init__(text)
        self.permanent = permanent


@pytest.mark.parametrize("permanent, kind", [(True, PermFail), (False, TempFail)])
def test_inject_failure(alias_dir, make_job, injector, permanent, kind):
    injector.fail = Refused("queue says no", permanent)
    write_qmail(alias_dir, ".qmail-joe", "&a@x.test\n")
    outcome = outcome_of(make_job, "joe")
    assert type(outcome) is kind
    assert outcome.reason == "Unable to forward message: queue says no."


def test_execute_bit_allows_only_forwards(alias_dir, make_job, injector):
    write_qmail(alias_dir, ".qmail-joe", "&a@x.test\n|touch ran\n", mode=0o744)
    outcome = outcome_of(make_job, "joe")
    assert outcome == TempFail("Uh-oh: .qmail has prog delivery but has x bit set. (#4.7.0)", "4.7.0")
    assert not (alias_dir / "ran").exists() and injector.calls == []


# -- refusals: unknown, writable, loops ---------------------------------------------


def test_no_mailbox_is_permanent(alias_dir, make_job):
    write_qmail(alias_dir, ".qmail-jane", "|true\n")
    outcome = outcome_of(make_job, "joe-foo")
    assert outcome == PermFail("Sorry, no mailbox here by that name. (#5.1.1)", "5.1.1")


def test_ld1_traversal_delivery_uses_default_inside_alias_dir(tmp_path, alias_dir, make_job):
    (tmp_path / "jane").mkdir()
    write_qmail(tmp_path / "jane", "foo", "|touch escaped\n")
    write_qmail(alias_dir, ".qmail-joe-default", "|printf %s \"$DEFAULT\" > default.out\n")
    assert isinstance(outcome_of(make_job, "joe-../jane/foo"), Delivered)
    assert (alias_dir / "default.out").read_text() == "../jane/foo"
    assert not (alias_dir / "escaped").exists() and not (tmp_path / "jane" / "escaped").exists()


def test_ld4_writable_dotqmail_defers(alias_dir, make_job):
    write_qmail(alias_dir, ".qmail-joe", "|touch ran\n", mode=0o666)
    assert outcome_of(make_job, "joe") == TempFail("Uh-oh: .qmail file is writable. (#4.7.0)", "4.7.0")
    assert not (alias_dir / "ran").exists()


def test_writable_alias_dir_defers(alias_dir, make_job):
    write_qmail(alias_dir, ".qmail-joe", "|touch ran\n")
    os.chmod(alias_dir, 0o777)
    outcome = outcome_of(make_job, "joe")
    assert outcome == TempFail("Uh-oh: home directory is writable. (#4.7.0)", "4.7.0")
    assert not (alias_dir / "ran").exists()


def test_lp1_own_delivered_to_line_is_a_loop(alias_dir, make_job, tmp_path):
    message = tmp_path / "looping"
    message.write_bytes(b"Received: x\nDelivered-To: joe@local.test\nSubject: y\n\nbody\n")
    write_qmail(alias_dir, ".qmail-joe", "|touch ran\n")
    outcome = outcome_of(make_job, "joe", message_path=message)
    assert outcome == PermFail(
        "This message is looping: it already has my Delivered-To line. (#5.4.6)", "5.4.6"
    )
    assert not (alias_dir / "ran").exists()
    # Someone else's Delivered-To line, or ours in the body, is no loop.
    write_qmail(alias_dir, ".qmail-jim", "|true\n")
    assert isinstance(outcome_of(make_job, "jim", message_path=message), Delivered)
    message.write_bytes(b"Subject: y\n\nDelivered-To: joe@local.test\n")
    assert isinstance(outcome_of(make_job, "joe", message_path=message), Delivered)


@pytest.mark.parametrize("hops, kind", [(100, Delivered), (101, PermFail)])
def test_too_many_hops(alias_dir, make_job, tmp_path, hops, kind):
    message = tmp_path / "hops"
    header = b"Received: from a\n\tby b\n" * (hops - 1) + b"delivered-to: other@x.test\n"
    message.write_bytes(header + b"\nbody\n")
    write_qmail(alias_dir, ".qmail-joe", "|true\n")
    outcome = outcome_of(make_job, "joe", message_path=message)
    assert type(outcome) is kind
    if kind is PermFail:
        assert outcome.dsn == "5.4.6"


def test_missing_message_is_temporary(alias_dir, make_job, tmp_path):
    write_qmail(alias_dir, ".qmail-joe", "|true\n")
    outcome = outcome_of(make_job, "joe", message_path=tmp_path / "gone")
    assert isinstance(outcome, TempFail) and outcome.dsn == "4.3.0"


# -- concurrency: the scheduler runs deliveries in threads -------------------------


def test_concurrent_deliveries_to_one_mbox_and_maildir(alias_dir, make_job):
    make_maildir(alias_dir / "Maildir")
    write_qmail(alias_dir, ".qmail-joe", "./mbox\n./Maildir/\n")
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: outcome_of(make_job, "joe"), range(16)))
    assert outcomes == [Delivered("did 2+0+0")] * 16
    box = mailbox.mbox(alias_dir / "mbox")
    assert [m["Subject"] for m in box] == ["hello"] * 16
    assert all(m.get_payload() == "line one\n>From the start\n>>From quoted\n" for m in box)
    assert len(os.listdir(alias_dir / "Maildir" / "new")) == 16
