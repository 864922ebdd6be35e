"""Junk commands (NOOP, RSET, VRFY, HELP) beyond max_junk count as errors: no session lives forever."""

from mta.smtp import replies as R
from mta.smtp.server import State
from tests.mta.smtp.test_server import ME, Session, policy


def test_noops_past_the_junk_limit_end_the_session():
    s = Session(policy(max_junk=100, max_errors=20))
    for _ in range(100):
        assert s.send(b"NOOP\r\n") == "250 ok\r\n"
    assert not s.closed
    for i in range(19):  # each one now counts as an error, still answered
        assert s.send(b"NOOP\r\n") == "250 ok\r\n", i
    assert s.send(b"NOOP\r\n") == "250 ok\r\n" + R.R421_TOO_MANY_ERRORS.format(me=ME) + "\r\n"
    assert s.closed and s.core.state is State.CLOSED


def test_mixed_junk_commands_share_one_count_and_real_mail_still_works_below_it():
    s = Session(policy(max_junk=6, max_errors=3))
    for cmd in (b"NOOP\r\n", b"RSET\r\n", b"VRFY x\r\n", b"HELP\r\n", b"NOOP\r\n", b"RSET\r\n"):
        s.send(cmd)
    assert not s.closed
    s.send(b"MAIL FROM:<a@t.example>\r\nRCPT TO:<alice@local.test>\r\nDATA\r\n")
    s.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
    assert len(s.messages) == 1  # a transaction is not junk
    s.send(b"NOOP\r\n")
    s.send(b"NOOP\r\n")
    assert not s.closed
    s.send(b"NOOP\r\n")  # third error
    assert s.closed
