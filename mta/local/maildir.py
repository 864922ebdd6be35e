"""Maildir delivery (qmail-local ``maildir_child``, maildir(5)).

``deliver_maildir(directory, prefix, message_path)`` writes ``prefix`` (the
Return-Path and Delivered-To lines) and then the stored message, streamed in
``CHUNK``-byte pieces, to a new file in ``directory/tmp/``; fsyncs and closes it;
links it into ``directory/new/`` under the same name; fsyncs ``new/`` (Linux
needs that for the link to be durable, DESIGN decision 7); then unlinks the tmp
name. The checkpoint ``crash_point("maildir_before_link")`` sits between the
tmp write and the link: a crash there leaves a complete file in ``tmp/`` and
nothing in ``new/``; a retry makes a fresh unique name, so exactly one complete
file reaches ``new/`` (QF5). Files left in ``tmp/`` by a crash are removed by
mail readers after 36 hours, as maildir(5) says; we do not sweep them.

Unique names follow the maildir(5) "modern" form
``SECONDS.M<usec>P<pid>Q<n>R<random>.HOST`` (Q = deliveries by this process,
so threads sharing a pid never collide; ``/`` and ``:`` in the host name are
written as ``\\057`` and ``\\072``). The tmp file is opened with O_EXCL, so a
collision is an error, never an overwrite. Files are created mode 0600.

Public:
    deliver_maildir(directory, prefix, message_path) -> Delivered | TempFail
Every failure is temporary, with qmail's texts: ``Unable to chdir to maildir.
(#4.2.1)`` when ``directory/tmp`` or ``directory/new`` is missing, ``Unable to
read message. (#4.3.0)``, else ``Temporary error on maildir delivery. (#4.3.0)``
plus the system's reason.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import time
from pathlib import Path

from mta.crashpoint import crash_point
from mta.interfaces import Delivered, TempFail

__all__ = ["CHUNK", "deliver_maildir", "unique_name"]

CHUNK = 64 * 1024
_counter = itertools.count(1)  # next() on a count is atomic under the GIL


def unique_name(now: float | None = None) -> str:
    """A maildir file name no other delivery on this host can produce."""
    now = time.time() if now is None else now
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}R{secrets.token_hex(4)}.{host}"


def deliver_maildir(directory: Path, prefix: bytes, message_path: Path) -> Delivered | TempFail:
    """Deliver one message into the Maildir ``directory`` (see module doc)."""
    # plain strings and descriptors: this runs once a local delivery, and pathlib's
    # objects and buffered files cost more than the rest of the Python work here
    directory = os.fspath(directory)
    new_dir = f"{directory}/new"
    if not os.path.isdir(f"{directory}/tmp") or not os.path.isdir(new_dir):
        return TempFail("Unable to chdir to maildir. (#4.2.1)", "4.2.1")
    name = unique_name()
    tmp = f"{directory}/tmp/{name}"
    try:
        src = os.open(message_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return TempFail(f"Unable to read message: {exc.strerror}. (#4.3.0)", "4.3.0")
    try:
        try:
            _write_tmp(tmp, prefix, src)
        finally:
            os.close(src)
        crash_point("maildir_before_link")
        os.link(tmp, f"{new_dir}/{name}")
        _fsync_dir(new_dir)
    except _ReadError as exc:
        _unlink_quietly(tmp)
        return TempFail(f"Unable to read message: {exc}. (#4.3.0)", "4.3.0")
    except OSError as exc:
        _unlink_quietly(tmp)
        return TempFail(
            f"Temporary error on maildir delivery: {exc.strerror}. (#4.3.0)", "4.3.0"
        )
    _unlink_quietly(tmp)
    return Delivered(f"maildir {directory}")


class _ReadError(Exception):
    """Reading the stored message failed (as opposed to writing the copy)."""


def _write_tmp(tmp: str, prefix: bytes, src: int) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, prefix)
        while True:
            try:
                chunk = os.read(src, CHUNK)
            except OSError as exc:
                raise _ReadError(exc.strerror) from exc
            if not chunk:
                break
            _write_all(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    # The tmp file is only garbage at this point: a failed unlink (already gone,
    # or the directory vanished) changes nothing about the delivery's outcome.
    try:
        os.unlink(path)
    except OSError:
        return
