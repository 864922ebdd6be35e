"""Post numbers and the archive of a list (ezmlm's ``num`` file and ``archive/M/NN``).

What it does: ``next_number`` takes the list's lock (``flock`` on ``lock``),
reads ``num`` (``lastnum:cumulative-size``, ezmlm's format), writes the next
value durably (ezlist._fsutil.write_atomic) and returns the new number. The
number is committed before the post is queued: a crash in between leaves a gap
in the numbering (as in ezmlm), never two posts with one number.
``archive_post`` stores post N as ``archive/M/NN`` (N = 100*M + NN, NN two
digits), written atomically; ``read_archived`` reads it back.

Public functions:
    next_number(list_dir, size) -> int
    current_number(list_dir) -> int
    archive_path(list_dir, number) -> Path
    archive_post(list_dir, number, raw) -> Path
    read_archived(list_dir, number) -> bytes

Failures: ``ValueError`` names ``num`` and its bad contents; ``OSError`` from
the file system (e.g. a missing archive message: FileNotFoundError) propagates.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ezlist._fsutil import fsync_dir, write_atomic


def _read_num(list_dir: Path) -> tuple[int, int]:
    file = Path(list_dir) / "num"
    if not file.exists():
        return 0, 0
    text = file.read_text("ascii", errors="replace").strip()
    last, _, size = text.partition(":")
    if not last.isdigit() or (size and not size.isdigit()):
        raise ValueError(f"{file}: line 1: want lastnum:cumulative-size, got {text!r}")
    return int(last), int(size or 0)


def current_number(list_dir: Path) -> int:
    """The number of the last post (0 before the first)."""
    return _read_num(list_dir)[0]


def next_number(list_dir: Path, size: int) -> int:
    """Reserve and return the next post number; adds ``size`` bytes to the total."""
    fd = os.open(Path(list_dir) / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        last, total = _read_num(list_dir)
        number = last + 1
        write_atomic(Path(list_dir) / "num", f"{number}:{total + size}\n".encode("ascii"))
        return number
    finally:
        os.close(fd)  # releases the lock


def archive_path(list_dir: Path, number: int) -> Path:
    if number < 1:
        raise ValueError(f"post numbers start at 1, got {number}")
    return Path(list_dir) / "archive" / str(number // 100) / f"{number % 100:02d}"


def archive_post(list_dir: Path, number: int, raw: bytes) -> Path:
    """Store post ``number`` (the message as distributed) in the archive."""
    path = archive_path(list_dir, number)
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        fsync_dir(path.parent.parent)
    write_atomic(path, raw)
    return path


def read_archived(list_dir: Path, number: int) -> bytes:
    return archive_path(list_dir, number).read_bytes()
