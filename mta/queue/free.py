"""The pool of empty body files (queue/free/): removed messages' inodes, reused.

Why. On ext4 without a journal, creating a file costs 100-250 us of kernel time
when many inodes of its block group were deleted recently (the allocator skips
"recently deleted" inodes, scanning from the start of the group each time);
renaming an existing file into tmp/ and truncating it costs ~30 us in all. So
``remove_message`` parks a finished body here instead of unlinking it, and the
next injection renames it into tmp/ instead of creating a file. ``mta init`` fills
a new queue's pool with spare files (``stock_pool``), so a burst of mail before
anything was delivered does not create a file a message either.

A file in free/ is empty (truncated before its rename in), a regular file of the
queue uid with one link and a mode no wider than a fresh body's (0640). A taker
checks all of that again and never writes into anything else: a foreign entry is
unlinked (a directory is skipped), and the injector creates a fresh file.

Public:
    FREE_CAP                          soft cap on files in free/ (0 disables recycling)
    recycle_body(path) -> bool        move mess/N into free/; False: unlink it yourself
    take_body(free, dest) -> int|None rename a free file to ``dest``; its fd, writable,
                                      empty, flock held; None: create a fresh one
    trim_pool(free) -> int            clean_queue's part: entries removed
    stock_pool(free, count=None) -> int
                                      create up to ``count`` (None: FREE_CAP) spare
                                      empty files; how many were made

Stale readers. A process that still has mess/N open when the message is removed
(a program's background child holding its stdin, say) must never see another
message's text through it: ``recycle_body`` holds a write lease (F_SETLEASE), which
the kernel grants only when no other open file refers to the inode, and it checks
the lease is still unbroken after the rename. Otherwise the file is unlinked.

Costs. Listing free/ costs ~0.25 us of kernel time a name (240 us for 1024 names
here), so a process lists it at most once per batch of names it then uses, never
for its first injection (a one-shot ``qmail-queue`` would pay more than it saves),
and not again for ``_EMPTY_BACKOFF`` seconds after finding it empty. The cap is
counted per process, recounted every ``_RECOUNT`` seconds; several removers may
overshoot it until then, and ``clean_queue`` trims.

Failures: none escape from the injection and removal paths. Any OSError makes
``recycle_body`` return False and ``take_body`` return None (and leave free/ alone for
``_EMPTY_BACKOFF`` seconds). ``stock_pool`` raises OSError (``mta init`` reports it).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import random
import signal
import stat
import time

__all__ = ["FREE_CAP", "recycle_body", "take_body", "trim_pool", "stock_pool"]

FREE_CAP = 8192  # a burst of 5000 removals fits (benchmarks/queue_recycle.py)
_RECOUNT = 10.0        # seconds between recounts of free/ by one remover
_EMPTY_BACKOFF = 1.0   # seconds a taker leaves an empty (or unusable) free/ alone
_FRESH_MODE = 0o640
_seq = itertools.count()


class _Pool:
    """One process's view of one free/ folder."""

    __slots__ = ("names", "retry_at", "count", "counted_at")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.retry_at = 0.0
        self.count = 0
        self.counted_at = -_RECOUNT - 1.0


_pools: dict[str, _Pool] = {}
_owner_pid = -1   # the process _pools and _warm belong to (a forked child starts over)
_warm = False     # has this process injected once (so a listing may pay off)?


def _pool(free: str) -> _Pool:
    global _owner_pid, _warm
    if _owner_pid != os.getpid():
        _pools.clear()
        _owner_pid, _warm = os.getpid(), False
    pool = _pools.get(free)
    if pool is None:
        pool = _pools[free] = _Pool()
    return pool


def _usable(st: os.stat_result) -> bool:
    return (stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == os.geteuid()
            and not st.st_mode & 0o7777 & ~_FRESH_MODE)


def recycle_body(path) -> bool:
    """Empty the finished body ``path`` (queue/mess/N) and move it into free/.

    True: done, nothing left at ``path``. False: ``path`` is untouched or only
    truncated (its rows are gone: it is garbage), and the caller unlinks it.
    """
    if FREE_CAP <= 0:
        return False
    path = os.fspath(path)
    free = os.path.join(os.path.dirname(os.path.dirname(path)), "free")
    pool = _pool(free)
    if not _has_room(pool, free):
        return False
    dest = f"{free}/{os.getpid()}.{time.time_ns()}.{next(_seq)}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not _usable(os.fstat(fd)):
            return False
        # A broken lease signals its holder; SIGIO would kill us, SIGURG is ignored.
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)  # EAGAIN: open elsewhere
        os.ftruncate(fd, 0)
        os.rename(path, dest)
        if fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_WRLCK:
            _unlink_quietly(dest)  # opened meanwhile: that opener keeps an orphan
            return True
    except OSError:
        return False
    finally:
        os.close(fd)
    pool.count += 1
    pool.retry_at = 0.0  # an injector in this process may look again at once
    return True


