"""The ``ezlist`` command: make and edit lists, manage subscribers, send and watch posts.

Every subcommand finds its instance from ``--root DIR``, else ``$MTA_ROOT``,
else ``./var`` (as ``mta`` does). Run by root on an instance with per-role users, it
first becomes the local user (``control/users``), who owns ``alias/`` and ``lists/``. Errors are printed on stderr with exit 100
for a permanent problem (bad input, no such list) and 111 for a temporary one
(database locked, disk trouble, queue refused), qmail's convention.

Subcommands: make, edit, sub, unsub, list, count, send, status, bounces,
moderators, moderate-expire, oneclick (the CGI program behind
``--unsubscribe-url``). ``sub`` and ``unsub`` read one address a line from standard input when no address is given (streamed: a million lines fit).
``send`` posts a message file as mail to NAME@ would (headers, archive, VERP;
the admin's post skips moderation and the subscribers-only check), then shows
delivered / deferred / failed counts, rate and ETA until every recipient has
been tried (``--no-wait``: return at once).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path

import click

from ezlist import fanout, listdir, moderate, oneclick_web, returns, status
from ezlist.post import check_post
from ezlist.subscribers import SubscriberDB
from mta.instance import find_root
from mta.privsep import PrivsepError, drop_to
from mta.queue import QueueError


class Failure(click.ClickException):
    def __init__(self, message: str, code: int = 100) -> None:
        super().__init__(message)
        self.exit_code = code


def _options(edit: bool):
    """The list options shared by make and edit (edit: None = leave unchanged)."""
    flag_default = None if edit else False

    def decorate(f):
        opts = [
            click.option("--archived/--not-archived", default=flag_default),
            click.option("--moderated/--not-moderated", default=flag_default),
            click.option("--subscribers-only/--anyone-may-post", default=flag_default),
            click.option("--moderate-subscriptions/--open-subscriptions", default=flag_default),
            click.option("--private/--public", default=flag_default),
            click.option("--prefix", default=None, help="subject prefix; # = post number"),
            click.option("--trailer", default=None, help="text appended to plain posts"),
            click.option("--max-size", type=click.IntRange(0), default=None, help="bytes, 0 = none"),
            click.option("--unsubscribe-url", default=None, help="https base URL"),
            click.option("--owner", default=None, help="forward NAME-owner@ to this address"),
            click.option("--bounce-threshold", type=click.IntRange(1), default=None),
            click.option("--bounce-timeout", type=click.IntRange(0), default=None,
                         help="seconds (default 10 days)"),
            click.option("--moderator", "moderators", multiple=True, help="repeatable"),
        ]
        for opt in reversed(opts):
            f = opt(f)
        return f
    return decorate


_FIELDS = {"archived": "archived", "moderated": "moderated",
           "subscribers_only": "subscribers_only",
           "moderate_subscriptions": "moderate_subscriptions", "prefix": "prefix",
           "trailer": "trailer", "max_size": "max_message_size",
           "unsubscribe_url": "unsubscribe_url", "owner": "owner",
           "bounce_threshold": "bounce_threshold", "bounce_timeout": "bounce_timeout"}


def _changes(kw: dict) -> dict:
    out = {_FIELDS[k]: v for k, v in kw.items() if k in _FIELDS and v is not None}
    if kw.get("private") is not None:
        out["public"] = not kw["private"]
    return out


@click.group()
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="instance folder (default: $MTA_ROOT, else ./var)")
@click.pass_context
def main(ctx: click.Context, root: Path | None) -> None:
    """ezmlm-style mailing lists posting through the mta queue."""
    ctx.obj = find_root(root)
    try:  # root acts as the list user (mtal owns alias/ and lists/), as qmail's ezmlm runs
        drop_to(ctx.obj, "local")
    except (KeyError, OSError, PrivsepError) as e:
        raise Failure(f"cannot become the instance's local user: {e}", 111) from e


def _load(root: Path, name: str) -> listdir.ListConfig:
    try:
        return listdir.load_list(root, name)
    except listdir.ListError as e:
        raise Failure(str(e)) from e


@main.command()
@click.argument("address")
@_options(edit=False)
@click.pass_obj
def make(root: Path, address: str, moderators: tuple, **kw) -> None:
    """Create list NAME@DOMAIN and its dot-qmail files."""
    try:
        options = listdir.ListOptions(**_changes(kw))
        cfg = listdir.make_list(root, address, options)
        if moderators:
            moderate.change_moderators(cfg.path, add=moderators)
    except (listdir.ListError, ValueError) as e:
        raise Failure(str(e)) from e
    click.echo(f"made {cfg.address} in {cfg.path}")


@main.command()
@click.argument("name")
@_options(edit=True)
@click.pass_obj
def edit(root: Path, name: str, moderators: tuple, **kw) -> None:
    """Change options of list NAME (only the options given)."""
    try:
        cfg = listdir.edit_list(root, name, **_changes(kw))
        if moderators:
            moderate.change_moderators(cfg.path, add=moderators)
    except (listdir.ListError, ValueError) as e:
        raise Failure(str(e)) from e
    click.echo(f"edited {cfg.address}")


def _addresses(args: tuple) -> "iter":
    if args:
        return iter(args)
    return (line for line in (raw.strip() for raw in sys.stdin) if line)


def _bulk(root: Path, name: str, args: tuple, add: bool) -> None:
    cfg = _load(root, name)
    try:
        with SubscriberDB(cfg.path / "subscribers.db") as db:
            if add:
                result = db.add_many(_addresses(args), how="cli")
            else:
                result = db.remove_many(_addresses(args))
    except sqlite3.Error as e:
        raise Failure(f"{cfg.path}/subscribers.db: {e}", 111) from e
    verb = "added" if add else "removed"
    click.echo(f"{verb} {result.changed}, unchanged {result.unchanged}, invalid {result.invalid}")
    for sample in result.invalid_samples:
        click.echo(f"invalid: {sample!r}", err=True)


@main.command()
@click.argument("name")
@click.argument("addresses", nargs=-1)
@click.pass_obj
def sub(root: Path, name: str, addresses: tuple) -> None:
    """Subscribe ADDRESSES (or one a line from stdin) to NAME, without confirmation."""
    _bulk(root, name, addresses, True)


@main.command()
@click.argument("name")
@click.argument("addresses", nargs=-1)
@click.pass_obj
def unsub(root: Path, name: str, addresses: tuple) -> None:
    """Unsubscribe ADDRESSES (or one a line from stdin) from NAME."""
    _bulk(root, name, addresses, False)


@main.command("list")
@click.argument("name")
@click.pass_obj
def list_(root: Path, name: str) -> None:
    """Print the subscribers of NAME, one a line, sorted by domain."""
    cfg = _load(root, name)
    out = sys.stdout
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        for batch in db.iter_batches():
            out.write("".join(a + "\n" for (a,) in batch))


@main.command()
@click.argument("name")
@click.pass_obj
def count(root: Path, name: str) -> None:
    """Print the number of subscribers of NAME."""
    cfg = _load(root, name)
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        click.echo(db.count())


def _watch(root: Path, cfg, number: int, msg_id: int, total: int,
           interval: float = 0.5) -> None:
    start, first = time.monotonic(), None
    while True:
        prog = status.progress(root, msg_id)
        if prog is None:
            final = status.send_status(cfg, root, number)
            click.echo("\ndone: the message has left the queue")
            if final is not None:
                click.echo(status.format_status(final))
            return
        done = prog.delivered + prog.failed
        now = time.monotonic()
        if first is None:
            first = (now, done)
        rate = (done - first[1]) / (now - first[0]) if now > first[0] else 0.0
        eta = f"{(prog.pending + prog.deferred) / rate:.0f}s" if rate > 0 else "?"
        click.echo(f"\rdelivered {prog.delivered} deferred {prog.deferred} "
                   f"failed {prog.failed} of {total}  {rate:.0f}/s  ETA {eta}  "
                   f"[{now - start:.0f}s]", nl=False)
        if prog.attempted_all:
            click.echo(f"\nevery recipient tried; {prog.deferred} deferred will be retried "
                       "by the mta")
            return
        time.sleep(interval)


@main.command()
@click.argument("name")
@click.argument("file", type=click.File("rb"))
@click.option("--no-wait", is_flag=True, help="return once the post is queued")
@click.pass_obj
def send(root: Path, name: str, file, no_wait: bool) -> None:
    """Post FILE (a whole message) to NAME's subscribers and show progress."""
    cfg = _load(root, name)
    raw = file.read()
    failure = check_post(raw, f"{cfg.name}-owner@{cfg.host}", cfg)
    if failure is not None:
        raise Failure(failure.reason)
    try:
        t0 = time.monotonic()
        result = fanout.post_message(cfg, raw, root)
    except (sqlite3.Error, OSError, QueueError) as e:
        raise Failure(f"not queued: {e}", 111) from e
    took = time.monotonic() - t0
    if result.handover is not None:
        _report_handover(name, result, took)
        return
    click.echo(f"post {result.number} queued as msg {result.msg_id} for "
               f"{result.recipients} subscribers in {took:.2f}s")
    if not no_wait and result.msg_id:
        _watch(root, cfg, result.number, result.msg_id, result.recipients)


