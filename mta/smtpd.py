"""The SMTP listener: a thin asyncio (uvloop) transport around ``mta.smtp.server``.

What it does: accepts TCP connections, applies ``control/smtpaccess`` (deny ->
554 and close; relay -> the client may send anywhere), caps connections overall and
per client address (421 and close when over), feeds every read to the sans-I/O
core and acts on its events: writes replies, closes, starts TLS with
``loop.start_tls`` (plaintext read with the STARTTLS line is dropped by the core
and reading is paused at once, so nothing sent before the handshake is ever
executed, CVE-2011-0411), and hands complete messages to
the injected ``submit`` callable with our Received line prepended. The 250 is
written only after ``submit`` returned, i.e. the queue has the message durably;
``crash_point("before_250")`` runs just before it. While a submit is in flight,
and while the client does not read our replies, reading is paused, so one
connection buffers at most one read. Deadlines (``timeoutsmtpd`` = T): each
command line must be complete within T of the previous one (or of the greeting): a
client trickling bytes gains no time. In DATA, each read earns its length divided
by ``min_data_rate`` (500 bytes/s) seconds, never more than T ahead (Postfix's
``smtpd_min_data_rate``): a stall or a body slower than that ends the session. The
client then gets qmail's ``451 timeout (#4.4.2)`` and is dropped. A client that does
not read our replies (writing paused) is aborted at the deadline without one, and a
close that does not flush within T is aborted. ``smtpgreetdelay`` (``greet_delay``)
holds the greeting back; input sent before it is an early talker (554, DESIGN
decision 2). TCP_NODELAY is on for every socket (asyncio's and uvloop's TCP
transports set it; we do not set it again). The replies of one read go out in one write.

Public:
    open_smtp_server(host, port, *, policy, submit, ssl_context=None) -> asyncio.Server
        started and listening; the caller closes it.
    serve_smtp(host, port, *, policy, submit, ssl_context=None) -> None
        runs until cancelled.
    load_server_tls(root) -> ssl.SSLContext | None
        from ``ROOT/control/servercert.pem`` (certificate and key in one file, as the
        qmail TLS patch), None when the file is absent.
    drain_sessions(listener, timeout) -> int
        for SIGTERM, after the server was closed: idle sessions get ``421`` and are
        closed, a session in a transaction may finish it (its 250 included) and is
        then closed; after ``timeout`` seconds the rest are dropped (nothing of theirs
        was acknowledged). Returns how many were dropped.
    SubmitError(temporary, text), Submit
    ``submit(sender, recipients, data)`` is awaited; ``data`` has LF line ends, is
    dot-unstuffed and starts with our Received line. It returns anything (an int is
    shown as the ``qp`` number of the 250, else our pid) or raises SubmitError.

How it fails: ``SubmitError`` becomes ``451 <text>`` (temporary) or ``554 <text>``
(permanent), qmail's ``qq`` wording; any other exception from ``submit`` is logged
and answered ``451 qq temporary problem (#4.3.0)``: never a 250 for mail not
queued. A failed TLS handshake or a reset connection just ends that session.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections import Counter
from pathlib import Path
from typing import Any, Awaitable, Callable

from mta.access import Action
from mta.crashpoint import crash_point
from mta.received import format_received
from mta.smtp import replies as R
from mta.smtp.policy import SmtpPolicy
from mta.smtp.server import (CloseConnection, Event, MessageReady, SendBytes, SmtpServer, StartTls,
                             State)

__all__ = ["SubmitError", "Submit", "open_smtp_server", "serve_smtp", "load_server_tls",
           "drain_sessions"]

log = logging.getLogger("mta.smtpd")

Submit = Callable[[str, list[str], bytes], Awaitable[Any]]
R421_SHUTTING_DOWN = "421 {me} shutting down, try again later (#4.3.2)"


class SubmitError(Exception):
    """The queue refused the message; ``temporary`` picks 451 over 554."""

    def __init__(self, temporary: bool, text: str):
        super().__init__(text)
        self.temporary, self.text = temporary, text


class _Listener:
    """State shared by all connections of one listening socket."""

    def __init__(self, policy: SmtpPolicy, submit: Submit, ssl_context: ssl.SSLContext | None,
                 clock: Callable[[], float], loop: asyncio.AbstractEventLoop):
        self.policy, self.submit, self.ssl_context, self.clock = policy, submit, ssl_context, clock
        # Kept, not asked for: asyncio.get_running_loop() costs a getpid() syscall each
        # time (CPython 3.11), and a session asked ~13 times.
        self.loop = loop
        self.total = 0
        self.per_ip: Counter[str] = Counter()
        self.tasks: set[asyncio.Task] = set()
        self.sessions: set[SmtpProtocol] = set()
        self.draining = False


class SmtpProtocol(asyncio.Protocol):
    """One client connection; all decisions are the core's."""

    def __init__(self, listener: _Listener):
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.core: SmtpServer | None = None
        self.ip = ""
        self._paused: set[str] = set()  # why reading is paused: submit, tls, writing
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._closed = False
        self._tls_early: list[bytes] = []

    # ----- asyncio callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        policy, lst = self.listener.policy, self.listener
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        self.ip = str(peer[0])
        lst.total += 1
        lst.per_ip[self.ip] += 1
        lst.sessions.add(self)
        action = policy.access.lookup(self.ip)
        self.core = SmtpServer(policy, client_ip=self.ip, local_ip=str(local[0]),
                               may_relay=action is Action.RELAY, tls_available=lst.ssl_context is not None)
        if action is Action.DENY:
            self._act(self.core.refuse(R.R554_ACCESS_DENIED))
        elif lst.total > policy.max_connections:
            self._act(self.core.refuse(R.R421_TOO_MANY_CONNECTIONS))
        elif lst.per_ip[self.ip] > policy.max_per_ip:
            self._act(self.core.refuse(R.R421_TOO_MANY_FROM_HOST))
        else:
            self._arm_timer()
            if policy.greet_delay > 0:
                lst.loop.call_later(policy.greet_delay, self._greet)
            else:
                self._greet()

    def data_received(self, data: bytes) -> None:
        if self._closed or self.core is None:
            return
        if "tls" in self._paused:
            # The plain transport was paused in the read that held STARTTLS, so this
            # is decrypted data that raced start_tls() returning: keep it for later.
            self._tls_early.append(data)
            return
        before = self.core.state
        self._act(self.core.receive_data(data))
        self._note_progress(before, len(data), b"\n" in data)
        self.close_if_draining()

    def eof_received(self) -> bool:
        return False  # close our side too; nothing is queued without a complete DATA

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        for timer in (self._timer, self._linger):
            if timer is not None:
                timer.cancel()
        lst = self.listener
        lst.sessions.discard(self)
        lst.total -= 1
        lst.per_ip[self.ip] -= 1
        if lst.per_ip[self.ip] <= 0:
            del lst.per_ip[self.ip]

    def pause_writing(self) -> None:  # the client does not read its replies
        self._pause("writing")

    def resume_writing(self) -> None:
        self._resume("writing")

    # ----- acting on the core's events -------------------------------------------------

    def _greet(self) -> None:
        if not self._closed and self.core is not None:
            self._arm_timer()  # the first command's T starts with the greeting
            self._act(self.core.greet())

    def _act(self, events: list[Event]) -> None:
        assert self.transport is not None
        out: list[bytes] = []  # consecutive replies go out in one write
        for ev in events:
            if self._closed:
                return
            if type(ev) is SendBytes:
                out.append(ev.data)
                continue
            if out:
                self.transport.write(b"".join(out))
                out.clear()
            if isinstance(ev, CloseConnection):
                self._close_transport()
            elif isinstance(ev, StartTls):
                self._pause("tls")
                self._spawn(self._start_tls())
            elif isinstance(ev, MessageReady):
                self._pause("submit")
                self._spawn(self._submit(ev))
        if out and not self._closed:
            self.transport.write(b"".join(out))

    def _spawn(self, coro) -> None:
        task = self.listener.loop.create_task(coro)
        self.listener.tasks.add(task)
        task.add_done_callback(self.listener.tasks.discard)

    def _pause(self, why: str) -> None:
        if not self._paused and not self._closed and self.transport is not None:
            self.transport.pause_reading()
        self._paused.add(why)

    def _resume(self, why: str) -> None:
        self._paused.discard(why)
        if why != "writing":  # the queue or the handshake answered: a new request begins
            self._arm_timer()
        if not self._paused and not self._closed and self.transport is not None:
            self.transport.resume_reading()

    def _close_transport(self) -> None:
        assert self.transport is not None
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if "writing" in self._paused:  # it does not read: what we wrote would never flush
            self.transport.abort()
            return
        self.transport.close()  # flushes first; a peer that never reads is aborted later
        self._linger = self.listener.loop.call_later(
            self.listener.policy.timeoutsmtpd, self.transport.abort)

    async def _submit(self, msg: MessageReady) -> None:
        lst, core = self.listener, self.core
        assert core is not None
        received = format_received(local=lst.policy.me, remote_ip=self.ip, helo=msg.helo,
                                   when=lst.clock(), protocol=msg.protocol)
        try:
            result = await lst.submit(msg.sender, list(msg.recipients), received + msg.data)
        except SubmitError as e:
            events = core.message_refused(e.temporary, e.text)
        except Exception:
            log.exception("submit failed for a message from %s", self.ip)
            events = core.message_refused(True, "qq temporary problem (#4.3.0)")
        else:
            qp = result if isinstance(result, int) and not isinstance(result, bool) else os.getpid()
            crash_point("before_250")
            events = core.message_queued(int(lst.clock()), qp)
        if not self._closed:
            self._act(events)
            self._resume("submit")
            self.close_if_draining()

    def close_if_draining(self) -> None:
        """While draining, end a session that holds no transaction with a 421."""
        core = self.core
        if (self.listener.draining and not self._closed and core is not None
                and core.state is State.COMMAND and core.sender is None and not self._paused):
            self._act(core.refuse(R421_SHUTTING_DOWN))

    async def _start_tls(self) -> None:
        lst = self.listener
        loop = lst.loop
        assert self.transport is not None and lst.ssl_context is not None and self.core is not None
        try:
            tls = await loop.start_tls(self.transport, self, lst.ssl_context, server_side=True,
                                       ssl_handshake_timeout=min(lst.policy.timeoutsmtpd, 60.0))
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as e:
            log.info("TLS handshake with %s failed: %s", self.ip, e)
            self._closed = True
            self.transport.abort()
            return
        if tls is None or self._closed:
            return
        self.transport = tls
        self.core.tls_started()
        early, self._tls_early = b"".join(self._tls_early), []
        self._resume("tls")
        if early:
            self.data_received(early)

    # ----- deadlines (timeoutsmtpd; see the module docstring) ----------------------------
    # One deadline and one lazily pushed timer per connection. The deadline never moves
    # earlier: it is always at most now + T, and each update takes at least the old value.

    def _arm_timer(self) -> None:
        self._set_deadline(self.listener.loop.time() + self.listener.policy.timeoutsmtpd)

    def _note_progress(self, before: State, nbytes: int, newline: bool) -> None:
        """Push the deadline back for a complete command line, or by the DATA rate."""
        if self._closed or self.core is None:
            return
        policy = self.listener.policy
        now = self.listener.loop.time()
        if before is State.DATA and self.core.state is State.DATA:
            self._set_deadline(min(now + policy.timeoutsmtpd,
                                   self._deadline + nbytes / policy.min_data_rate))
        elif newline:
            self._set_deadline(now + policy.timeoutsmtpd)

    def _set_deadline(self, when: float) -> None:
        self._deadline = when
        if self._timer is None and not self._closed:
            self._timer = self.listener.loop.call_at(when, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if self._closed or self.core is None:
            return
        loop = self.listener.loop
        if self._paused - {"writing"}:  # waiting on the queue or a handshake, not on the client
            self._deadline = loop.time() + self.listener.policy.timeoutsmtpd
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._check_deadline)
            return
        if "writing" in self._paused:
            log.info("dropping %s: it does not read its replies", self.ip)
        self._act(self.core.timed_out())  # CloseConnection aborts when writing is paused


