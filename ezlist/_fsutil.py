"""Durable small-file writes for list folders (private helper).

``write_atomic(path, data, mode)`` writes to a temporary file in the same
directory, fsyncs it, renames it over ``path`` and fsyncs the directory (DESIGN
decision 7: Linux does not make metadata synchronous). A reader sees the old or
the new contents, never a torn file. ``fsync_dir(path)`` is the last step alone.

Failures: ``OSError`` from the file system propagates; the temporary file is
removed when the write fails before the rename.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or create inside it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` durably and atomically."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