def _report_handover(name: str, result, took: float) -> None:
    """Scale-out: the post went (or is going) to the delivery machines, not this queue."""
    head = f"post {result.number} for {result.recipients} subscribers"
    if result.handover == "done":
        click.echo(f"{head} handed over to the delivery machines in {took:.2f}s; "
                   f"follow it with: ezlist status {name} {result.number}")
    elif result.handover == "pending":
        click.echo(f"{head}: no delivery machine took every part yet; the rest is kept and "
                   f"handed over at the list's next delivery (ezlist status {name} "
                   f"{result.number})")
    else:
        raise Failure(f"{head}: a delivery machine refused a part: {result.handover}")


@main.command("status")
@click.argument("name")
@click.argument("number", type=int, required=False)
@click.pass_obj
def status_(root: Path, name: str, number: int | None) -> None:
    """Show a running or finished send of NAME (default: the latest post)."""
    cfg = _load(root, name)
    result = status.send_status(cfg, root, number)
    if result is None:
        raise Failure(f"{cfg.address}: no send record" + (f" for post {number}" if number else ""))
    click.echo(status.format_status(result))


@main.command()
@click.argument("name")
@click.pass_obj
def bounces(root: Path, name: str) -> None:
    """List bouncing addresses of NAME with their state, and removed ones."""
    cfg = _load(root, name)
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        book = returns.open_book(cfg, db)
        for b in book.bouncing():
            nums = ",".join(map(str, b.numbers)) or "-"
            click.echo(f"{b.address} {b.state.value} bounces={b.count} first={b.first} "
                       f"last={b.last} posts={nums}")
        for r in book.removed():
            click.echo(f"{r.address} removed at={r.at} reason={r.reason}")


