"""dot-qmail file selection and parsing (qmail-local's ``qmesearch`` and line loop).

Every local address is handled the way qmail's ``alias`` user handles the
addresses no real user claims: the instance's ``alias/`` directory is HOME, the
whole local part is the extension, and the dash is ``-``. For local part
``joe-foo-bar`` the files tried, in order, are::

    .qmail-joe-foo-bar  .qmail-joe-foo-default  .qmail-joe-default  .qmail-default

(qmail-local.c ``qmesearch``; an extension ending in ``-`` also tries
``.qmail-EXT-default`` first). The extension is lower-cased and every ``.`` is
mapped to ``:``, so ``..`` can never name a parent directory. A candidate name
that still contains ``/`` (or NUL) is never opened: it is treated as absent and
the search goes on to the ``-default`` names, so ``joe-../jane/foo`` can only
ever open a plain file directly inside ``alias/`` (security matrix LD1).

``DEFAULT`` is the part of the original-case extension matched by ``default``.

Public:
    find_dotqmail(alias_dir, local) -> DotQmailMatch | None
    has_delivery(alias_dir, local) -> bool       RCPT-time check for the SMTP server
    read_dotqmail(match) -> bytes                the file's contents (checked again)
    parse_dotqmail(data) -> tuple[Instruction, ...]
    forward_sender(alias_dir, local, host, sender) -> str   qmail's NEWSENDER
    check_home(alias_dir) -> None                qmail-local ``checkhome``

Failures: everything here that is not "no such file" is temporary and raised as
``DotQmailError(reason)`` with qmail's text and a ``(#4.x.x)`` code: a group- or
world-writable ``.qmail`` file or alias directory (LD4), an alias directory that is
sticky (being edited), a file that cannot be opened for any reason other than
not existing, a blank first line.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DotQmailError",
    "DotQmailMatch",
    "Instruction",
    "Kind",
    "check_home",
    "find_dotqmail",
    "forward_sender",
    "has_delivery",
    "parse_dotqmail",
    "read_dotqmail",
]

# qmail's conf-patrn is 002; we also refuse group-writable files, as the brief asks.
_WRITABLE = stat.S_IWGRP | stat.S_IWOTH
# errno values meaning "this candidate does not exist" (qmail-local qmeexists):
# everything else is a temporary failure.
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP})


class DotQmailError(Exception):
    """A temporary problem with the alias directory or a dot-qmail file."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DotQmailMatch:
    """The dot-qmail file chosen for one local part.

    ``path`` is the file, ``ext`` the safe (lower-cased, ``.``->``:``) extension it
    was searched for, ``default`` the value of ``DEFAULT`` (None unless the file
    name ends in ``default``), ``forward_only`` true when the file has the
    owner-execute bit (qmail: only forwards allowed).
    """

    path: Path
    ext: str
    default: str | None
    forward_only: bool = False


class Kind(enum.Enum):
    COMMENT = "comment"
    PROGRAM = "program"
    MAILDIR = "maildir"
    MBOX = "mbox"
    FORWARD = "forward"
    FORWARD_ONLY = "forward-only"  # a "+list" line


@dataclass(frozen=True, slots=True)
class Instruction:
    """One line of a dot-qmail file; ``arg`` is the command, path or address."""

    kind: Kind
    arg: str


def safe_ext(local: str) -> str:
    """The extension as qmail-local uses it in file names: lower case, '.' -> ':'."""
    return local.lower().replace(".", ":")


def check_home(alias_dir: Path) -> None:
    """Refuse (temporarily) a missing, writable or sticky alias directory."""
    try:
        st = os.stat(alias_dir)
    except OSError as exc:
        raise DotQmailError(
            f"Unable to switch to {alias_dir}: {exc.strerror}. (#4.3.0)"
        ) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise DotQmailError(f"Unable to switch to {alias_dir}: not a directory. (#4.3.0)")
    if st.st_mode & _WRITABLE:
        raise DotQmailError("Uh-oh: home directory is writable. (#4.7.0)")
    if st.st_mode & stat.S_ISVTX:
        raise DotQmailError(
            "Home directory is sticky: user is editing his .qmail file. (#4.2.1)"
        )


def _candidates(ext: str) -> list[tuple[str, int | None]]:
    """File names to try, with the offset into ext where DEFAULT starts (or None)."""
    names: list[tuple[str, int | None]] = []
    exact = ".qmail-" + ext
    names.append((exact, len(ext) - 7 if ext.endswith("default") else None))
    for i in range(len(ext), -1, -1):
        if i == 0 or ext[i - 1] == "-":
            names.append((".qmail-" + ext[:i] + "default", i))
    return names


