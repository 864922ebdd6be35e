"""Results that cannot be committed wait in memory and are committed later.

Another process holds the queue database's write lock past the scheduler's busy
timeout (``MTA_QUEUE_BUSY_TIMEOUT=1``) just as a local delivery ends. The commit of
its result fails; the scheduler must log an alert, keep the result and commit it once
the lock is free: the message is delivered once, logged as delivered once, and
leaves the queue. (Before, the exception ended the result loop for good: nothing
more was ever committed, and the queue never emptied.)
"""

from __future__ import annotations

import os
import sqlite3

from tests.harness import open_fifo_writer


def test_result_committed_after_the_database_lock_is_released(inst, tmp_path):
    fifo, box = tmp_path / "go", inst.root / "alias" / "box"
    os.mkfifo(fifo)
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True)
    (inst.root / "alias" / ".qmail-box").write_text(f"|read x < {fifo}\n./box/\n")
    assert inst.inject("a@mx.test", ["box@mx.test"]) == 0
    inst.start(env={"MTA_QUEUE_BUSY_TIMEOUT": "1"})
    fd = open_fifo_writer(fifo)  # the delivery is running
    lock = sqlite3.connect(inst.root / "queue" / "queue.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # the write lock, held past the busy timeout
    try:
        os.write(fd, b"go\n")
        os.close(fd)
        inst.wait_until(lambda: any("alert: unable to record delivery results" in line
                                    for line in inst.log_lines()), 30, "the alert")
        assert inst.proc.poll() is None, "the scheduler died"
        assert len(os.listdir(box / "new")) == 1
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    inst.wait_empty(30)
    said = [line.split(" ", 1)[1] for line in inst.log_lines()]
    assert sum(s.startswith("delivery 1: success") for s in said) == 1, said
    assert not any(s.startswith("starting delivery 2") for s in said), said  # not re-sent
    assert len(os.listdir(box / "new")) == 1
