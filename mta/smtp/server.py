"""SMTP server protocol core, sans-I/O: bytes in, events out (qmail-smtpd's job).

What it does: one ``SmtpServer`` per client connection parses commands and DATA,
applies ``SmtpPolicy`` and returns events for the transport (``mta.smtpd``):
``SendBytes``, ``CloseConnection``, ``StartTls``, ``MessageReady``. No I/O, no clock.

Public: ``SmtpServer``, ``State``, the events above, ``Event``, ``SmtpPolicy``.
Transport calls: ``greet()``, ``refuse(reply)``, ``receive_data(data)``,
``message_queued(stamp, qp)``, ``message_refused(temporary, text)``,
``tls_started()``, ``timed_out()``; each returns the events to act on, in order.

Theory of operation. States: ``CONNECTED`` (greeting not sent yet), ``COMMAND``,
``DATA``, ``WAITING`` (a ``MessageReady`` is out; the transport owes us
``message_queued`` or ``message_refused``), ``CLOSED``. All input goes into one
bounded buffer; complete lines are taken from it one at a time, so replies always
come out in command order (RFC 2920). Pipelining is strict (DESIGN decision 2):
a command is "pipelined" when more input is already buffered behind it. That is a
synchronization error (554, close, nothing queued) before the greeting (PL2), after
any command of a client that did not say EHLO (PL3), and after the commands RFC
2920 3.1 says must end a group: EHLO, HELO, DATA (a body sent before the 354, SM8),
NOOP, VRFY, EXPN, HELP. STARTTLS instead drops whatever follows it (CVE-2011-0411,
TL1) and forgets the session (RFC 3207 4.2). While ``WAITING`` input is only
buffered; the transport pauses reading, so the buffer holds at most one read.

DATA (DESIGN decision 1, decoded by ``mta.smtp._data``): only CRLF.CRLF ends it; a
bare LF gets qmail's ``451 See https://cr.yp.to/docs/smtplf.html.`` and a close; a
lone CR is data, so no second message can be smuggled (SM1-SM4). NUL and 8-bit
body bytes are kept byte-exact (LM-13); NUL in a command gets 501 (LM-9). Long
lines are kept byte-exact with bounded buffering (LM-3); over the size limit the
rest is dropped and the end gets 552 (LM-4); 100 hops or more get 554 (LP2).

How it fails: it raises nothing on bad input; every client error becomes a reply,
counted, and ``max_errors`` of them end the session with 421 (LM-7); each NOOP, RSET,
VRFY or HELP past ``max_junk`` counts as one such error (Postfix's
smtpd_junk_command_limit: no endless NOOPs). Calling the transport methods out of
order raises ``RuntimeError`` (a bug in the caller).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Union

from mta.smtp import replies as R
from mta.smtp._address import (AddressError, literal_ip, mail_params_refusal, parse_mailbox,
                               split_argument)
from mta.smtp._data import MAX_HOPS, DataReader, Progress, count_hops
from mta.smtp.policy import SmtpPolicy

__all__ = ["SmtpServer", "SmtpPolicy", "State", "SendBytes", "CloseConnection", "StartTls", "MessageReady", "Event"]

MAX_SKIP = 65536  # an over-long command line longer than this ends the session (LM-2)
_JUNK = frozenset({"NOOP", "RSET", "VRFY", "HELP"})  # commands that can hold a session
_LAST_IN_GROUP = frozenset({"EHLO", "HELO", "DATA", "NOOP", "VRFY", "EXPN", "HELP"})


@dataclass(frozen=True)
class SendBytes:
    data: bytes


@dataclass(frozen=True)
class CloseConnection:
    """Close after the bytes already sent are flushed."""


@dataclass(frozen=True)
class StartTls:
    """Start the TLS handshake now; plaintext received after STARTTLS is void."""


@dataclass(frozen=True)
class MessageReady:
    """A complete message to hand to the queue; reply with message_queued/refused."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes  # LF line ends, dot-unstuffed, no Received line of ours yet
    helo: str
    protocol: str  # SMTP, ESMTP or ESMTPS (RFC 3848), for the Received line