def _open_candidate(alias_dir: Path, name: str) -> os.stat_result | None:
    """Stat one candidate through an open fd; None when it is absent (or unsafe)."""
    if "/" in name or "\0" in name:
        return None  # LD1: never leave alias_dir, never open a subdirectory path
    path = f"{alias_dir}/{name}"  # a string: this runs for every candidate of every lookup
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in _ABSENT:
            return None
        raise DotQmailError(f"Unable to open {path}: {exc.strerror}. (#4.3.0)") from exc
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        return None
    if st.st_mode & _WRITABLE:
        raise DotQmailError("Uh-oh: .qmail file is writable. (#4.7.0)")
    return st


def find_dotqmail(alias_dir: Path, local: str) -> DotQmailMatch | None:
    """Choose the dot-qmail file for ``local`` (case-insensitive), or None.

    Raises DotQmailError for a writable or unreadable candidate (temporary).
    """
    alias_dir = Path(alias_dir)
    ext = safe_ext(local)
    for name, offset in _candidates(ext):
        st = _open_candidate(alias_dir, name)
        if st is None:
            continue
        default = None
        if offset is not None and offset <= len(local):
            default = local[offset:]
        return DotQmailMatch(
            path=alias_dir / name,
            ext=ext,
            default=default,
            forward_only=bool(st.st_mode & stat.S_IXUSR),
        )
    return None


def has_delivery(alias_dir: Path, local: str) -> bool:
    """True when mail to ``local`` would find a dot-qmail file (RCPT-time check).

    A temporary problem (writable or unreadable file) counts as "has delivery":
    the message is accepted and stays queued until the problem is fixed, rather
    than being refused permanently for a fault of ours.
    """
    try:
        return find_dotqmail(alias_dir, local) is not None
    except DotQmailError:
        return True


def read_dotqmail(match: DotQmailMatch) -> bytes:
    """Read the chosen file, re-checking that it is still safe to obey."""
    try:
        fd = os.open(match.path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise DotQmailError(
            f"Unable to open {match.path}: {exc.strerror}. (#4.3.0)"
        ) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mode & _WRITABLE:
            raise DotQmailError("Uh-oh: .qmail file is writable. (#4.7.0)")
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise DotQmailError(f"Unable to read {match.path}: {exc.strerror}. (#4.3.0)") from exc
    finally:
        os.close(fd)


def parse_dotqmail(data: bytes) -> tuple[Instruction, ...]:
    """Split a dot-qmail file into instructions (dot-qmail(5)).

    Trailing blanks are ignored, later blank lines are skipped, a blank first
    line is a temporary error (qmail: the user is probably mid-edit).
    """
    text = data.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out: list[Instruction] = []
    for number, raw in enumerate(lines):
        line = raw.rstrip(" \t")
        if not line:
            if number == 0:
                raise DotQmailError("Uh-oh: first line of .qmail file is blank. (#4.2.1)")
            continue
        out.append(_classify(line))
    return tuple(out)


def _classify(line: str) -> Instruction:
    first = line[0]
    if first == "#":
        return Instruction(Kind.COMMENT, line[1:])
    if first == "|":
        return Instruction(Kind.PROGRAM, line[1:])
    if first in "./":
        return Instruction(Kind.MAILDIR if line.endswith("/") else Kind.MBOX, line)
    if first == "+":
        # qmail only knows "+list"; any other "+" line is ignored like a comment.
        kind = Kind.FORWARD_ONLY if line == "+list" else Kind.COMMENT
        return Instruction(kind, line[1:])
    if first == "&":
        return Instruction(Kind.FORWARD, line[1:])
    return Instruction(Kind.FORWARD, line)


def _exists(alias_dir: Path, name: str) -> bool:
    if "/" in name or "\0" in name:
        return False
    path = f"{alias_dir}/{name}"
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno in _ABSENT:
            return False
        raise DotQmailError(f"Unable to open {path}: {exc.strerror}. (#4.3.0)") from exc
    return True


def forward_sender(alias_dir: Path, local: str, host: str, sender: str) -> str:
    """qmail's NEWSENDER: the envelope sender for forwards from this address.

    An empty sender or ``#@[]`` stays as is. Otherwise, if ``.qmail-EXT-owner``
    exists the sender becomes ``LOCAL-owner@HOST``, and if
    ``.qmail-EXT-owner-default`` exists too, ``LOCAL-owner-@HOST-@[]`` (VERP).
    """
    if sender in ("", "#@[]"):
        return sender
    ext = safe_ext(local)
    alias_dir = Path(alias_dir)
    if not _exists(alias_dir, f".qmail-{ext}-owner"):
        return sender
    if _exists(alias_dir, f".qmail-{ext}-owner-default"):
        return f"{local}-owner-@{host}-@[]"
    return f"{local}-owner@{host}"