async def open_smtp_server(host: str, port: int, *, policy: SmtpPolicy, submit: Submit,
                           ssl_context: ssl.SSLContext | None = None,
                           clock: Callable[[], float] = time.time,
                           on_listener: Callable[[Any], None] | None = None,
                           reuse_port: bool = False) -> asyncio.Server:
    """Listen on ``host:port`` (port 0 = any free port); close the returned server when done.

    ``on_listener`` receives the shared listener state; assigning a new policy to its
    ``policy`` attribute applies to connections accepted afterwards (SIGHUP reload).
    ``reuse_port`` lets several processes listen on the same port (SO_REUSEPORT).
    """
    loop = asyncio.get_running_loop()
    listener = _Listener(policy, submit, ssl_context, clock, loop)
    if on_listener is not None:
        on_listener(listener)
    return await loop.create_server(lambda: SmtpProtocol(listener), host, port,
                                    backlog=1024, reuse_address=True, reuse_port=reuse_port)


async def serve_smtp(host: str, port: int, *, policy: SmtpPolicy, submit: Submit,
                     ssl_context: ssl.SSLContext | None = None) -> None:
    """Accept SMTP clients on ``host:port`` until cancelled."""
    server = await open_smtp_server(host, port, policy=policy, submit=submit, ssl_context=ssl_context)
    async with server:
        await server.serve_forever()


async def drain_sessions(listener: _Listener, timeout: float) -> int:
    """Close idle sessions now, the others once their transaction ends (see above)."""
    listener.draining = True
    for session in list(listener.sessions):
        session.close_if_draining()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while listener.sessions and loop.time() < deadline:
        await asyncio.sleep(0.05)  # sessions end on their own clients' pace
    left = list(listener.sessions)
    for session in left:
        if session.transport is not None:
            session.transport.abort()
    return len(left)


def load_server_tls(root: Path | str) -> ssl.SSLContext | None:
    """A server TLS context from ``control/servercert.pem``, or None without the file.

    Raises ``ssl.SSLError`` / ``OSError`` when the file exists but cannot be used:
    a listener must not silently drop STARTTLS it was configured to offer.
    """
    pem = Path(root) / "control" / "servercert.pem"
    if not pem.exists():
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pem)
    return ctx
