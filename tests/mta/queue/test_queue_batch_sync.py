"""Group commit's two ways of reaching the disk (mta.queue.batch ``sync=``): one syncfs
a batch, or one fsync a body plus one of mess/. Both must give the same queue."""

from __future__ import annotations

import os
from contextlib import closing
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mta.queue import (
    BatchItem, MessDirError, QueueError, enqueue_batch, message_path, open_queue,
)
from mta.queue.batch import SYNCFS_AVAILABLE
from queue_shim import assert_queue_empty, files, messages, recipients, shim_env

MODES = [pytest.param("syncfs", marks=pytest.mark.skipif(
    not SYNCFS_AVAILABLE, reason="no syncfs(2) in this C library")), "fsync"]


def _items(n: int) -> list[BatchItem]:
    return [BatchItem(f"s{i}@x.test", [f"a{i}@D{i}.Test", "b@e.test"][: 1 + i % 2],
                      b"Subject: %d\n\nbody\n" % i, received=b"Received: r\n")
            for i in range(n)]


def _run(root: Path, items: list[BatchItem], sync: str) -> list:
    conn = open_queue(root)
    try:
        with ThreadPoolExecutor(4) as pool:
            return enqueue_batch(root, items, conn=conn, pool=pool, sync=sync)
    finally:
        conn.close()


@pytest.mark.parametrize("sync", MODES)
def test_each_way_queues_every_message_whole(root: Path, sync: str) -> None:
    items = _items(7)
    ids = _run(root, items, sync)
    assert all(isinstance(i, int) for i in ids), ids
    assert [(m[0], m[1], m[2], m[3]) for m in messages(root)] == [
        (i, it.sender, len(it.received) + len(it.message), len(it.recipients))
        for i, it in zip(ids, items)]
    for msg_id, item in zip(ids, items):
        assert message_path(root, msg_id).read_bytes() == item.received + item.message
        assert recipients(root, msg_id) == list(item.recipients)
    with closing(open_queue(root)) as conn:
        domains = sorted(d for (d,) in conn.execute("SELECT domain FROM recipients"))
    assert domains[:1] == ["d0.test"] and "D1.Test" not in domains  # lower-cased
    assert files(root, "tmp") == []


@pytest.mark.parametrize("sync", MODES)
def test_a_body_that_cannot_be_renamed_fails_alone(root: Path, sync: str) -> None:
    # mess/2 is a non-empty folder: the second message's rename fails (EISDIR).
    (root / "queue" / "mess" / "2").mkdir()
    (root / "queue" / "mess" / "2" / "x").write_text("in the way\n")
    items = _items(3)
    results = _run(root, items, sync)
    assert results[0] == 1 and isinstance(results[1], MessDirError)
    assert results[1].exit_code == 64 and results[2] == 3
    assert [m[0] for m in messages(root)] == [1, 3]
    assert recipients(root, 3) == list(items[2].recipients)
    with closing(open_queue(root)) as conn:
        assert conn.execute("SELECT count(*) FROM recipients WHERE msg = 2").fetchone()[0] == 0
    assert files(root, "tmp") == []


def test_an_unknown_way_is_refused(root: Path) -> None:
    with pytest.raises(ValueError, match="sync must be"):
        _run(root, _items(1), "sometimes")


_CHILD = """
import sys
from mta.queue import BatchItem, enqueue_batch, open_queue
root, sync = sys.argv[1], sys.argv[2]
items = [BatchItem("s@x.test", [f"r{i}@d.test"], b"m%d\\n" % i) for i in range(5)]
ids = enqueue_batch(root, items, conn=open_queue(root), sync=sync)
print(" ".join(str(r) if isinstance(r, int) else f"E{r.exit_code}" for r in ids))
"""


@pytest.mark.parametrize("sync", MODES)
def test_a_failed_sync_fails_the_whole_batch_and_leaves_nothing(root: Path, sync: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(root), sync], capture_output=True,
                          text=True, env=shim_env(root, MTA_FAULT="fsync_eio"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["E53"] * 5
    assert_queue_empty(root)
    assert files(root, "tmp") == [] and os.listdir(root / "queue" / "mess") == []


def test_the_queue_owner_refuses_an_unknown_way(root: Path) -> None:
    from mta.queued import QueueOwner

    with pytest.raises(QueueError, match="MTA_QUEUE_SYNC must be"):
        QueueOwner(root, sync="sometimes")


@pytest.mark.parametrize("release, ok", [
    ("5.7.19", False), ("5.8.0", True), ("5.10.0-21-amd64", True), ("6.18.44-fc", True),
    ("4.19.0", False), ("3.10.0-1160.el7.x86_64", False), ("weird", False), ("6", False)])
def test_syncfs_is_trusted_only_where_it_reports_write_back_errors(release, ok) -> None:
    from mta.queue.batch import _reports_errors

    assert _reports_errors(release) is ok
