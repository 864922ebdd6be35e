"""QF2 end to end: the qmail-queue shim killed at the commit checkpoint
(``after_commit_link``, the security matrix's name) never said yes, yet the
message is queued; ``mta send`` delivers it, and the client's resend is delivered
too, a duplicate that the send log shows (two deliveries to the same recipient,
from two messages)."""

from __future__ import annotations

import re
import signal

import pytest

from tests.harness import Instance
from tests.sink import Sink

BODY = b"Message-ID: <qf2-e2e@mx.test>\nSubject: qf2\n\nsent once, seen twice\n"


@pytest.fixture
def inst(tmp_path):
    i = Instance(tmp_path)
    yield i
    i.cleanup()


def test_kill_after_commit_is_delivered_and_resend_is_a_logged_duplicate(inst):
    with Sink("127.0.3.1") as sink:
        inst.control("smtproutes", f"x.test:127.0.3.1:{sink.port}\n")
        rc = inst.inject("owner@mx.test", ["rcpt@x.test"], BODY,
                         env={"MTA_CRASH_AT": "after_commit_link"})
        assert rc == -signal.SIGKILL, f"the shim exited {rc}, not by SIGKILL at the checkpoint"
        [first] = inst.queue()  # committed although the client saw a failure
        inst.start()
        sink.wait_for(1, 30)
        inst.wait_empty(30)
        assert inst.inject("owner@mx.test", ["rcpt@x.test"], BODY) == 0  # the client resends
        sink.wait_for(2, 30)
        inst.wait_empty(30)
        inst.stop()
    assert [m.rcpts for m in sink.messages] == [["rcpt@x.test"], ["rcpt@x.test"]]
    assert all(m.data.endswith(b"sent once, seen twice\r\n") and b"<qf2-e2e@mx.test>" in m.data
               for m in sink.messages)
    starts = [re.fullmatch(r"@\d+\.\d{6} starting delivery (\d+): msg (\d+) to remote "
                           r"rcpt@x\.test", line) for line in inst.log_lines()]
    starts = [m.groups() for m in starts if m]
    assert len(starts) == 2 and starts[0][1] == str(first["id"]) and starts[0][1] != starts[1][1]
    for d, _ in starts:
        assert any(re.fullmatch(rf"@\d+\.\d{{6}} delivery {d}: success: \S+/", line)
                   for line in inst.log_lines()), f"delivery {d} not logged as a success"
