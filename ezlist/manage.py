"""Email commands of a list: help, subscribe and unsubscribe with double opt-in.

What it does (ezmlm-manage, qmail-ezmlm.md 2.2-2.3), for a Command from
ezlist.addresses and the envelope sender:

    L-help@                   help text to the sender
    L-subscribe[-box=dom]@    a confirmation request with an ``sc.`` cookie address,
                              sent to the TARGET only (the sender when no target);
                              the requester gets nothing (LS1)
    L-unsubscribe[-T]@        likewise with a ``uc.`` cookie (LS5)
    L-sc.TIME.MAC-T@          cookie good: subscribe T, welcome text (``sub-ok``), or
                              ``sub-nop`` if already there; on a subscription-moderated
                              list the moderators get a ``tc.`` request instead
    L-tc.TIME.MAC-T@          a moderator approves: subscribe T, welcome to T
    L-uc.TIME.MAC-T@          cookie good: unsubscribe T, goodbye (``unsub-ok``) or
                              ``unsub-nop``
    anything else under L-    help text to the sender, nothing changes

A forged, altered, foreign, expired, future or replayed cookie changes nothing
and the target gets a fresh confirmation request (``sub-bad`` / ``unsub-bad``;
LS2, LS3); single use is enforced by SubscriberDB.apply_confirmed. Requests from
a bounce sender (``<>``, ``#@[]``) or an anonymous one (no ``@``), and messages
that carry our ``Mailing-List:`` or ``Delivered-To: responder for L@H`` field,
are refused with exit 100 and no reply (LS6, ezmlm ERR_BOUNCE/ERR_ANONYMOUS and
its loop rule). A private list (no ``public`` file) answers only help and
moderator approvals. Every reply goes through the queue with the sender
``L-return-@H`` (ezlist.fanout.send_reply).

Public functions:
    refusal(cfg, sender, raw) -> Reply | None
    handle(cfg, cmd, sender, raw, root, now) -> Reply

Failures: hostile input gives a Reply (exit 100 for refusals, 0 when answered);
``sqlite3.Error``, ``OSError``, ``mta.queue.QueueError`` propagate (exit 111).
"""

from __future__ import annotations

from pathlib import Path

from ezlist import addresses, cookies, fanout, templates
from ezlist.addresses import Action, Command
from ezlist.headers import parse_fields, split_message, values_of
from ezlist.listdir import ListConfig, read_key
from ezlist.moderate import Reply, read_moderators
from ezlist.subscribers import Confirmation, SubscriberDB, normalize_address

_KIND = {Action.SUBSCRIBE: "sc", Action.UNSUBSCRIBE: "uc",
         Action.CONFIRM_SUBSCRIBE: "sc", Action.CONFIRM_UNSUBSCRIBE: "uc"}
_WORD = {"sc": "subscribe", "uc": "unsubscribe", "tc": "subscribe"}


def refusal(cfg: ListConfig, sender: str, raw: bytes) -> Reply | None:
    """Why a command message gets no answer at all, or None (ezmlm-manage's checks)."""
    if sender in ("", "#@[]"):
        return Reply(100, "I do not reply to bounce messages (#5.7.2)")
    if "@" not in sender:
        return Reply(100, "I do not reply to anonymous senders (#5.7.2)")
    fields = parse_fields(split_message(raw)[0])
    mine = fanout.responder_line(cfg).lower()
    if any(v.lower() == mine for v in values_of(fields, b"delivered-to")):
        return Reply(100, "this message is looping: it already has my Delivered-To line (#5.4.6)")
    if values_of(fields, b"mailing-list"):
        return Reply(100, "I do not answer messages from mailing lists (#5.7.2)")
    return None


def _wrap(cfg: ListConfig, *parts: str) -> str:
    return templates.render(cfg.path, "top") + "".join(parts) + templates.render(cfg.path, "bottom")


def _send_help(cfg: ListConfig, root: Path, to: str) -> Reply:
    fanout.send_reply(cfg, root, to, f"help for {cfg.address}",
                      _wrap(cfg, templates.render(cfg.path, "help")))
    return Reply(0, f"help sent to {to}")


def _confirm_text(cfg: ListConfig, kind: str, target: str, now: int) -> tuple[str, str]:
    """(reply address, request text) for a fresh ``sc``/``uc`` confirmation of ``target``."""
    token = cookies.make_cookie(read_key(cfg.path), cfg.address, kind, target, now)
    reply = addresses.confirm_address(cfg.name, cfg.host, kind, token, target)
    name = "sub-confirm" if kind == "sc" else "unsub-confirm"
    return reply, templates.render(cfg.path, name, A=target, R=reply)


