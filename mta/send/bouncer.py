"""Reporting failed recipients: bounces, double bounces, triple-bounce discards.

``Bouncer.report(info, only=None)`` takes the failed, not yet reported recipients of
a message (all of them, or the ids in ``only``), groups them by where their bounce
goes (``mta.bounce.bounce_recipient``: the sender; a VERPed sender's per-recipient
address; the postmaster for a failed bounce), injects one bounce per group through
the queue, and marks them reported (state 4). Injection happens before the mark:
a crash in between sends the bounce twice, never zero times.

A failed double bounce (sender ``#@[]``) is dropped and logged as qmail does
("triple bounce: discarding").

``Bouncer.finish(infos)`` ends messages with nothing left to try: each one's
failures are reported, then every reported message is removed in one transaction
(``mta.queue.remove_messages``: one WAL flush for the group, not one a message).
A bounce that cannot be queued (disk full, a broken queue folder) is logged as
qmail-send does ("trouble injecting bounce message, will try later") and its
message stays queued, its failures unreported; ``finish`` returns the ids that
were removed so the caller can try the others again later.
"""

from __future__ import annotations

import os
import sqlite3
from collections import defaultdict
from pathlib import Path

from mta.bounce import DOUBLE_BOUNCE_SENDER, Failure, bounce_recipient, build_bounce
from mta.queue import QueueError, enqueue, message_path, remove_messages
from mta.send import store
from mta.status import enhanced_status

__all__ = ["Bouncer"]

REMOTE_SAID = "Remote host said: "  # mta.smtp.client's prefix for the peer's reply


class Bouncer:
    def __init__(self, root: Path, ctl, conn, log):
        self.root, self.ctl, self.conn, self.log = Path(root), ctl, conn, log

    def report(self, info: store.MessageInfo, only: set[int] | None = None) -> None:
        rows = store.failed_unreported(self.conn, info.msg_id)
        if only is not None:
            rows = [r for r in rows if r[0] in only]
        if not rows:
            return
        groups: dict[tuple[str, str] | None, list] = defaultdict(list)
        ctl = self.ctl
        double = f"{ctl.doublebounceto}@{ctl.doublebouncehost}"
        for rid, addr, text in rows:
            groups[bounce_recipient(info.sender, addr, double)].append((rid, addr, text))
        original = self._original(info.msg_id)
        for target, failed in groups.items():
            if target is None:
                self.log.triple_bounce(info.msg_id)
            else:
                self._send(info, target, failed, original)
        store.mark_reported(self.conn, [r[0] for r in rows])

    def _original(self, msg_id: int) -> bytes:
        try:
            return message_path(self.root, msg_id).read_bytes()
        except OSError as e:
            self.log.line(f"warning: unable to read message {msg_id} for its bounce: {e}")
            return b""

    def _send(self, info, target: tuple[str, str], failed: list, original: bytes) -> None:
        bsender, brcpt = target
        ctl = self.ctl
        failures = [Failure(addr, text, _dsn(text)) for _, addr, text in failed]
        message = build_bounce(original=original, sender=info.sender, failures=failures,
                               me=ctl.me, bouncefrom=ctl.bouncefrom, bouncehost=ctl.bouncehost,
                               to=brcpt, double=bsender == DOUBLE_BOUNCE_SENDER,
                               fmt=ctl.bounceformat)
        enqueue(self.root, bsender, [brcpt], message)
        self.log.bounce(info.msg_id, os.getpid())

    def try_report(self, info: store.MessageInfo, only: set[int] | None = None) -> bool:
        """``report``, logging a bounce that could not be queued; True if all went."""
        try:
            self.report(info, only)
        except (QueueError, OSError, sqlite3.Error) as e:  # sqlite: marking them reported
            self.log.line(f"warning: trouble injecting bounce message for msg {info.msg_id}:"
                          f" {e}; will try later")
            return False
        return True

    def finish(self, infos: list[store.MessageInfo]) -> list[int]:
        """Report and remove finished messages; return the ids removed."""
        done = [info.msg_id for info in infos if self.try_report(info)]
        try:
            remove_messages(self.root, self.conn, done)
        except (sqlite3.Error, OSError) as e:
            self.log.line(f"warning: trouble removing {len(done)} finished messages: {e};"
                          " will try later")
            return []
        return done


def _dsn(text: str) -> str:
    """The enhanced status code a failure text carries, else 5.0.0.

    Ours and qmail's texts end in ``(#5.1.1)``; a remote refusal carries the peer's
    reply after ``Remote host said:`` (``550 5.1.1 no such user``), whose RFC 3463
    code is used when it is permanent (the queue keeps the text, not the code).
    """
    i = text.rfind("(#5.")
    if i >= 0 and text.find(")", i) > i:
        return text[i + 2:text.find(")", i)]
    j = text.rfind(REMOTE_SAID)
    found = enhanced_status(text[j + len(REMOTE_SAID):]) if j >= 0 else None
    return found if found and found[0] == "5" else "5.0.0"
