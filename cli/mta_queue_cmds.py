"""``mta`` subcommands about the queue: queue, stat, inject, clean, send, flush.

``mta queue`` is qmail-qread for fan-out: one paragraph a message with its counts
per state and its top domains, never a line a recipient; ``--json`` prints one
JSON object a message. ``mta stat`` is qmail-qstat. ``mta inject`` is
qmail-inject (see ``mta.inject``). ``mta send`` runs the scheduler and its delivery
workers in the foreground. ``mta flush`` asks a running scheduler to retry
everything now (SIGALRM, as ``svc -a`` does for qmail-send).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import click

from cli import TempFailure

__all__ = ["QUEUE_COMMANDS"]


def _conn(root: Path):
    from mta.privsep import become_queue_owner
    from mta.queue import open_queue

    become_queue_owner(root)  # root must not leave root-owned files in the queue
    if not (root / "queue" / "queue.db").exists():
        raise click.ClickException(f"{root}: no queue here (run 'mta --root {root} init')")
    return open_queue(root, create=False)


@click.command("queue")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per message")
@click.option("--top", default=3, show_default=True, help="domains shown per message")
@click.pass_obj
def queue_cmd(root: Path, as_json: bool, top: int) -> None:
    """List queued messages with recipient counts per state (qmail-qread)."""
    from mta.queue import queue_summary

    conn = _conn(root)
    for m in queue_summary(conn, top):
        if as_json:
            click.echo(json.dumps({"id": m.id, "sender": m.sender, "bytes": m.bytes,
                                   "created": m.created, "nrcpt": m.nrcpt,
                                   "recipients": m.counts,
                                   "top_domains": [list(d) for d in m.top_domains]}))
            continue
        when = time.strftime("%d %b %Y %H:%M:%S GMT", time.gmtime(m.created))
        c = m.counts
        click.echo(f"{when} #{m.id} {m.bytes} <{m.sender}>")
        click.echo(f"\trecipients {m.nrcpt}: pending {c['pending']} deferred {c['deferred']}"
                   f" delivered {c['delivered']} failed {c['failed']}")
        if m.top_domains:
            click.echo("\ttop domains: " + ", ".join(f"{d} {n}" for d, n in m.top_domains))


@click.command("stat")
@click.pass_obj
def stat_cmd(root: Path) -> None:
    """Count messages and recipients in the queue (qmail-qstat)."""
    from mta.queue import queue_totals

    t = queue_totals(_conn(root))
    todo = t["pending"] + t["deferred"]
    click.echo(f"messages in queue: {t['messages']}")
    click.echo(f"recipients to deliver: {todo} (pending {t['pending']}, deferred {t['deferred']})")
    click.echo(f"recipients done: delivered {t['delivered']}, failed {t['failed']}")


@click.command("inject")
@click.option("-f", "sender", default=None, help="envelope sender (default: $USER@defaulthost)")
@click.option("-F", "fullname", default=None, help="full name for a generated From:")
@click.option("-t", "take", is_flag=True, help="take recipients from To/Cc/Bcc")
@click.option("-i", "-oi", "_dots", is_flag=True,
              help="accepted (sendmail's): a line with a single dot never ends the message")
@click.argument("recipients", nargs=-1)
@click.pass_obj
def inject_cmd(root: Path, sender, fullname, take, _dots, recipients) -> None:
    """Queue the message on standard input (qmail-inject); all of it, dots included."""
    sys.exit(inject_message(root, sys.stdin.buffer.read(), sender, fullname, take, recipients))


def inject_message(root: Path, raw: bytes, sender, fullname, take, recipients) -> int:
    """Shared by ``mta inject`` and the sendmail shim; returns the exit code."""
    from mta.control import ControlError, load_control
    from mta.inject import InjectError, prepare_message
    from mta.queue import QueueError, enqueue, qmail_received

    try:
        ctl = load_control(root)
    except ControlError as e:
        click.echo(f"mta inject: {e}", err=True)
        return 111
    if sender is None:
        user = os.environ.get("USER") or os.environ.get("LOGNAME") or "root"
        sender = f"{user}@{ctl.defaulthost}"
    elif sender and "@" not in sender and sender != "#@[]":
        sender = f"{sender}@{ctl.defaulthost}"
    try:
        p = prepare_message(raw, idhost=ctl.idhost, defaulthost=ctl.defaulthost, sender=sender,
                            fullname=fullname, recipients=tuple(recipients), take_recipients=take)
    except InjectError as e:
        click.echo(f"mta inject: {e}", err=True)
        return 100
    from mta.privsep import become_queue_owner

    become_queue_owner(root)
    try:
        msg_id = enqueue(root, sender, p.recipients, p.message,
                         received=qmail_received(os.getpid(), os.getuid(), time.time()))
    except QueueError as e:
        click.echo(f"mta inject: unable to queue: {e}", err=True)
        return 100 if 11 <= e.exit_code <= 40 else 111
    click.echo(f"queued as {msg_id}", err=True)
    return 0


@click.command("clean")
@click.pass_obj
def clean_cmd(root: Path) -> None:
    """Remove half-written leftovers from the queue (qmail-clean)."""
    from mta.privsep import become_queue_owner
    from mta.queue import clean_queue

    become_queue_owner(root)
    click.echo(f"removed {clean_queue(root)} leftover file(s)")


@click.command("send")
@click.option("--workers", type=int, default=None, help="remote worker processes (default: CPUs)")
@click.option("-v", "--verbose", is_flag=True, help="also print the log on stderr")
@click.pass_obj
def send_cmd(root: Path, workers, verbose) -> None:
    """Run the scheduler and delivery workers in the foreground (qmail-send)."""
    import uvloop

    from mta.control import ControlError, load_control
    from mta.send.scheduler import Scheduler

    try:
        load_control(root)
    except ControlError as e:
        raise TempFailure(f"refusing to start: {e}") from e
    scheduler = Scheduler(root, workers=workers, echo=verbose)
    uvloop.run(scheduler.run())
    sys.exit(getattr(scheduler, "exit_code", 0))


@click.command("flush")
@click.pass_obj
def flush_cmd(root: Path) -> None:
    """Ask the running scheduler to try every deferred recipient now (SIGALRM)."""
    pidfile = root / "queue" / "lock" / "sendpid"
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGALRM)
    except (OSError, ValueError) as e:
        raise click.ClickException(f"no running scheduler found ({pidfile}: {e})") from e
    click.echo(f"sent ALRM to scheduler {pid}")


QUEUE_COMMANDS = (queue_cmd, stat_cmd, inject_cmd, clean_cmd, send_cmd, flush_cmd)
