"""A list in a real instance, driven in-process through ezlist.deliver.run.

``ListEnv(tmp_path, **options)`` inits an mta instance (real queue), makes
``news@lists.local.test``; ``deliver(local, sender, raw)`` runs the dispatcher
with qmail-local's environment and a clock that
advances one second per call (cookies of one second are identical); ``queued()`` returns every message in the real
queue as ``Queued(id, sender, rcpts, body)``; ``take()`` returns the messages
queued since the last call.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from ezlist import deliver, listdir
from ezlist.subscribers import SubscriberDB
from mta.instance import init_instance
from mta.queue import message_path, open_queue

HOST = "lists.local.test"


@dataclass
class Queued:
    id: int
    sender: str
    rcpts: list
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def header(self, name: str) -> str | None:
        head = self.text.split("\n\n", 1)[0]
        m = re.search(rf"^{re.escape(name)}: (.*)$", head, re.M | re.I)
        return m.group(1) if m else None


class ListEnv:
    def __init__(self, tmp_path: Path, name: str = "news", **options) -> None:
        self.root = tmp_path / "inst"
        init_instance(self.root, "mx.local.test")
        self.cfg = listdir.make_list(self.root, f"{name}@{HOST}", listdir.ListOptions(**options))
        self.seen = 0
        self.clock = int(time.time()) - 10_000  # advanced 1 s per delivery


    def deliver(self, local: str, sender: str, raw: bytes = b"Subject: x\n\nbody\n",
                now: int | None = None) -> deliver.Reply:
        if now is None:
            self.clock += 1
            now = self.clock
        env = {"MTA_ROOT": str(self.root), "SENDER": sender, "LOCAL": local, "HOST": HOST,
               "RECIPIENT": f"{local}@{HOST}"}
        return deliver.run(self.cfg.path, env, raw, now)

    def queued(self) -> list[Queued]:
        conn = open_queue(self.root)
        try:
            msgs = conn.execute("SELECT id, sender FROM messages ORDER BY id").fetchall()
            out = []
            for msg_id, sender in msgs:
                rcpts = [r for (r,) in conn.execute(
                    "SELECT addr FROM recipients WHERE msg = ? ORDER BY id", (msg_id,))]
                body = message_path(self.root, msg_id).read_bytes()
                out.append(Queued(msg_id, sender, rcpts, body))
            return out
        finally:
            conn.close()

    def take(self) -> list[Queued]:
        new = [m for m in self.queued() if m.id > self.seen]
        if new:
            self.seen = new[-1].id
        return new

    def db(self) -> SubscriberDB:
        return SubscriberDB(self.cfg.path / "subscribers.db")

    def subscribers(self) -> list[str]:
        with self.db() as db:
            return list(db.iter_addresses())

    def subscribe(self, *addresses: str) -> None:
        with self.db() as db:
            db.add_many(addresses, how="test")


def reply_local(message: Queued) -> str:
    """The local part of a reply's Reply-To address (a cookie address)."""
    reply_to = message.header("Reply-To")
    assert reply_to, f"no Reply-To in:\n{message.text}"
    return reply_to.rpartition("@")[0]
