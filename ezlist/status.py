"""Progress and results of a list send, from the mta queue and its delivery log.

What it does: a post's record ``sends/NUM`` (ezlist.fanout) names its queue id.
While the message is in the queue, ``send_status`` counts its recipient rows
by state (mta.queue.message_counts) and groups the failed rows by receiving
domain and reason (the ``text`` column). Once the mta has removed the message,
the results come from ``log/send`` (qmail-send's log lines: ``starting delivery
D: msg N to remote ADDR`` then ``delivery D: success|deferral|failure: TEXT``;
the last result per address wins, and delivery numbers restart with each
scheduler run, so the file is read in order); that summary is then saved in
the record (``final``) so it survives log rotation.

Public:
    Progress, SendStatus (frozen dataclasses)
    progress(root, msg_id) -> Progress | None      None: the message left the queue
    send_status(cfg, root, number=None) -> SendStatus | None   latest post by default
    format_status(status) -> str

Failures: a missing queue or log yields zero counts, never an exception;
``sqlite3.Error`` from a locked queue propagates.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ezlist import fanout
from ezlist.listdir import ListConfig
from mta.queue import open_queue
from mta.queue.errors import QueueError

_START = re.compile(r"starting delivery (\d+): msg (\d+) to \w+ (\S+)")
_RESULT = re.compile(r"delivery (\d+): (success|deferral|failure): (.*)")
REASON_CHARS = 120


@dataclass(frozen=True, slots=True)
class Progress:
    total: int
    pending: int
    deferred: int
    delivered: int
    failed: int

    @property
    def attempted_all(self) -> bool:
        """Every recipient was tried at least once (deferred ones retry later)."""
        return self.pending == 0


@dataclass(frozen=True, slots=True)
class SendStatus:
    number: int
    msg_id: int
    subject: str
    queued: int
    in_queue: bool
    progress: Progress
    # ((domain, reason), count), most frequent first
    failures: tuple[tuple[tuple[str, str], int], ...] = field(default=())
    parts: tuple[str, ...] = ()  # scale-out: one line per delivery machine's part


def progress(root: Path, msg_id: int) -> Progress | None:
    """Counts of a queued message's recipients; None when it is no longer queued."""
    if not msg_id:
        return None
    try:
        conn = open_queue(root, create=False)
    except QueueError:
        return None
    try:
        row = conn.execute("SELECT nrcpt FROM messages WHERE id = ?", (msg_id,)).fetchone()
        if row is None:
            return None
        counts = Counter()
        for state, n in conn.execute(
                "SELECT state, count(*) FROM recipients WHERE msg = ? GROUP BY state", (msg_id,)):
            counts[min(state, 3)] += n
    finally:
        conn.close()
    return Progress(row[0], counts[0], counts[1], counts[2], counts[3])


def _queue_failures(root: Path, msg_id: int) -> Counter:
    conn = open_queue(root, create=False)
    try:
        rows = conn.execute("SELECT domain, coalesce(text, ''), count(*) FROM recipients "
                            "WHERE msg = ? AND state >= 3 GROUP BY domain, text", (msg_id,))
        return Counter({(d, _reason(t)): n for d, t, n in rows})
    finally:
        conn.close()


def _reason(text: str) -> str:
    return text.strip().rstrip("/").strip()[:REASON_CHARS]


def _from_log(root: Path, msg_id: int) -> tuple[Counter, Counter]:
    """(outcome counts, failures by (domain, reason)) for ``msg_id`` from log/send."""
    path = Path(root) / "log" / "send"
    started: dict[str, str] = {}
    final: dict[str, tuple[str, str]] = {}
    wanted = str(msg_id)
    if path.exists():
        with open(path, encoding="ascii", errors="replace") as log:
            for line in log:
                if (m := _START.search(line)) is not None:
                    if m.group(2) == wanted:
                        started[m.group(1)] = m.group(3)
                    else:
                        started.pop(m.group(1), None)
                elif (m := _RESULT.search(line)) is not None and m.group(1) in started:
                    final[started.pop(m.group(1))] = (m.group(2), m.group(3))
    outcomes = Counter(kind for kind, _ in final.values())
    failures = Counter((addr.rpartition("@")[2].lower(), _reason(text))
                       for addr, (kind, text) in final.items() if kind == "failure")
    return outcomes, failures