Event = Union[SendBytes, CloseConnection, StartTls, MessageReady]


class State(enum.Enum):
    CONNECTED = "connected"
    COMMAND = "command"
    DATA = "data"
    WAITING = "waiting"
    CLOSED = "closed"


class SmtpServer:
    """One client session. ``may_relay`` comes from the access rules."""

    def __init__(self, policy: SmtpPolicy, *, client_ip: str, local_ip: str = "",
                 may_relay: bool = False, tls_available: bool = False):
        self.policy = policy
        self.client_ip = client_ip
        self.may_relay = may_relay
        self.tls_available = tls_available
        self.tls_active = False
        self.state = State.CONNECTED
        self._own_ips = policy.local_ips | ({local_ip} if local_ip else frozenset())
        self._buf = bytearray()
        self._out: list[Event] = []
        self._skipping = 0  # bytes of an over-long command line dropped so far
        self._errors = 0
        self._junk = 0  # NOOP, RSET, VRFY, HELP so far
        self.helo: str | None = None
        self.esmtp = False
        self._reset_transaction()

    def greet(self) -> list[Event]:
        """The 220 greeting; call once, after any greet delay."""
        if self.state is not State.CONNECTED:
            raise RuntimeError("greet() called twice")
        self.state = State.COMMAND
        self._reply(R.R220_GREETING.format(greeting=self.policy.greeting or self.policy.me))
        return self._drain()

    def refuse(self, reply: str) -> list[Event]:
        """Answer ``reply`` (a 4xx/5xx template with ``{me}``) instead of greeting, and close."""
        self._reply(reply.format(me=self.policy.me))
        self._close()
        return self._drain()

    def receive_data(self, data: bytes) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        self._buf += data
        if self.state is State.CONNECTED:  # early talker (PL2)
            self._sync_error()
            return self._drain()
        self._process()
        return self._drain()

    def message_queued(self, stamp: int, qp: int) -> list[Event]:
        """The queue has the message durably: 250, then go on with buffered input."""
        self._finish_wait(R.R250_QUEUED.format(stamp=stamp, qp=qp))
        return self._drain()

    def message_refused(self, temporary: bool, text: str) -> list[Event]:
        """The queue said no: 451 (temporary) or 554 (permanent) with its text."""
        text = " ".join(text.split()) or "qq temporary problem (#4.3.0)"
        if not text.startswith("qq"):
            text = "qq " + text
        self._finish_wait((R.R451_QQ if temporary else R.R554_QQ).format(text=text))
        return self._drain()

    def tls_started(self) -> None:
        self.tls_active = True  # the Received line will say ESMTPS

    def timed_out(self) -> list[Event]:
        if self.state is not State.CLOSED:
            self._reply(R.R451_TIMEOUT)
            self._close()
        return self._drain()

    def _drain(self) -> list[Event]:  # events since the last call, in order
        out, self._out = self._out, []
        return out

    def _reply(self, line: str) -> None:
        self._out.append(SendBytes(R.wire(line)))

    def _error(self, line: str) -> None:
        self._reply(line)
        self._count_error()

    def _count_error(self) -> None:
        self._errors += 1
        if self._errors >= self.policy.max_errors and self.state is not State.CLOSED:
            self._reply(R.R421_TOO_MANY_ERRORS.format(me=self.policy.me))
            self._close()

    def _close(self) -> None:
        self.state = State.CLOSED
        self._buf.clear()
        self._out.append(CloseConnection())

    def _sync_error(self) -> None:
        self._reply(R.R554_SYNC)
        self._close()

    def _reset_transaction(self) -> None:
        self.sender: str | None = None
        self.recipients: list[str] = []
        self._reader = DataReader(self.policy.size_limit)

    def _finish_wait(self, line: str) -> None:
        if self.state is not State.WAITING:
            raise RuntimeError("no message is waiting for the queue")
        self._reply(line)
        self.state = State.COMMAND
        self._process()

    def _process(self) -> None:
        while True:
            if self.state is State.COMMAND:
                line = self._next_line()
                if line is None:
                    return
                self._command(line)
            elif self.state is State.DATA:
                if not self._consume_data():
                    return
            else:
                return

    def _next_line(self) -> bytes | None:
        buf, limit = self._buf, self.policy.max_command_line
        while self.state is State.COMMAND:
            if self._skipping:
                i = buf.find(b"\n")
                if i < 0:
                    self._skipping += len(buf)
                    buf.clear()
                    if self._skipping > MAX_SKIP:  # LM-2: endless line
                        self._reply(R.R500_LINE_TOO_LONG)
                        self._close()
                    return None
                del buf[: i + 1]
                self._skipping = 0
                self._error(R.R500_LINE_TOO_LONG)  # LM-1: the session goes on
                continue
            i = buf.find(b"\n", 0, limit)
            if i >= 0:
                line = bytes(buf[:i])
                del buf[: i + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(buf) < limit:
                return None
            self._skipping = 1  # drop through the next LF, which may already be buffered
        return None

    # ----- commands ------------------------------------------------------------------

    def _command(self, line: bytes) -> None:
        if b"\x00" in line:
            self._error(R.R501_NUL)
            return
        verb, _, arg = line.decode("latin-1").partition(" ")
        verb, arg = verb.upper(), arg.strip()
        if verb == "QUIT":
            self._reply(R.R221_BYE.format(me=self.policy.me))
            self._close()
        elif verb == "STARTTLS":
            self._starttls(arg)
        elif self._buf and (not self.esmtp or verb in _LAST_IN_GROUP):
            self._sync_error()  # RFC 2920 3.1; PL3, SM8
        elif verb in _HANDLERS:
            _HANDLERS[verb](self, arg)
            self._junk += verb in _JUNK
            if self._junk > self.policy.max_junk and verb in _JUNK:
                self._count_error()
        else:
            self._error(R.R502_UNIMPLEMENTED)

    def _hello(self, arg: str, esmtp: bool) -> None:
        if not arg:
            self._error(R.R501_SYNTAX)
            return
        self.helo, self.esmtp = arg, esmtp
        self._reset_transaction()  # RFC 5321 4.1.4
        if not esmtp:
            self._reply(R.R250_HELO.format(me=self.policy.me))
            return
        self._out.append(SendBytes(R.ehlo_reply(self.policy.me, self.policy.size_limit,
                                                self.tls_available and not self.tls_active)))

    def _mail(self, arg: str) -> None:
        if self.helo is None:
            self._error(R.R503_HELLO_FIRST)
            return
        if self.sender is not None:
            self._error(R.R503_NESTED_MAIL)
            return
        try:
            path, params = split_argument(arg, "FROM")
            sender = ""
            if path:
                parsed = parse_mailbox(path)
                sender = f"{parsed.local}@{parsed.domain}" if parsed.domain else parsed.local
        except AddressError as e:
            self._error(e.reply)
            return
        refusal = mail_params_refusal(params, self.policy.size_limit)
        if refusal:
            self._error(refusal)
            return
        self.sender = sender
        self._reply(R.R250_SENDER_OK)

    def _rcpt(self, arg: str) -> None:
        if self.sender is None:
            self._error(R.R503_MAIL_FIRST)
            return
        if len(self.recipients) >= self.policy.max_recipients:
            self._reply(R.R452_TOO_MANY_RECIPIENTS)  # not an error: the session goes on (LM-5)
            return
        try:
            path, params = split_argument(arg, "TO")
            if params:
                raise AddressError(R.R555_PARAMETER.format(param=params[0].partition("=")[0].upper()))
            if not path:
                raise AddressError(R.R501_ADDRESS_SYNTAX)
            parsed = parse_mailbox(path)
        except AddressError as e:
            self._error(e.reply)
            return
        domain, policy = parsed.domain, self.policy
        if literal_ip(domain) in self._own_ips:  # qmail localiphost (RL4)
            domain = policy.localiphost or policy.me
        elif not domain:  # qmail: recipients without @ are ours
            domain = policy.me
        address = f"{parsed.local}@{domain}"
        if not self.may_relay:
            if parsed.relay_trick:  # RL2
                self._error(R.R553_ROUTING)
                return
            if not policy.rcpt_domain_allowed(domain):
                self._error(R.R553_RCPTHOSTS)  # RL1, RL3
                return
        if policy.is_local_domain(domain) and not policy.rcpt_exists(address):
            self._error(R.R550_NO_MAILBOX)  # BS1, DESIGN decision 3
            return
        self.recipients.append(address)
        self._reply(R.R250_RCPT_OK)

    def _data(self, arg: str) -> None:
        if self.sender is None:
            self._error(R.R503_MAIL_FIRST)
        elif not self.recipients:
            self._error(R.R503_RCPT_FIRST)
        else:
            self._reply(R.R354_GO_AHEAD)
            self.state = State.DATA

    def _rset(self, arg: str) -> None:
        self._reset_transaction()
        self._reply(R.R250_FLUSHED)

    def _starttls(self, arg: str) -> None:
        if self.tls_active:
            self._error(R.R503_ALREADY_TLS)
        elif not self.tls_available:
            self._error(R.R502_UNIMPLEMENTED)  # TL3
        elif arg:
            self._error(R.R501_STARTTLS_ARGS)
        else:
            self._reply(R.R220_STARTTLS)
            self._buf.clear()  # TL1: plaintext pipelined behind STARTTLS is void
            self.helo, self.esmtp = None, False  # RFC 3207 4.2: start over
            self._reset_transaction()
            self._out.append(StartTls())

    # ----- DATA ----------------------------------------------------------------------

    def _consume_data(self) -> bool:
        """Feed the buffer to the DATA reader; False when more input is needed."""
        status = self._reader.consume(self._buf)
        if status is Progress.BARE_LF:  # DESIGN decision 1
            self._reply(R.R451_BARE_LF)
            self._close()
            return False
        if status is Progress.DONE:
            self._end_of_data()
        return status is not Progress.NEED_MORE

    def _end_of_data(self) -> None:
        self.state = State.COMMAND
        if self._reader.too_big:
            self._reset_transaction()
            self._error(R.R552_TOO_BIG)
            return
        data = self._reader.message()
        if count_hops(data) >= MAX_HOPS:
            self._reset_transaction()
            self._error(R.R554_TOO_MANY_HOPS)
            return
        protocol = "ESMTPS" if self.tls_active else "ESMTP" if self.esmtp else "SMTP"
        self._out.append(MessageReady(self.sender or "", tuple(self.recipients), data, self.helo or "", protocol))
        self._reset_transaction()
        self.state = State.WAITING


_HANDLERS: dict[str, Callable[[SmtpServer, str], None]] = {
    "HELO": lambda s, a: s._hello(a, False),
    "EHLO": lambda s, a: s._hello(a, True),
    "MAIL": SmtpServer._mail,
    "RCPT": SmtpServer._rcpt,
    "DATA": SmtpServer._data,
    "RSET": SmtpServer._rset,
    "NOOP": lambda s, a: s._reply(R.R250_OK),
    "VRFY": lambda s, a: s._reply(R.R252_VRFY),  # LM-12: no user enumeration
    "EXPN": lambda s, a: s._error(R.R502_UNIMPLEMENTED),
    "HELP": lambda s, a: s._reply(R.R214_HELP.format(me=s.policy.me)),
}
