"""Recycled bodies (mta.queue.free): a removed message's inode serves the next injection.

Through the public API only: enqueue / enqueue_batch / remove_message / clean_queue.
A process never uses free/ for its first injection, so every test injects once before
it looks (``_warm``).
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from mta.queue import (
    BatchItem, clean_queue, enqueue, enqueue_batch, message_path, open_queue, remove_message,
)
from mta.queue.free import FREE_CAP
from queue_shim import files

OLD = b"Subject: old\n\n" + b"the old, long and private text\n" * 100


def _remove(root: Path, *ids: int) -> None:
    conn = open_queue(root)
    try:
        for msg_id in ids:
            remove_message(root, conn, msg_id)
    finally:
        conn.close()


def _warm(root: Path) -> None:
    """Inject once (a process's first injection never looks at free/), and leave
    free/ empty again: the recycled warm-up body serves a second, kept, message."""
    _remove(root, enqueue(root, "w@x.test", ["w@y.test"], b"warm-up\n"))
    enqueue(root, "w@x.test", ["w@y.test"], b"kept\n")
    assert files(root, "free") == []


def _ino(path: Path) -> int:
    return os.stat(path).st_ino


def test_removed_body_inode_serves_the_next_injection_with_only_the_new_text(root: Path) -> None:
    _warm(root)
    old = enqueue(root, "a@x.test", ["b@y.test"], OLD)
    ino = _ino(message_path(root, old))
    _remove(root, old)
    assert not message_path(root, old).exists()
    [parked] = files(root, "free")
    assert (root / "queue" / "free" / parked).read_bytes() == b""  # nothing of OLD left
    new = enqueue(root, "a@x.test", ["c@y.test"], b"short\n", received=b"")
    assert _ino(message_path(root, new)) == ino
    assert message_path(root, new).read_bytes() == b"short\n"
    assert files(root, "free") == [] and files(root, "tmp") == []
    st = os.stat(message_path(root, new))
    assert st.st_nlink == 1 and st.st_mode & 0o7777 == 0o640 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_batch_injection_takes_recycled_files_too(root: Path) -> None:
    _warm(root)
    old = [enqueue(root, "a@x.test", [f"r{i}@y.test"], OLD) for i in range(5)]
    inodes = {_ino(message_path(root, i)) for i in old}
    _remove(root, *old)
    assert len(files(root, "free")) == 5
    items = [BatchItem("a@x.test", ["z@y.test"], f"new {i}\n".encode(), b"") for i in range(5)]
    conn = open_queue(root)
    try:
        ids = enqueue_batch(root, items, conn=conn)
    finally:
        conn.close()
    assert {_ino(message_path(root, i)) for i in ids} == inodes
    assert [message_path(root, i).read_bytes() for i in ids] == [f"new {i}\n".encode()
                                                                  for i in range(5)]


def test_the_cap_holds_and_clean_queue_trims_to_it(root: Path) -> None:
    ids = [enqueue(root, "a@x.test", ["z@y.test"], b"x\n") for _ in range(5)]
    for i in range(FREE_CAP - 2):  # a pool two short of full
        os.close(os.open(root / "queue" / "free" / f"p{i}", os.O_CREAT | os.O_EXCL, 0o640))
    _remove(root, *ids)
    assert files(root, "mess") == []
    assert len(files(root, "free")) == FREE_CAP  # the 3 past the cap were unlinked
    free = root / "queue" / "free"
    for i in range(5):  # as other processes' removals may overshoot the cap
        (free / f"extra{i}").write_bytes(b"")
        os.chmod(free / f"extra{i}", 0o640)
    assert clean_queue(root) == 5
    assert len(files(root, "free")) == FREE_CAP
    assert all(os.stat(free / n).st_size == 0 for n in files(root, "free"))


def test_clean_queue_removes_non_empty_and_foreign_free_entries(root: Path) -> None:
    free = root / "queue" / "free"
    (free / "kept").write_bytes(b"")
    os.chmod(free / "kept", 0o640)
    (free / "undone").write_bytes(b"a truncation a crash lost")
    os.chmod(free / "undone", 0o640)
    (free / "link").symlink_to(root / "queue" / "queue.db")
    (free / "adir").mkdir()
    assert clean_queue(root) == 2
    assert files(root, "free") == ["adir", "kept"]


def test_foreign_entries_in_free_are_never_written_into(root: Path, tmp_path: Path) -> None:
    _warm(root)
    free = root / "queue" / "free"
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    os.chmod(victim, 0o640)
    (free / "symlink").symlink_to(victim)
    os.link(victim, free / "hardlink")
    (free / "adir").mkdir()
    (free / "adir" / "inside").write_bytes(b"inside\n")
    (free / "wide").write_bytes(b"")
    os.chmod(free / "wide", 0o666)  # wider than a fresh body
    fifo = free / "fifo"
    os.mkfifo(fifo)
    victim_ino = _ino(victim)
    msg_id = enqueue(root, "a@x.test", ["b@y.test"], b"new body\n", received=b"")
    assert message_path(root, msg_id).read_bytes() == b"new body\n"
    assert _ino(message_path(root, msg_id)) != victim_ino
    assert victim.read_bytes() == b"precious\n" and os.stat(victim).st_nlink == 1
    assert files(root, "free") == ["adir"]  # a directory is skipped, never removed
    assert (free / "adir" / "inside").read_bytes() == b"inside\n"
    assert files(root, "tmp") == []


def test_a_body_open_elsewhere_is_unlinked_not_recycled(root: Path) -> None:
    """A stale reader (a program's background child holding its stdin) keeps the old
    text and never sees a later message through its descriptor."""
    _warm(root)
    old = enqueue(root, "a@x.test", ["b@y.test"], OLD, received=b"")
    with open(message_path(root, old), "rb") as reader:
        _remove(root, old)
        assert files(root, "free") == [] and not message_path(root, old).exists()
        new = enqueue(root, "a@x.test", ["c@y.test"], b"someone else's mail\n")
        assert _ino(message_path(root, new)) != os.fstat(reader.fileno()).st_ino
        assert reader.read() == OLD


def _inject_many(root: str, tag: int, n: int, out) -> None:
    ids = [enqueue(root, "a@x.test", [f"p{tag}@y.test"], _body(tag, i), received=b"")
           for i in range(n)]
    out.put((tag, ids))


def _body(tag: int, i: int) -> bytes:
    return f"process {tag} message {i}\n".encode() * (1 + (i * 7 + tag) % 5)


def test_concurrent_takers_never_share_a_file(root: Path) -> None:
    _warm(root)
    n, procs = 60, 4
    old = [enqueue(root, "a@x.test", ["o@y.test"], OLD) for _ in range(n * procs)]
    _remove(root, *old)
    assert len(files(root, "free")) == n * procs
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    workers = [ctx.Process(target=_inject_many, args=(str(root), t, n, out))
               for t in range(procs)]
    for w in workers:
        w.start()
    results = dict(out.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    inodes = []
    for tag, ids in results.items():
        for i, msg_id in enumerate(ids):
            path = message_path(root, msg_id)
            assert path.read_bytes() == _body(tag, i)
            inodes.append(_ino(path))
    assert len(set(inodes)) == n * procs  # no two messages on one inode
    # every file was taken by exactly one process, except the first injection of each
    assert len(files(root, "free")) == procs
    assert files(root, "tmp") == []


def test_a_parked_file_that_is_not_empty_is_emptied_before_use(root: Path) -> None:
    """A power loss can keep a park's rename and lose its truncation: the taker empties it."""
    _warm(root)
    stale = root / "queue" / "free" / "stale"
    stale.write_bytes(OLD)
    stale.chmod(0o640)
    new = enqueue(root, "a@x.test", ["c@y.test"], b"short\n", received=b"")
    assert message_path(root, new).read_bytes() == b"short\n"
    assert files(root, "free") == []


class _TakenMeanwhile(list):
    """A listing whose last name another thread pops between our check and our pop
    (local deliveries run in threads of one process and may all inject forwards)."""

    def pop(self, *args):
        if not getattr(self, "raced", False):
            self.raced = True
            super().clear()
            raise IndexError("pop from empty list")
        return super().pop(*args)


def test_a_name_taken_by_another_thread_meanwhile_is_no_error(root: Path, monkeypatch) -> None:
    import mta.queue.free as free

    _warm(root)
    _remove(root, enqueue(root, "a@x.test", ["b@y.test"], OLD))
    [parked] = files(root, "free")
    listings = iter([_TakenMeanwhile([parked]), [parked]])
    monkeypatch.setattr(free, "_list", lambda folder: next(listings))
    free._pool(str(root / "queue" / "free")).names = []
    new = enqueue(root, "a@x.test", ["c@y.test"], b"short\n", received=b"")
    assert message_path(root, new).read_bytes() == b"short\n"
