"""Hand list mail to the mta queue: posts fanned out to every subscriber, and replies.

What it does:
``post_message`` distributes an accepted post (ezmlm-send): it takes the next
post number (ezlist.archive, committed before queueing: a crash leaves a gap,
never two posts with one number), edits the header (ezlist.post.prepare_post),
stores the archive copy when the list is archived, then makes ONE call to
``mta.queue.enqueue`` with the VERP sender ``NAME-return-NUM-@HOST-@[]`` and the
subscriber database's address iterator as the recipients: the rows stream from
the list's SQLite file into the queue's, with no per-recipient process, file or
call into the mta. Finally it writes ``sends/NUM`` (JSON: number, queue id,
time, recipient count, subject) for ``ezlist status``. A post with no
subscribers is numbered and archived but queues nothing (queue id 0).

``send_reply`` composes and queues one short text message of the list (help,
confirmation requests, welcome and goodbye, moderation and bounce notices)
with the list's bounce address as envelope sender (``NAME-return-@HOST`` by
default; warnings and probes pass their own VERP-style senders). Replies carry
``Delivered-To: responder for NAME@HOST`` and ``Auto-Submitted: auto-replied``
so that a reply looping back is refused (ezmlm-manage's loop rule).

Public functions:
    post_message(cfg, raw, root, now=None) -> PostResult
    send_reply(cfg, root, to, subject, text, *, sender=None, reply_to=None,
               attach=None, extra_to=()) -> int
    read_send_record(list_dir, number) -> dict | None;  write_send_record(list_dir, record)
    send_numbers(list_dir) -> list[int]
    responder_line(cfg) -> bytes;  header_value(raw, name) -> str

Failures: ``mta.queue.QueueError`` (qmail-queue's failure classes; the caller
maps them to exit 111), ``sqlite3.Error`` and ``OSError`` propagate and mean
"temporary". Nothing is queued when an exception escapes before enqueue returns.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from email.utils import formatdate
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Iterable

from ezlist import addresses, archive, scaleout
from ezlist._fsutil import write_atomic
from ezlist.headers import parse_fields, split_message, values_of
from ezlist.listdir import ListConfig
from ezlist.post import prepare_post
from ezlist.subscribers import SubscriberDB
from mta.qq_client import inject, may_write_queue
from mta.queue import enqueue, open_queue
from mta.rcpt_token import strip_private

SENDS = "sends"
STREAM_BATCH = 20_000  # subscriber rows fetched at a time while streaming into the queue  # per-post records, one JSON file per post number


@dataclass(frozen=True, slots=True)
class PostResult:
    number: int
    msg_id: int  # mta queue id; 0 when nothing was queued here (no subscribers, handover)
    recipients: int
    handover: str | None = None  # scale-out: "done", "pending" or "refused: WHY"


def responder_line(cfg: ListConfig) -> bytes:
    """The Delivered-To field value our replies carry (and refuse to see again)."""
    return f"responder for {cfg.address}".encode()


def _subject(raw: bytes) -> str:
    header, _, _ = split_message(raw)
    values = values_of(parse_fields(header), b"subject")
    return values[0].decode("utf-8", "replace")[:200] if values else ""


def post_message(cfg: ListConfig, raw: bytes, root: Path, now: int | None = None) -> PostResult:
    """Number, edit, archive and queue an accepted post for every subscriber."""
    stamp = int(time.time()) if now is None else now
    number = archive.next_number(cfg.path, len(raw))
    message = prepare_post(raw, cfg, number)
    if cfg.options.archived:
        archive.archive_post(cfg.path, number, strip_private(message))  # no post key
    sender = addresses.post_sender(cfg.name, cfg.host, number)
    servers = scaleout.read_servers(cfg.path)
    handover = None
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        msg_id = count = 0
        if db.conn.execute("SELECT 1 FROM subscribers LIMIT 1").fetchone():  # not count(*)
            # C-level iteration over fetchmany batches: no Python frame per row
            stream = map(itemgetter(0), chain.from_iterable(db.iter_batches(STREAM_BATCH)))
            if servers:
                handover = _hand_over(cfg, number, servers, sender, stream, message)
                count = db.count()
            elif may_write_queue(root):
                conn = open_queue(root)
                try:
                    msg_id = enqueue(root, sender, stream, message, conn=conn)
                    row = conn.execute("SELECT nrcpt FROM messages WHERE id = ?",
                                       (msg_id,)).fetchone()
                    count = row[0] if row else db.count()  # None: delivered and removed
                finally:
                    conn.close()
            else:  # privilege separation: through the queue owner's socket
                msg_id = inject(root, sender, list(stream), message)
                count = db.count()
    record = {"number": number, "msg_id": msg_id, "queued": stamp,
              "recipients": count, "subject": _subject(message), "bytes": len(message)}
    if handover is not None:
        record["handover"] = handover
    (cfg.path / SENDS).mkdir(exist_ok=True)
    write_atomic(cfg.path / SENDS / str(number), json.dumps(record).encode() + b"\n")
    return PostResult(number, msg_id, count, handover)


def _hand_over(cfg: ListConfig, number: int, servers, sender: str, stream,
               message: bytes) -> str:
    """Scale-out (lists/NAME/qmqpservers): parts to the delivery machines by QMQP.

    The prepared post is kept in ``sends/NUM.eml`` so parts no machine took now
    can be handed over later (``resume_handovers``); returns "done", "pending", or
    "refused: WHY" when a machine refused a part permanently (shown by ezlist status).
    """
    (cfg.path / SENDS).mkdir(exist_ok=True)
    write_atomic(cfg.path / SENDS / f"{number}.eml", message)
    try:
        scaleout.distribute(cfg.path, number, servers, sender, stream, message)
    except scaleout.ScaleoutError as e:
        return f"refused: {e}" if e.permanent else "pending"
    return "done"


def resume_handovers(cfg: ListConfig) -> int:
    """Hand over the parts of earlier posts that no delivery machine took; count done."""
    servers = scaleout.read_servers(cfg.path)
    done = 0
    for number in send_numbers(cfg.path):
        record = read_send_record(cfg.path, number)
        if not servers or not record or record.get("handover") != "pending":
            continue
        message = (cfg.path / SENDS / f"{number}.eml").read_bytes()
        sender = addresses.post_sender(cfg.name, cfg.host, number)
        with SubscriberDB(cfg.path / "subscribers.db") as db:
            stream = map(itemgetter(0), chain.from_iterable(db.iter_batches(STREAM_BATCH)))
            try:
                scaleout.distribute(cfg.path, number, servers, sender, stream, message)
            except scaleout.ScaleoutError:
                continue
        record["handover"] = "done"
        write_send_record(cfg.path, record)
        done += 1
    return done


def read_send_record(list_dir: Path, number: int) -> dict | None:
    path = Path(list_dir) / SENDS / str(number)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def write_send_record(list_dir: Path, record: dict) -> None:
    path = Path(list_dir) / SENDS / str(record["number"])
    write_atomic(path, json.dumps(record).encode() + b"\n")


def send_numbers(list_dir: Path) -> list[int]:
    """Post numbers that have a send record, ascending."""
    folder = Path(list_dir) / SENDS
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _clean(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def send_reply(cfg: ListConfig, root: Path, to: str, subject: str, text: str, *,
               sender: str | None = None, reply_to: str | None = None,
               attach: bytes | None = None, extra_to: Iterable[str] = ()) -> int:
    """Queue one reply of the list to ``to`` (and ``extra_to``); returns the queue id.

    ``attach`` (a message) is appended below a separator line, as ezmlm quotes
    the request or the held post.
    """
    if sender is None:
        sender = addresses.trash_sender(cfg.name, cfg.host)
    recipients = [to, *extra_to]
    body = text if text.endswith("\n") else text + "\n"
    if attach is not None:
        body += "\n--- the message follows ---\n\n"
    payload = body.encode("utf-8")
    charset = "7bit" if payload.isascii() else "8bit"
    if attach is not None:
        charset = "8bit"
        payload += attach.replace(b"\r\n", b"\n")
    lines = [
        f"Delivered-To: {responder_line(cfg).decode()}",
        f"Mailing-List: contact {cfg.name}-help@{cfg.host}; run by ezlist",
        f"Date: {formatdate(localtime=False)}",
        f"Message-ID: <{time.time_ns()}.{os.getpid()}.ezlist@{cfg.host}>",
        f"From: {cfg.name}-help@{cfg.host}",
        f"To: {_clean(', '.join(recipients))}",
        f"Subject: {_clean(subject)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Transfer-Encoding: {charset}",
    ]
    if reply_to:
        lines.insert(6, f"Reply-To: {_clean(reply_to)}")
    message = ("\n".join(lines) + "\n\n").encode("utf-8") + payload
    return inject(root, sender, recipients, message)


def header_value(raw: bytes, name: bytes) -> str:
    """The first ``name`` field of ``raw``, unfolded, or ''."""
    header, _, _ = split_message(raw)
    values = values_of(parse_fields(header), name)
    return values[0].decode("utf-8", "replace") if values else ""


__all__ = ["PostResult", "post_message", "send_reply", "resume_handovers", "read_send_record",
           "write_send_record", "send_numbers", "responder_line", "header_value"]