def _send_confirmation(cfg: ListConfig, root: Path, kind: str, target: str, now: int,
                       bad: bool = False) -> Reply:
    reply, text = _confirm_text(cfg, kind, target, now)
    if bad:
        bad_name = "sub-bad" if kind == "sc" else "unsub-bad"
        text = templates.render(cfg.path, bad_name, A=target, R=reply) + "\n" + text
    fanout.send_reply(cfg, root, target, f"confirm {_WORD[kind]} to {cfg.address}",
                      _wrap(cfg, text), reply_to=reply)
    return Reply(0, f"{_WORD[kind]} confirmation sent to {target}")


def _request(cfg: ListConfig, cmd: Command, sender: str, root: Path, now: int) -> Reply:
    target = normalize_address(cmd.target or sender)
    if target is None:
        return Reply(100, f"cannot use that address: {cmd.target or sender!r} (#5.1.3)")
    return _send_confirmation(cfg, root, _KIND[cmd.action], target, now)


def _notify(cfg: ListConfig, root: Path, target: str, subject: str, name: str) -> None:
    fanout.send_reply(cfg, root, target, subject,
                      _wrap(cfg, templates.render(cfg.path, name, A=target)))


def _ask_moderators(cfg: ListConfig, root: Path, target: str, now: int) -> Reply:
    moderators = read_moderators(cfg.path) or ([cfg.options.owner] if cfg.options.owner else [])
    if not moderators:
        return Reply(111, "subscriptions need a moderator and this list has none (#4.3.5)")
    token = cookies.make_cookie(read_key(cfg.path), cfg.address, "tc", target, now)
    reply = addresses.confirm_address(cfg.name, cfg.host, "tc", token, target)
    fanout.send_reply(cfg, root, moderators[0], f"CONFIRM subscribe to {cfg.address}",
                      templates.render(cfg.path, "mod-sub", A=target, R=reply),
                      reply_to=reply, extra_to=moderators[1:])
    return Reply(0, f"subscription of {target} sent to the moderators")


def _confirm(cfg: ListConfig, cmd: Command, root: Path, now: int) -> Reply:
    kind = cmd.action.value  # "sc", "uc" or "tc"
    target = cmd.target or ""
    key = read_key(cfg.path)
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        if kind == "sc" and cfg.options.moderate_subscriptions:
            if db.redeem_cookie(key, cfg.address, kind, target, cmd.token or "", now):
                return _ask_moderators(cfg, root, target, now)
            outcome = Confirmation.REFUSED
        else:
            outcome = db.apply_confirmed(key, cfg.address, kind, target, cmd.token or "",
                                         f"mail {kind}", now)
    if outcome is Confirmation.REFUSED:
        if kind == "tc":
            return Reply(100, "this approval address is not valid or has expired (#5.7.1)")
        return _send_confirmation(cfg, root, kind, target, now, bad=True)
    adding = kind in ("sc", "tc")
    if outcome is Confirmation.APPLIED:
        name, subject = (("sub-ok", f"WELCOME to {cfg.address}") if adding
                         else ("unsub-ok", f"GOODBYE from {cfg.address}"))
    else:
        name = "sub-nop" if adding else "unsub-nop"
        subject = f"{_WORD[kind]} to {cfg.address}: nothing to do"
    _notify(cfg, root, target, subject, name)
    return Reply(0, f"{_WORD[kind]} {target}: {outcome.value}")


def handle(cfg: ListConfig, cmd: Command, sender: str, raw: bytes, root: Path,
           now: int) -> Reply:
    """Answer one command message (see the module docstring)."""
    refused = refusal(cfg, sender, raw)
    if refused is not None:
        return refused
    action = cmd.action
    if not cfg.options.public and action not in (Action.HELP, Action.APPROVE_SUBSCRIBE):
        return Reply(100, f"{cfg.address} is a private list: ask its owner (#5.7.2)")
    if action in (Action.SUBSCRIBE, Action.UNSUBSCRIBE):
        return _request(cfg, cmd, sender, root, now)
    if action in (Action.CONFIRM_SUBSCRIBE, Action.CONFIRM_UNSUBSCRIBE,
                  Action.APPROVE_SUBSCRIBE):
        return _confirm(cfg, cmd, root, now)
    return _send_help(cfg, root, sender)  # help, and any unknown command
