"""A bounce that cannot be queued: logged, the message kept, tried again later.

qmail-send logs "trouble injecting bounce message, will try later" and keeps the
message. Here ``queue/tmp`` is replaced by a plain file while a local delivery is
about to fail permanently, so the scheduler's bounce injection fails for real;
the scheduler must go on (not lose its result loop), keep the message and its
failure, and send the bounce once the folder is back (SIGALRM retries at once).
"""

from __future__ import annotations

import os
import signal

from tests.harness import open_fifo_writer
from tests.sink import Sink


def test_bounce_that_cannot_be_queued_is_sent_later(inst, tmp_path):
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    (inst.root / "alias" / ".qmail-fails").write_text(f"|read line < {fifo}; exit 100\n")
    with Sink("127.0.3.9") as home:
        inst.route([("home.test", "127.0.3.9", home.port)])
        assert inst.inject("someone@home.test", ["fails@mx.test"]) == 0
        inst.start()
        writer = open_fifo_writer(fifo)  # the delivery program is waiting on it
        tmp, away = inst.root / "queue" / "tmp", inst.root / "queue" / "tmp.away"
        tmp.rename(away)
        tmp.write_text("not a folder: every injection fails")
        os.write(writer, b"go\n")
        os.close(writer)
        inst.wait_until(lambda: any("trouble injecting bounce message for msg" in line
                                    for line in inst.log_lines()), 30, "the bounce warning")
        assert inst.proc.poll() is None, "the scheduler died"
        [msg] = inst.queue()  # kept, its failure recorded and not yet reported
        assert msg["sender"] == "someone@home.test" and msg["recipients"]["failed"] == 1, msg
        assert home.messages == []
        # the folder comes back; SIGALRM (mta flush) makes the scheduler try at once
        tmp.unlink()
        away.rename(tmp)
        inst.proc.send_signal(signal.SIGALRM)
        home.wait_for(1, 30)
        inst.wait_empty(30)
    [bounce] = home.messages
    assert bounce.sender == "" and bounce.rcpts == ["someone@home.test"]
    assert b"fails@mx.test" in bounce.data
    said = [line.split(" ", 1)[1] for line in inst.log_lines()]
    assert said.count("end msg 1") == 1 and sum(s.startswith("bounce msg 1 ") for s in said) == 1
    assert said.count("end msg 2") == 1  # the bounce itself, delivered to home.test
