"""Message preparation for local injection: what qmail-inject does before qmail-queue.

``prepare_message`` parses the header of a message given on the command line side
(``mta inject``, the ``sendmail`` shim), adds ``Date``, ``Message-ID`` (from
``idhost``) and ``From`` when they are missing, removes ``Bcc``, converts CRLF to
LF (the queue stores LF line ends), and, with ``take_recipients``, collects the
recipients from ``To``, ``Cc`` and ``Bcc`` (sendmail -t). Addresses without a host
get ``defaulthost``, as qmail-inject does.

Header parsing works on the raw bytes and only touches the fields it adds or
removes; the rest of the message, body included, is passed through byte for byte.

Public:
    prepare_message(raw, *, ...) -> Prepared(message, recipients)
    qualify(address, defaulthost) -> str
    InjectError     no recipients, or a header that is not a header
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from email.utils import format_datetime, formataddr, getaddresses
from datetime import datetime, timezone

__all__ = ["Prepared", "InjectError", "prepare_message", "qualify", "split_header"]

_FIELD = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")


class InjectError(Exception):
    """The message cannot be injected as given."""


@dataclass(frozen=True)
class Prepared:
    message: bytes
    recipients: tuple[str, ...]


def split_header(raw: bytes) -> tuple[list[bytes], bytes]:
    """Split into header fields (each with its continuation lines, LF ends) and body.

    A first line that is neither a field nor blank means the message has no header
    (qmail-inject then treats everything as body); the body keeps its separator.
    """
    raw = raw.replace(b"\r\n", b"\n")
    fields: list[bytes] = []
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        end = len(raw) if end < 0 else end + 1
        line = raw[pos:end]
        if line in (b"\n", b""):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif _FIELD.match(line):
            fields.append(line if line.endswith(b"\n") else line + b"\n")
        else:
            break
        pos = end
    return fields, raw[pos:]


def _name(field: bytes) -> bytes:
    return field.split(b":", 1)[0].strip().lower()


def qualify(address: str, defaulthost: str) -> str:
    address = address.strip()
    if address and "@" not in address:
        return f"{address}@{defaulthost}"
    return address


def prepare_message(raw: bytes, *, idhost: str, defaulthost: str, sender: str,
                    fullname: str | None = None, recipients: tuple[str, ...] = (),
                    take_recipients: bool = False, now: float | None = None) -> Prepared:
    """Complete the header and work out the recipients; see the module docstring."""
    fields, body = split_header(raw)
    names = {_name(f) for f in fields}
    rcpts = [qualify(r, defaulthost) for r in recipients]
    if take_recipients:
        values = [f.split(b":", 1)[1].decode("utf-8", "replace").replace("\n", " ")
                  for f in fields if _name(f) in (b"to", b"cc", b"bcc")]
        rcpts += [qualify(a, defaulthost) for _, a in getaddresses(values) if a]
    rcpts = [r for r in rcpts if r]
    if not rcpts:
        raise InjectError("no recipients (give addresses, or -t with To/Cc/Bcc)")
    fields = [f for f in fields if _name(f) != b"bcc"]
    now = time.time() if now is None else now
    added = []
    if b"date" not in names:
        stamp = format_datetime(datetime.fromtimestamp(now, timezone.utc).astimezone())
        added.append(f"Date: {stamp}\n".encode())
    if b"message-id" not in names:
        added.append(f"Message-ID: <{int(now)}.{os.getpid()}.{time.perf_counter_ns()}@{idhost}>\n".encode())
    if b"from" not in names:
        who = formataddr((fullname, sender)) if fullname else sender
        added.append(f"From: {who}\n".encode())
    if not body.startswith(b"\n"):
        body = b"\n" + body
    return Prepared(b"".join(fields + added) + body, tuple(rcpts))