def _finished(cfg: ListConfig, root: Path, record: dict) -> SendStatus:
    final = record.get("final")
    if final is None:
        outcomes, failures = _from_log(root, record["msg_id"])
        final = {"delivered": outcomes["success"], "failed": outcomes["failure"],
                 "deferred": outcomes["deferral"],
                 "failures": [[d, r, n] for (d, r), n in failures.most_common()]}
        if record["msg_id"]:
            fanout.write_send_record(cfg.path, dict(record, final=final))
    prog = Progress(record.get("recipients", 0), 0, final["deferred"], final["delivered"],
                    final["failed"])
    failures = tuple(((d, r), n) for d, r, n in final["failures"])
    return SendStatus(record["number"], record["msg_id"], record.get("subject", ""),
                      record.get("queued", 0), False, prog, failures)


def send_status(cfg: ListConfig, root: Path, number: int | None = None) -> SendStatus | None:
    """Status of post ``number`` (default: the latest one with a record)."""
    if number is None:
        numbers = fanout.send_numbers(cfg.path)
        if not numbers:
            return None
        number = numbers[-1]
    record = fanout.read_send_record(cfg.path, number)
    if record is None:
        return None
    if "handover" in record:
        return _remote_status(cfg, record)
    prog = progress(root, record["msg_id"])
    if prog is None:
        return _finished(cfg, root, record)
    failures = tuple(_queue_failures(root, record["msg_id"]).most_common())
    return SendStatus(number, record["msg_id"], record.get("subject", ""),
                      record.get("queued", 0), True, prog, failures)


def _remote_status(cfg: ListConfig, record: dict) -> SendStatus:
    """A scaled-out post: the sum of what the delivery machines report (mta.progress)."""
    from ezlist import scaleout

    got = scaleout.progress(cfg.path, record["number"])
    pending = got["pending"] + got["not_handed_over"]
    prog = Progress(record.get("recipients", 0), pending, got["deferred"], got["delivered"],
                    got["failed"])
    failures: Counter = Counter()
    for part in got["parts"]:
        for domain, reason, n in part.get("failures", ()):
            failures[(domain, _reason(reason))] += n
    running = any(p.get("state") != "finished" for p in got["parts"] if p.get("state") != "empty")
    return SendStatus(record["number"], 0, record.get("subject", ""), record.get("queued", 0),
                      running, prog, tuple(failures.most_common()),
                      tuple(_part_line(p) for p in got["parts"]))


def _part_line(p: dict) -> str:
    server = p.get("server") or {}
    where = f"{server.get('host', '-')}:{server.get('port', '-')}"
    counts = ", ".join(f"{k} {p[k]}" for k in ("delivered", "deferred", "failed", "pending")
                       if k in p)
    return f"part {p['bucket']} at {where}: {p.get('state')}" + (f" ({counts})" if counts else "")


def format_status(status: SendStatus) -> str:
    p = status.progress
    state = "running" if status.in_queue else "finished"
    lines = [f"post {status.number} (queue msg {status.msg_id}) {state}: {status.subject}",
             f"  recipients {p.total}: delivered {p.delivered}, deferred {p.deferred}, "
             f"failed {p.failed}, pending {p.pending}"]
    lines += [f"  {line}" for line in status.parts]
    if status.failures:
        lines.append("  failures by domain and reason:")
        lines += [f"    {n:>7}  {domain}  {reason}" for (domain, reason), n in status.failures]
    return "\n".join(lines)
