"""The wake-up pipe between injectors and the scheduler (qmail's lock/trigger).

After a commit the injector writes one byte to the named pipe
``queue/lock/trigger`` without blocking, exactly as qmail-queue's ``triggerpull``
does; the scheduler keeps the pipe open for reading and, when it becomes readable,
drains it and looks for new work. Nobody listening (ENXIO), a full pipe (EAGAIN)
or a missing pipe are normal and ignored: the scheduler also rescans on a timer.

Public:
    trigger_path(root) -> Path
    poke_trigger(root)            never raises: the message is already committed
    open_trigger(root) -> int     read end for the scheduler (non-blocking fd;
                                  opened read-write so it never sees EOF)
    drain_trigger(fd) -> int      read and discard what is pending; return the count
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["trigger_path", "poke_trigger", "open_trigger", "drain_trigger"]


def trigger_path(root: str | os.PathLike) -> Path:
    return Path(root) / "queue" / "lock" / "trigger"


def poke_trigger(root: str | os.PathLike) -> None:
    """Wake the scheduler, if one listens. Errors are deliberately not raised.

    It runs after the commit: failing the injection now would make the client
    retry a message that is already queued, so every OSError only means "the
    scheduler finds it on its next scan" (qmail's triggerpull ignores them too).
    """
    # Expected: ENXIO (no reader), EAGAIN (pipe full: a wake-up is already pending),
    # ENOENT (no trigger made). Anything else is ignored too, for the reason above.
    try:
        fd = os.open(trigger_path(root), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        os.write(fd, b"\0")
    except OSError:
        return
    finally:
        os.close(fd)


def open_trigger(root: str | os.PathLike) -> int:
    """Open the trigger for the scheduler: non-blocking, read-write (Linux FIFO
    semantics: holding a write end means poll() never reports a permanent EOF)."""
    return os.open(trigger_path(root), os.O_RDWR | os.O_NONBLOCK)


def drain_trigger(fd: int) -> int:
    """Consume pending wake-up bytes; return how many there were."""
    total = 0
    while True:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return total
        if not data:
            return total
        total += len(data)
