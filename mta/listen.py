"""A network listener process: SMTP, QMTP or QMQP wired to the queue.

Run by ``mta start`` as ``python -m mta.listen --root DIR --smtp HOST:PORT`` (or
``--qmtp`` / ``--qmqp``). It loads the control files (refusing to start on a bad
one), builds the protocol's policy from them, and hands every accepted message to
the queue owner (``mta.queued``) over its socket ``queue/lock/qq.sock``: a listener
never writes the queue itself (DESIGN.md). The SMTP 250 (QMTP/QMQP ``K``) is sent
only after the queue owner answered ``K``, i.e. after the commit covering the
message. If the owner cannot be reached within a few seconds (it is being
restarted), the client gets a temporary failure (451).

With ``--direct`` (for running a listener without ``mta start``), the listener
writes the queue itself with ``mta.queue.enqueue`` in a worker thread instead.

The SMTP and QMTP listeners remove any ``X-Mta-Rcpt-Token`` header field before
queueing (``mta.rcpt_token.strip_private``): that private field is ezlist's message
to our own delivery (one-click unsubscribe tokens) and nobody outside may plant one.
QMQP keeps it: it is the access-controlled handover from a list host to delivery
machines (scale-out), which must fill the tokens.

Recipient checks at RCPT time: an address in a local domain with no dot-qmail file
(and so no list either) gets 550 (``mta.local.has_delivery``, its answers cached while
alias/ is unchanged: ``mta.local.rcpt_cache``).

SIGHUP re-reads the control files into a fresh policy for new connections; a bad
file keeps the old policy and logs why. SIGTERM stops accepting; an idle SMTP
session gets 421 at once, one in a transaction finishes it (its 250 included) and
then gets 421; the process exits when none is left, or after ``timeoutsmtpd`` (at
most DRAIN_MAX) seconds, dropping what is left unacknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Callable

from mta.access import AccessError, load_access
from mta.control import ControlError, load_control
from mta.local.rcpt_cache import DeliveryCache
from mta.privsep import drop_to
from mta.qq_async import QqClient
from mta.qq_client import QqError, socket_path
from mta.queue import QueueError, enqueue
from mta.rcpt_token import strip_private
from mta.reuseport import steer_by_client
from mta.smtp.policy import SmtpPolicy
from mta.smtpd import SubmitError, drain_sessions, load_server_tls, open_smtp_server

log = logging.getLogger("mta.listen")
DRAIN_MAX = 60.0  # SIGTERM: how long a session in a transaction may take to finish it


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def make_submit(root: Path, *, direct: bool = False, strip: bool = False):
    """An async submit(sender, recipients, data) that queues durably or raises SubmitError.

    Through the queue owner's socket; with ``direct``, by writing the queue here.
    With ``strip``, any private ``X-Mta-Rcpt-Token`` field is removed first.
    """
    client = None if direct else QqClient(socket_path(root))

    async def submit(sender: str, recipients: list[str], data: bytes):
        if strip:
            data = strip_private(data)
        try:
            if client is not None:
                return await client.submit(sender, recipients, data)
            return await asyncio.to_thread(enqueue, root, sender, recipients, data)
        except (QueueError, QqError) as e:
            permanent = not e.temporary if isinstance(e, QqError) else e.permanent
            raise SubmitError(not permanent, f"qq {'permanent' if permanent else 'temporary'}"
                                             f" problem: {e} (#{'5' if permanent else '4'}.3.0)")

    return submit


def make_rcpt_exists(ctl, root: Path):
    delivers = DeliveryCache(root / "alias")

    def rcpt_exists(address: str) -> bool:
        local = ctl.local_part_for(address)
        return True if local is None else delivers(local)

    return rcpt_exists


def smtp_policy(root: Path, share: int = 1, steered: bool = False) -> SmtpPolicy:
    """The SMTP policy from the control files; with ``share`` = N listener processes on
    one port, each takes 1/N of the connection caps (rounded up), except the per-client
    cap when ``steered`` (every connection of a client reaches the same process)."""
    ctl = load_control(root)
    policy = SmtpPolicy.from_control(ctl, access=load_access(root),
                                     rcpt_exists=make_rcpt_exists(ctl, root))
    if share > 1:
        per_ip = policy.max_per_ip if steered else -(-policy.max_per_ip // share)
        policy = dataclasses.replace(policy, max_connections=-(-policy.max_connections // share),
                                     max_per_ip=per_ip)
    return policy


async def run_smtp(root: Path, host: str, port: int, direct: bool = False,
                   share: int = 1) -> None:
    """One SMTP listener; with ``share`` > 1 one of that many on the port (SO_REUSEPORT,
    so both cores accept and parse; connections steered by client address where the
    kernel allows it, see mta.reuseport)."""
    policy = smtp_policy(root, share)
    submit = make_submit(root, direct=direct, strip=True)
    listeners = []
    server = await open_smtp_server(host, port, policy=policy, submit=submit,
                                    ssl_context=load_server_tls(root),
                                    on_listener=listeners.append, reuse_port=share > 1)
    steered = share > 1 and all(_steer(ts, share) for ts in server.sockets)
    if steered:  # one client, one process: the per-client cap need not be split
        listeners[0].policy = policy = smtp_policy(root, share, steered=True)
    log.info("smtp listening on %s:%d", host, port)
    timeout = min(float(policy.timeoutsmtpd), DRAIN_MAX)
    await _serve_until_term(server, lambda: _reload_smtp(listeners[0], root, share, steered),
                            drain=lambda: drain_sessions(listeners[0], timeout), root=root)


def _steer(tsock, share: int) -> bool:
    sock = socket.socket(fileno=os.dup(tsock.fileno()))
    try:
        return steer_by_client(sock, share)
    finally:
        sock.close()


def _reload_smtp(listener, root: Path, share: int = 1, steered: bool = False) -> None:
    try:
        listener.policy = smtp_policy(root, share, steered)
    except (ControlError, AccessError) as e:
        log.error("alert: unable to reread controls, keeping the old ones: %s", e)
        return
    log.info("reloaded control files")


def _reloader(state: dict, load: Callable[[], dict]) -> Callable[[], None]:
    """A SIGHUP handler replacing ``state``'s entries with ``load()``; keeps them on error."""
    def reload() -> None:
        try:
            state.update(load())
        except (ControlError, AccessError) as e:
            log.error("alert: unable to reread controls, keeping the old ones: %s", e)
            return
        log.info("reloaded control files")
    return reload


