"""Spare files (mta.queue.free.stock_pool): a new queue's first injections reuse them."""

from __future__ import annotations

import os
from pathlib import Path

from mta.instance import init_instance
from mta.queue import BatchItem, enqueue, enqueue_batch, message_path, open_queue
from mta.queue.free import FREE_CAP, stock_pool
from queue_shim import files


def _inodes(folder: Path) -> set[int]:
    return {os.lstat(folder / name).st_ino for name in os.listdir(folder)}


def test_stock_never_goes_past_the_cap(root: Path) -> None:
    free = root / "queue" / "free"
    assert stock_pool(free, 5) == 5
    assert stock_pool(free) == FREE_CAP - 5
    assert stock_pool(free, 10) == 0
    assert len(files(root, "free")) == FREE_CAP


def test_a_new_queue_takes_its_bodies_from_the_spare_files(tmp_path: Path) -> None:
    root = tmp_path / "inst"
    assert "queue/free/ (4 spare files)" in init_instance(root, "mx.test", spare_files=4)
    stocked = _inodes(root / "queue" / "free")
    assert len(stocked) == 4
    # A process's first injection never looks at free/ (it may take one if warm already).
    first = enqueue(root, "a@x.test", ["b@y.test"], b"one\n")
    spare = _inodes(root / "queue" / "free")
    assert len(spare) >= 3 and spare <= stocked
    conn = open_queue(root)
    try:
        ids = enqueue_batch(root, [BatchItem("a@x.test", [f"r{i}@y.test"], b"m%d\n" % i)
                                   for i in range(len(spare))], conn=conn)
    finally:
        conn.close()
    assert all(isinstance(i, int) for i in ids), ids
    assert os.stat(message_path(root, first)).st_ino not in spare
    assert {os.stat(message_path(root, i)).st_ino for i in ids} == spare
    assert [message_path(root, i).read_bytes().endswith(b"m%d\n" % n)
            for n, i in enumerate(ids)] == [True] * len(ids)
    assert files(root, "free") == [] and files(root, "tmp") == []


def test_init_of_an_existing_queue_adds_no_spare_files(tmp_path: Path) -> None:
    root = tmp_path / "inst"
    init_instance(root, "mx.test")
    assert files(root, "free") == []
    assert init_instance(root, spare_files=3) == []
    assert files(root, "free") == []
