"""Client side of the queue owner's socket, ``queue/lock/qq.sock`` (see mta.queued).

The protocol is QMQP's framing (cr.yp.to/proto/qmqp.html) on a local stream socket:

    request  = netstring( netstring(message) netstring(sender) netstring(rcpt)... )
    reply    = netstring( "K" id | "Z" code " " text | "D" code " " text )

``K`` means the message is committed to the queue (the reply is written only after
the COMMIT that covers it), ``Z`` a temporary and ``D`` a permanent refusal; ``code``
is the qmail-queue exit code the queue owner would have exited with. A connection
carries any number of requests; they may be pipelined and are answered in order.
A connection that drops before its reply means "temporary failure, maybe queued"
(as qmail-queue killed after its commit: the accepted worst case is a duplicate).

Public:
    socket_path(root) -> Path
    encode_request(sender, recipients, message) -> list[bytes]   (for writelines)
    parse_reply(payload) -> int                 the id, or raises QqError
    QqError(temporary, text, exit_code)         a refusal or a failure to talk
    submit_sync(path, sender, recipients, message, timeout=...) -> int
    QqClient(path, *, connect_wait=5.0, timeout=600.0): ``await submit(...)`` -> id;
        one pipelined connection, re-opened on demand; the requests made in one
        event-loop iteration are sent in one write; ``close()`` (defined in
        mta.qq_async, loaded on first use)
    may_write_queue(root) -> bool               can this process write the queue itself?
    inject(root, sender, recipients, message) -> int
        the way in for our own components (local delivery's forwards, the list
        manager): ``mta.queue.enqueue`` when this process may write the queue, else
        the queue owner's socket (privilege separation). Raises QueueError either way.

Failures: every failure is a QqError. Connecting fails temporarily (exit 71, the
code qmail-qmqpc uses for "cannot reach the server"); the daemon's own refusal
carries its code; a malformed reply is temporary (81).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from collections.abc import Iterable

from mta.netstring import NetstringDecoder, NetstringError, encode_netstring

__all__ = ["socket_path", "encode_request", "parse_reply", "QqError", "submit_sync",
           "REPLY_LIMIT", "may_write_queue", "inject"]  # and QqClient, by name (__getattr__)

REPLY_LIMIT = 4096
UNREACHABLE = 71


def socket_path(root: str | os.PathLike) -> Path:
    return Path(root) / "queue" / "lock" / "qq.sock"


class QqError(Exception):
    """The queue owner refused the message, or could not be asked."""

    def __init__(self, temporary: bool, text: str, exit_code: int) -> None:
        super().__init__(text)
        self.temporary, self.text, self.exit_code = temporary, text, exit_code


def encode_request(sender: str, recipients: Iterable[str], message: bytes) -> list[bytes]:
    """The request as pieces, so a large message is not copied again."""
    env = [encode_netstring(sender.encode())]
    env += [encode_netstring(r.encode()) for r in recipients]
    inner_len = len(message) + len(str(len(message))) + 2 + sum(map(len, env))
    return [b"%d:%d:" % (inner_len, len(message)), message, b","] + env + [b","]


def parse_reply(payload: bytes) -> int:
    """``K<id>`` -> id; ``Z``/``D`` -> QqError; anything else -> temporary QqError."""
    kind, rest = payload[:1], payload[1:].decode(errors="replace")
    if kind == b"K" and rest.isdigit():
        return int(rest)
    if kind in (b"Z", b"D"):
        code, _, text = rest.partition(" ")
        exit_code = int(code) if code.isdigit() else (81 if kind == b"Z" else 31)
        return _raise(kind == b"Z", text or rest, exit_code)
    return _raise(True, f"bad reply from the queue owner: {payload[:60]!r}", 81)


def _raise(temporary: bool, text: str, code: int) -> int:
    raise QqError(temporary, text, code)


def submit_sync(path: str | os.PathLike, sender: str, recipients: Iterable[str],
                message: bytes, timeout: float = 600.0) -> int:
    """One request over a fresh connection (the qmail-queue shim's way in)."""
    deadline = time.monotonic() + timeout
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:
        raise QqError(True, f"cannot make a socket: {exc}", UNREACHABLE) from exc
    with sock:
        try:
            sock.settimeout(timeout)
            sock.connect(os.fspath(path))
        except OSError as exc:
            raise QqError(True, f"cannot reach the queue owner at {path}: {exc}",
                          UNREACHABLE) from exc
        try:
            sock.sendall(b"".join(encode_request(sender, recipients, message)))
            decoder = NetstringDecoder(REPLY_LIMIT)
            while True:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                data = sock.recv(REPLY_LIMIT)
                if not data:
                    raise QqError(True, "the queue owner closed the connection before"
                                  " answering (the message may be queued)", 81)
                replies = decoder.feed(data)
                if replies:
                    return parse_reply(replies[0])
        except (OSError, NetstringError) as exc:
            raise QqError(True, f"talking to the queue owner: {exc}", 81) from exc


def __getattr__(name: str):
    """``QqClient`` lives in mta.qq_async (asyncio), imported only when asked for: the
    synchronous users of this module (local delivery, ezlist, the qmail-queue shim)
    start a process a message and would pay ~50 ms for asyncio each time."""
    if name == "QqClient":
        from mta.qq_async import QqClient

        return QqClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def may_write_queue(root: str | os.PathLike) -> bool:
    q = Path(root) / "queue"
    return os.access(q / "tmp", os.W_OK) and os.access(q / "queue.db", os.W_OK)


def inject(root: str | os.PathLike, sender: str, recipients: Iterable[str],
           message: bytes) -> int:
    """Queue a message directly when allowed, else through the queue owner's socket."""
    from mta.queue import QueueError, enqueue

    if may_write_queue(root):
        return enqueue(root, sender, recipients, message)
    try:
        return submit_sync(socket_path(root), sender, recipients, message)
    except QqError as e:
        err = QueueError(e.text)
        err.exit_code = e.exit_code  # keeps qmail's permanent/temporary split
        raise err from e