@main.command()
@click.argument("name")
@click.argument("action", type=click.Choice(["add", "remove", "list"]))
@click.argument("addresses", nargs=-1)
@click.pass_obj
def moderators(root: Path, name: str, action: str, addresses: tuple) -> None:
    """Add, remove or list the moderators of NAME."""
    cfg = _load(root, name)
    try:
        if action == "add":
            moderate.change_moderators(cfg.path, add=addresses)
        elif action == "remove":
            moderate.change_moderators(cfg.path, remove=addresses)
    except ValueError as e:
        raise Failure(str(e)) from e
    for address in moderate.read_moderators(cfg.path):
        click.echo(address)


@main.command("moderate-expire")
@click.argument("name")
@click.pass_obj
def moderate_expire(root: Path, name: str) -> None:
    """Return held posts older than modtime to their posters; send due bounce notices."""
    cfg = _load(root, name)
    now = int(time.time())
    try:
        expired = moderate.expire(cfg, root, now)
        notices = returns.send_due_notices(cfg, root, now, force=True)
    except (sqlite3.Error, OSError, QueueError) as e:
        raise Failure(str(e), 111) from e
    click.echo(f"timed out {expired} held posts; sent {notices} bounce notices")


@main.command()
@click.pass_obj
def oneclick(root: Path) -> None:
    """CGI program for the lists' one-click unsubscribe URLs (RFC 8058).

    Run by a web server for the URL given to ``--unsubscribe-url``, with MTA_ROOT
    naming the instance: REQUEST_METHOD, QUERY_STRING and the POST body in, a
    CGI response out. A GET shows a button; only a POST unsubscribes.
    """
    sys.exit(oneclick_web.serve_cgi(root, os.environ, sys.stdin.buffer, sys.stdout.buffer))


if __name__ == "__main__":
    main()
