"""The program dot-qmail runs for a list: ``python -m ezlist.deliver LISTDIR``.

What it does: reads the message on standard input and qmail-local's
environment (SENDER, LOCAL, HOST; MTA_ROOT = the instance root, else the
grandparent of LISTDIR), parses LOCAL with ezlist.addresses and dispatches:

    NAME                      a post: check_post (bounces, loops, size), then
                              subscribers-only and moderation, then ezlist.fanout
                              (or ezlist.moderate.hold_post)
    help, (un)subscribe,
    sc./uc./tc. confirmations,
    unknown words             ezlist.manage
    accept-/reject-           ezlist.moderate (bounce/anonymous senders refused)
    return-...                ezlist.returns
    owner                     refused here: ``.qmail-NAME-owner`` forwards it when
                              the list has an owner

After a post, a command or a moderation, it runs the housekeeping ezmlm runs
from the same dot-qmail files: held posts past ``modtime`` time out
(ezmlm-clean) and due bounce warnings and probes go out (ezmlm-warn,
rate-limited). Housekeeping trouble is reported on stderr but does not fail the
delivery (failing it would make qmail-local deliver the message twice).

Exit codes (qmail-command(8)): 0 done, 99 done and skip later dot-qmail lines,
100 permanent refusal (the one-line reason on stdout becomes the bounce text),
111 temporary trouble (sqlite, file system, queue, unreadable list folder).

Public functions:
    run(list_dir, env, raw, now=None) -> Reply     in-process entry (tests, benchmarks)
    housekeep(cfg, root, now) -> None
    main(argv=None) -> int
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Mapping

from ezlist import fanout, manage, moderate, returns
from ezlist.addresses import Action, Command, parse_command
from ezlist.listdir import ListConfig, ListError, load_list_dir
from ezlist.moderate import Reply
from ezlist.post import check_post
from ezlist.subscribers import SubscriberDB
from mta.queue import QueueError

_MANAGE = frozenset({Action.HELP, Action.SUBSCRIBE, Action.UNSUBSCRIBE,
                     Action.CONFIRM_SUBSCRIBE, Action.CONFIRM_UNSUBSCRIBE,
                     Action.APPROVE_SUBSCRIBE, Action.UNKNOWN})
_RETURNS = frozenset({Action.BOUNCE, Action.BOUNCE_WARN, Action.BOUNCE_PROBE,
                      Action.BOUNCE_TRASH})


def _post(cfg: ListConfig, sender: str, raw: bytes, root: Path, now: int) -> Reply:
    failure = check_post(raw, sender, cfg)
    if failure is not None:
        return Reply(100, failure.reason)
    if cfg.options.subscribers_only:
        with SubscriberDB(cfg.path / "subscribers.db") as db:
            failure = check_post(raw, sender, cfg, db.is_subscriber)
        if failure is not None and not cfg.options.moderated:
            return Reply(100, failure.reason)
    if cfg.options.moderated:
        name = moderate.hold_post(cfg, raw, sender, root, now)
        return Reply(0, f"held for moderation as {name}")
    result = fanout.post_message(cfg, raw, root, now)
    return Reply(0, f"post {result.number} queued as msg {result.msg_id} "
                    f"for {result.recipients} subscribers")


def _moderation(cfg: ListConfig, cmd: Command, sender: str, raw: bytes, root: Path,
                now: int) -> Reply:
    refused = manage.refusal(cfg, sender, raw)
    if refused is not None:
        return refused
    if cmd.action is Action.ACCEPT:
        return moderate.accept(cfg, cmd, root, now)
    return moderate.reject(cfg, cmd, root, now)


def _dispatch(cfg: ListConfig, cmd: Command, env: Mapping[str, str], raw: bytes, root: Path,
              now: int) -> Reply:
    sender = env.get("SENDER", "")
    if cmd.action is Action.POST:
        return _post(cfg, sender, raw, root, now)
    if cmd.action in _RETURNS:
        return returns.handle(cfg, cmd, raw, now)
    if cmd.action in (Action.ACCEPT, Action.REJECT):
        return _moderation(cfg, cmd, sender, raw, root, now)
    if cmd.action in _MANAGE:
        return manage.handle(cfg, cmd, sender, raw, root, now)
    return Reply(100, f"no owner mailbox for {cfg.address} (#5.1.1)")


def housekeep(cfg: ListConfig, root: Path, now: int) -> None:
    """Time out held posts and send due bounce notices; report trouble on stderr."""
    try:
        moderate.expire(cfg, root, now)
        returns.send_due_notices(cfg, root, now)
        fanout.resume_handovers(cfg)
    except (sqlite3.Error, OSError, QueueError) as exc:
        print(f"ezlist: housekeeping for {cfg.address} deferred: {exc}", file=sys.stderr)


def run(list_dir: Path, env: Mapping[str, str], raw: bytes, now: int | None = None) -> Reply:
    """Handle one delivery to the list in ``list_dir`` (see the module docstring)."""
    stamp = int(time.time()) if now is None else now
    list_dir = Path(list_dir)
    root = Path(env.get("MTA_ROOT") or list_dir.parent.parent)
    try:
        cfg = load_list_dir(list_dir)
        cmd = parse_command(cfg.name, env.get("LOCAL", ""))
        if cmd is None:
            return Reply(100, f"{env.get('LOCAL', '')!r} is not an address of "
                              f"{cfg.address} (#5.1.1)")
        reply = _dispatch(cfg, cmd, env, raw, root, stamp)
    except (sqlite3.Error, OSError, QueueError, ListError) as exc:
        return Reply(111, f"temporary failure: {exc} (#4.3.0)")
    if reply.code in (0, 99) and cmd.action not in _RETURNS:
        housekeep(cfg, root, stamp)
    return reply


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ezlist.deliver LISTDIR (#4.3.5)")
        return 111
    try:
        raw = sys.stdin.buffer.read()
    except OSError as exc:
        print(f"cannot read the message: {exc} (#4.3.0)")
        return 111
    reply = run(Path(args[0]), os.environ, raw)
    print(reply.text)
    return reply.code


if __name__ == "__main__":
    sys.exit(main())
