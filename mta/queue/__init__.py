"""mta.queue: the durable queue (qmail-queue + qmail-clean).

One body file per message (queue/mess/<id>), one SQLite row per recipient
(queue/queue.db, WAL, synchronous=FULL). A message exists for the scheduler once
its transaction commits; see inject.py for the theory of operation and store.py
for the schema and the recipient states.

Public names:
    open_queue(root, *, create=True) -> sqlite3.Connection
    message_path(root, msg_id) -> Path
    enqueue(root, sender, recipients, message, *, received=None, conn=None) -> int
    write_body / commit_body / PendingBody    the two halves of enqueue (the shim
                                              reads the message before the envelope)
    qmail_received(pid, uid, when) -> bytes
    enqueue_batch(root, items, *, conn, pool=None) -> [id | QueueError], BatchItem
                                              group commit (batch.py)
    remove_message(root, conn, msg_id), remove_messages(root, conn, msg_ids)
    clean_queue(root) -> int
    poke_trigger(root), open_trigger(root) -> fd, drain_trigger(fd) -> int
    read_envelope(read) -> (sender, recipients iterator)
    message_counts, top_domains, queue_summary, queue_totals, MessageSummary
    PENDING, DEFERRED, DELIVERED, FAILED, BOUNCED (recipient states)
    QueueError and its subclasses (errors.py), each with qmail's ``exit_code``
"""

from mta.queue.errors import (
    ADDRESS_LIMIT, AddressTooLong, EnvelopeFormatError, HomeError, MessDirError,
    OutOfMemory, QueueDirError, QueueError, QueueTimeout, ReadError, WriteError,
)
from mta.queue.store import (
    BOUNCED, DEFERRED, DELIVERED, FAILED, PENDING, message_path, open_queue,
)
from mta.queue.trigger import drain_trigger, open_trigger, poke_trigger, trigger_path
from mta.queue.envelope import read_envelope
from mta.queue.inject import PendingBody, commit_body, enqueue, qmail_received, write_body
from mta.queue.clean import clean_queue, remove_message, remove_messages
from mta.queue.batch import BatchItem, enqueue_batch

_SUMMARY = frozenset({"MessageSummary", "message_counts", "queue_summary", "queue_totals",
                      "top_domains"})


def __getattr__(name: str):
    # summary.py (dataclasses, ~10 ms of imports) is loaded on first use: the
    # qmail-queue shim imports this package once per injection and never needs it.
    if name in _SUMMARY:
        from mta.queue import summary
        return getattr(summary, name)
    raise AttributeError(f"module 'mta.queue' has no attribute {name!r}")

__all__ = [
    "ADDRESS_LIMIT", "AddressTooLong", "EnvelopeFormatError", "HomeError", "MessDirError",
    "OutOfMemory", "QueueDirError", "QueueError", "QueueTimeout", "ReadError", "WriteError",
    "BOUNCED", "DEFERRED", "DELIVERED", "FAILED", "PENDING", "message_path", "open_queue",
    "drain_trigger", "open_trigger", "poke_trigger", "trigger_path", "read_envelope",
    "PendingBody", "commit_body", "enqueue", "qmail_received", "write_body",
    "clean_queue", "remove_message", "remove_messages", "BatchItem", "enqueue_batch",
    "MessageSummary", "message_counts", "queue_summary", "queue_totals", "top_domains",
]
