"""Bounces coming back to a list, and the warnings and probes they lead to.

What it does (ezmlm-weed + ezmlm-return + ezmlm-warn, qmail-ezmlm.md 2.4):
``handle`` takes mail to a ``L-return-...`` address. Success, delay and
auto-reply notices are dropped first (ezlist.bounceparse.is_ignorable, exit 99).
Then, by address form (ezlist.addresses):

    L-return-NUM-box=dom@   post NUM bounced at box@dom: BounceBook.record_bounce
    L-return-NUM-@          a bounce without VERP: every failed address that
                            bounceparse finds (QSBMF, DSN) is recorded for NUM
    L-return-@              one of our replies bounced: parsed the same way
                            (number unknown); bounces for non-subscribers of
                            confirmations and help are ignored by the book (LS9)
    L-return-warn-TOKEN-T@  our warning to T bounced (cookie checked by the book)
    L-return-probe-TOKEN-T@ our probe to T bounced: T is removed

A distribution bounce is only recorded, never acted on, so forged bounces lead
at most to a warning sent to the subscriber (LS7); the book ignores addresses
that are not subscribed (LS9).

``send_due_notices`` is ezmlm-warn: at most once every ``bounce_timeout/50``
seconds (file ``bounce-lastd``) it advances the bounce state machine and queues
each warning (sender ``L-return-warn-TOKEN-box=dom@H``) and probe (sender
``L-return-probe-...``) that is due, so that their bounces come back here.

Public functions:
    handle(cfg, cmd, raw, now) -> Reply
    send_due_notices(cfg, root, now, force=False) -> int     notices queued
    open_book(cfg, db) -> BounceBook

Failures: ``sqlite3.Error``, ``OSError`` and ``mta.queue.QueueError``
propagate (the caller exits 111); hostile bounces are answered with a Reply.
"""

from __future__ import annotations

from pathlib import Path

from ezlist import addresses, bounceparse, fanout, templates
from ezlist._fsutil import write_atomic
from ezlist.addresses import Action, Command
from ezlist.bounces import BounceBook
from ezlist.listdir import ListConfig, read_key
from ezlist.moderate import Reply
from ezlist.subscribers import SubscriberDB

TEXT_BYTES = 4000  # of a bounce kept as its text
LASTD = "bounce-lastd"


def open_book(cfg: ListConfig, db: SubscriberDB) -> BounceBook:
    o = cfg.options
    return BounceBook(db, read_key(cfg.path), cfg.address, o.bounce_threshold, o.bounce_timeout)


def _text(raw: bytes) -> str:
    return raw[:TEXT_BYTES].decode("utf-8", "replace")


def handle(cfg: ListConfig, cmd: Command, raw: bytes, now: int) -> Reply:
    """Record one bounce message (see the module docstring)."""
    if bounceparse.is_ignorable(raw):
        return Reply(99, "not a failure report: ignored")
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        book = open_book(cfg, db)
        action, target, text = cmd.action, cmd.target, _text(raw)
        if action is Action.BOUNCE_PROBE and target and cmd.token:
            if book.record_probe_bounce(target, cmd.token, text, now):
                return Reply(99, f"probe bounced: {target} removed")
            return Reply(99, "probe bounce not current: ignored")
        if action is Action.BOUNCE_WARN and target and cmd.token:
            ok = book.record_warn_bounce(target, cmd.token, text, now)
            return Reply(99, "warning bounce recorded" if ok else "warning bounce ignored")
        if action is Action.BOUNCE and target:
            ok = book.record_bounce(target, cmd.number, text, now)
            return Reply(99, f"bounce recorded for {target}" if ok else "not a subscriber: ignored")
        if action in (Action.BOUNCE, Action.BOUNCE_TRASH):
            failed = bounceparse.failed_addresses(raw)
            recorded = sum(book.record_bounce(a, cmd.number, text, now) for a in failed)
            return Reply(99, f"bounce parsed: {recorded} of {len(failed)} addresses recorded")
    return Reply(99, "unknown return address: ignored")


def _due(cfg: ListConfig, now: int) -> bool:
    path = Path(cfg.path) / LASTD
    text = path.read_text("ascii").strip() if path.exists() else ""
    last = int(text) if text.isdigit() else 0
    return now - last >= cfg.options.bounce_timeout // 50 or last > now


def send_due_notices(cfg: ListConfig, root: Path, now: int, force: bool = False) -> int:
    """Queue the warnings and probes that are due (rate-limited unless ``force``)."""
    if not force and not _due(cfg, now):
        return 0
    write_atomic(Path(cfg.path) / LASTD, f"{now}\n".encode())
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        notices = open_book(cfg, db).take_due_notices(now)
    for notice in notices:
        numbers = " ".join(str(n) for n in notice.numbers) or "(unknown)"
        if notice.kind == "warn":
            sender = addresses.warn_address(cfg.name, cfg.host, notice.token, notice.address)
            name, subject = "bounce-warn", f"WARNING: mail from {cfg.address} bounces"
        else:
            sender = addresses.probe_address(cfg.name, cfg.host, notice.token, notice.address)
            name, subject = "bounce-probe", f"PROBE: mail from {cfg.address} bounces"
        text = templates.render(cfg.path, name, A=notice.address, N=numbers)
        fanout.send_reply(cfg, root, notice.address, subject, text, sender=sender)
    return len(notices)