async def run_qmtp(root: Path, host: str, port: int, direct: bool = False) -> None:
    """QMTP listener: rcpthosts and smtpaccess (deny, relay) as for SMTP; re-read on SIGHUP."""
    from mta.access import Action
    from mta.net.qmtp_server import open_qmtp_server

    def load() -> dict:
        return {"ctl": load_control(root), "access": load_access(root)}

    live = load()

    def rcpt_allowed(peer_ip: str, address: str) -> bool:
        action = live["access"].lookup(peer_ip)
        if action is Action.DENY:
            return False
        if action is Action.RELAY:
            return True
        domain = address.rpartition("@")[2]
        return live["ctl"].rcpt_allowed(domain) if domain else True

    ctl = live["ctl"]  # size limit and timeout are fixed at start
    server = await open_qmtp_server(host, port, submit=_qm_submit(root, direct, strip=True),
                                    rcpt_allowed=rcpt_allowed,
                                    max_message=ctl.databytes, local_host=ctl.me,
                                    timeout=ctl.timeoutsmtpd)
    await _serve_until_term(server, _reloader(live, load), root=root)


async def run_qmqp(root: Path, host: str, port: int, direct: bool = False) -> None:
    """QMQP listener for the clients ``qmqpaccess`` allows (loopback without it); SIGHUP re-reads."""
    from mta.access import LOOPBACK_ONLY, Action
    from mta.net.qmqp_server import open_qmqp_server

    def load() -> dict:
        return {"rules": load_access(root, "qmqpaccess", LOOPBACK_ONLY)}

    live = load()

    def access(peer_ip: str) -> bool:
        return live["rules"].lookup(peer_ip) in (Action.ALLOW, Action.RELAY)

    ctl = load_control(root)
    server = await open_qmqp_server(host, port, submit=_qm_submit(root, direct), access=access,
                                    local_host=ctl.me, timeout=ctl.timeoutsmtpd)
    await _serve_until_term(server, _reloader(live, load), root=root)


def _qm_submit(root: Path, direct: bool, strip: bool = False):
    from mta.qmtp import SubmitError as QmSubmitError

    smtp_submit = make_submit(root, direct=direct, strip=strip)

    async def submit(sender, recipients, data):
        try:
            return await smtp_submit(sender, list(recipients), data)
        except SubmitError as e:
            raise QmSubmitError(e.temporary, e.text) from e

    return submit


async def _serve_until_term(server, reload, drain=None, root: Path | None = None) -> None:
    if root is not None:
        drop_to(root, "smtpd")  # bound to the port as root; serve as the listener user
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    await stop.wait()
    server.close()
    if drain is not None:
        dropped = await drain()
        if dropped:
            log.info("dropped %d session(s) still open at shutdown", dropped)
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mta.listen")
    ap.add_argument("--root", required=True, type=Path)
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--smtp", type=_hostport)
    group.add_argument("--qmtp", type=_hostport)
    group.add_argument("--qmqp", type=_hostport)
    ap.add_argument("--share", type=int, default=1, metavar="N",
                    help="SMTP: one of N listener processes on the port (SO_REUSEPORT)")
    ap.add_argument("--direct", action="store_true",
                    help="write the queue here instead of through the queue owner")
    args = ap.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format=f"%(asctime)s listen[{os.getpid()}] %(message)s")
    import uvloop

    try:
        if args.smtp:
            uvloop.run(run_smtp(args.root, *args.smtp, direct=args.direct, share=args.share))
        elif args.qmtp:
            uvloop.run(run_qmtp(args.root, *args.qmtp, direct=args.direct))
        else:
            uvloop.run(run_qmqp(args.root, *args.qmqp, direct=args.direct))
    except (ControlError, AccessError) as e:
        sys.stderr.write(f"mta.listen: refusing to start: {e}\n")
        return 111
    except OSError as e:
        sys.stderr.write(f"mta.listen: unable to listen: {e}\n")
        return 111
    return 0


if __name__ == "__main__":
    sys.exit(main())