def _has_room(pool: _Pool, free: str) -> bool:
    now = time.monotonic()
    if now - pool.counted_at > _RECOUNT:
        try:
            pool.count = len(os.listdir(free))
        except OSError:
            pool.count = FREE_CAP  # no usable free/ (an old instance?): unlink as before
        pool.counted_at = now
    return pool.count < FREE_CAP


def take_body(free: str, dest) -> int | None:
    """Rename a file of ``free`` to ``dest`` (in tmp/), lock and empty it; its fd.

    None when free/ has nothing usable now; the caller creates a fresh file.
    """
    global _warm
    pool = _pool(free)
    if not _warm:
        _warm = True
        return None
    listed = False  # one listing a call: a skipped directory must not loop us
    try:
        while True:
            if not pool.names:
                if listed:
                    break  # all of this listing gone or unusable: empty for now
                if time.monotonic() < pool.retry_at:
                    return None
                pool.names, listed = _list(free), True
                continue
            try:
                name = pool.names.pop()
            except IndexError:  # another thread of this process took the last name
                continue
            fd = _take(f"{free}/{name}", dest)
            if fd is not None:
                return fd
    except OSError:
        pool.names = []
    pool.retry_at = time.monotonic() + _EMPTY_BACKOFF
    return None


def _list(free: str) -> list[str]:
    names = os.listdir(free)
    random.shuffle(names)  # concurrent takers start at different names
    return names


def _take(src: str, dest) -> int | None:
    """One candidate; None when it is gone or not usable (then it is removed)."""
    try:
        st = os.lstat(src)
    except FileNotFoundError:
        return None  # another taker, or clean_queue, was first
    if not _usable(st):
        if not stat.S_ISDIR(st.st_mode):
            _unlink_quietly(src)  # a link, a hard link, another uid: never written into
        return None
    try:
        os.rename(src, dest)
    except FileNotFoundError:
        return None
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # clean_queue took the unlocked tmp file already
    except OSError:
        _unlink_quietly(dest)
        raise
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) or not _usable(fst):
            _unlink_quietly(dest)  # swapped between our lstat and our rename
            os.close(fd)
            return None
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(dest).st_ino == fst.st_ino
        except FileNotFoundError:
            same = False  # clean_queue locked and unlinked it before our flock
        if not same:
            os.close(fd)
            return None
        if fst.st_size:
            os.ftruncate(fd, 0)  # a crash undid the truncation (parked files are empty)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return fd


def _unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return  # someone else removed or took it: the same result for us


def trim_pool(free) -> int:
    """Unlink what no taker should see: entries past FREE_CAP, non-empty files
    (a crash may undo a truncation but keep the rename) and foreign entries
    (directories excepted). Safe beside live takers: unlinking a name a taker is
    about to rename only makes its rename fail. Returns how many were removed."""
    try:
        names = os.listdir(free)
    except FileNotFoundError:
        return 0
    removed = kept = 0
    for name in names:
        path = os.path.join(free, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            continue  # not ours: never deleted, never used
        if kept < FREE_CAP and _usable(st) and st.st_size == 0:
            kept += 1
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        removed += 1
    return removed


def stock_pool(free, count: int | None = None) -> int:
    """Create up to ``count`` empty files in ``free``, never past FREE_CAP in all
    (None: up to FREE_CAP).

    For a new queue: a burst of injections then renames ready files instead of
    allocating one inode a message, which on ext4 without a journal costs ~1 ms of
    kernel time right after many deletions (benchmarks/RESULTS.md). Each file is what
    a taker accepts: empty, one link, this process's uid, mode 0640 or narrower; run
    this as the queue user, or chown them after. Returns how many were made; an
    OSError (a full disk, no free/) is raised, with the files made so far kept.
    """
    free = os.fspath(free)
    room = FREE_CAP - len(os.listdir(free))
    if count is not None:
        room = min(room, count)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    prefix = f"{free}/{os.getpid()}.{time.time_ns()}.s"
    for i in range(max(0, room)):
        os.close(os.open(f"{prefix}{i}", flags, _FRESH_MODE))
    return max(0, room)
