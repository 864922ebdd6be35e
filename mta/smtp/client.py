"""Sans-I/O SMTP client: bytes in, events out (RFC 5321, RFC 2920 PIPELINING).

What it does: ``SMTPClient`` is the protocol core of remote delivery. The transport
feeds it what the server sent (``receive_data``), writes what it asks to send
(``take_output``: byte strings, the prepared body, or its buffers, by reference,
never copied), acts on the events it returns, reports a dropped connection
(``connection_lost``) or an expired reply timer (``timed_out``); no socket, no clock.

Theory of operation. A session goes GREETING -> EHLO (-> HELO when EHLO gets
5xx) [-> STARTTLS -> TLS -> EHLO] -> READY, then any number of transactions
(READY -> TRANSACTION -> READY), then QUIT -> CLOSED. A transaction is a list of
commands, each awaiting one reply, in order: [RSET], MAIL, RCPT..., DATA, and,
once DATA got 354, DOT (the body and its final ``.``). With PIPELINING the whole
list up to DATA goes out in one write and the replies are matched in order
(RFC 2920 3.1); without it the next command goes out when the previous reply is
in (lock-step), and the transaction stops early when MAIL fails or every RCPT
failed. RSET is sent before a transaction only when the previous one did not end
with the server's reply to the final dot (after a complete DATA the server has
already reset, RFC 5321 4.1.1.4); when pipelining it leads the same write.
If DATA gets 354 although MAIL failed or no RCPT was accepted (possible when
pipelining), the client sends ``.`` alone (RFC 2920 3.1) and keeps the per-RCPT
outcomes.

Events: ``SessionReady(extensions)``, ``StartTLS()`` (the transport must wrap the
connection in TLS and call ``tls_established``), ``DataSent()`` (the final dot is
in the output), ``TransactionDone(outcomes, dot_sent)`` with one Outcome per
recipient in order, ``SessionFailed(outcome, stage)`` (connection-level trouble:
greeting refused, 421, timeout, drop, garbage; the host may be throttled) and
``Closed()`` (QUIT answered).

Outcome texts follow qmail-remote: ``"<peer> does not like recipient.\\nRemote
host said: 550 5.1.1 ..."``, ``"Connected to <peer> but connection died.
(#4.4.2)"`` (prefixed ``"Possible duplicate! "`` once the dot was sent).
Classification (temp/perm, dsn) is ``mta.status``'s.

How it fails: the peer's faults (bad replies, replies out of sequence, 421) end
the session with ``SessionFailed`` and a TempFail for every recipient in flight;
misuse by the caller (a transaction while not READY) raises ``LocalProtocolError``.
"""

from __future__ import annotations

from enum import Enum
from typing import Sequence

from mta.interfaces import Delivered, Outcome, PermFail, TempFail
from mta.smtp.client_events import (Closed, DataSent, Event, Extensions, SessionFailed,
                                    SessionReady, StartTLS, TransactionDone, parse_extensions)
from mta.smtp.reply_parse import Reply, ReplyParser, ReplyProtocolError
from mta.status import Stage, classify_reply


class LocalProtocolError(Exception):
    """The caller used the client in a state that does not allow it."""


class State(Enum):
    GREETING = "greeting"
    EHLO = "ehlo"
    HELO = "helo"
    STARTTLS = "starttls"
    TLS = "tls"  # waiting for the transport to finish the handshake
    READY = "ready"
    TRANSACTION = "transaction"
    QUIT = "quit"
    CLOSED = "closed"


_RSET, _MAIL, _RCPT, _DATA, _DOT = range(5)
_STAGE = {_RSET: Stage.RSET, _MAIL: Stage.MAIL, _RCPT: Stage.RCPT, _DATA: Stage.DATA,
          _DOT: Stage.DOT}
_LINE_BREAKS = ("\r", "\n")


class SMTPClient:
    """The client side of one SMTP connection (see the module docstring)."""

    def __init__(self, helo: str, peer: str = "remote host", *, starttls: bool = False):
        self.helo = helo
        self.peer = peer
        self.state = State.GREETING
        self.extensions = Extensions()
        self.tls_active = False
        self._want_tls = starttls
        self._parser = ReplyParser()
        self._out: list[bytes] = []
        self._need_rset = False
        self._reset_transaction()

    def _reset_transaction(self) -> None:
        self._cmds: list[tuple[int, int]] = []  # (kind, recipient index) awaiting replies
        self._lines: list[bytes] = []  # lock-step only: the command line of each entry
        self._next = 0  # index in _cmds of the next reply
        self._sent = 0  # how many of _cmds are on the wire
        self._outcomes: list[Outcome | None] = []
        self._accepted = 0
        self._mail_failure: Outcome | None = None
        self._body: bytes | Sequence[bytes] = b""
        self._dot_sent = False
        self._dot_empty = False  # "." sent alone: no accepted recipient

    def take_output(self) -> list[bytes]:
        """The byte strings to write, in order; the client forgets them."""
        out = self._out
        if out:
            self._out = []
        return out

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the server; return the events they complete."""
        if self.state == State.CLOSED:
            return []
        error = None
        try:
            replies = self._parser.feed(data)
        except ReplyProtocolError as exc:
            replies, error = exc.replies, exc
        events: list[Event] = []
        queued = len(self._out)
        for reply in replies:
            if len(self._out) != queued:
                # we asked something while reading this chunk: the server cannot have
                # answered it yet, so this reply is unsolicited (out of sequence)
                return events + self._abort(
                    f"Connected to {self.peer} but the remote host sent a reply out of "
                    f"sequence: {reply.text[:200]!r}. (#4.4.2)")
            if self.state == State.TRANSACTION:
                self._on_transaction_reply(reply, events)
            else:
                self._on_session_reply(reply, events)
            if self.state == State.CLOSED:
                return events
        if error is not None:
            events.extend(self._abort(f"Connected to {self.peer} but the remote host broke the "
                                      f"SMTP protocol: {error}. (#4.4.2)"))
        return events

    def connection_lost(self) -> list[Event]:
        """The transport saw the connection close (or fail)."""
        if self.state == State.QUIT:
            self.state = State.CLOSED
            return [Closed()]
        return self._abort(f"Connected to {self.peer} but connection died. (#4.4.2)")

    def timed_out(self) -> list[Event]:
        """The transport's reply timer (qmail ``timeoutremote``) expired."""
        if self.state == State.QUIT:
            self.state = State.CLOSED
            return [Closed()]
        return self._abort(f"Connected to {self.peer} but the remote host timed out. (#4.4.2)")

    # ---------------------------------------------------------------- session
    def tls_established(self) -> None:
        """The transport finished the TLS handshake: say EHLO again (RFC 3207 4.2)."""
        if self.state != State.TLS:
            raise LocalProtocolError(f"tls_established in state {self.state.name}")
        self.tls_active = True
        self._parser = ReplyParser()  # RFC 3207: discard anything from before TLS
        self._send_line(f"EHLO {self.helo}\r\n", State.EHLO)

    def send_quit(self) -> None:
        """Queue QUIT; ``Closed`` follows its reply (or the connection's end)."""
        if self.state in (State.QUIT, State.CLOSED):
            return
        self._out.append(b"QUIT\r\n")
        self.state = State.QUIT

    def _send_line(self, line: str, state: State) -> None:
        self._out.append(line.encode("utf-8"))
        self.state = state

    def _on_session_reply(self, reply: Reply, events: list[Event]) -> None:
        state, code = self.state, reply.code
        if state == State.GREETING:
            if code == 220:
                self._send_line(f"EHLO {self.helo}\r\n", State.EHLO)
            else:
                self._fail_session(reply, Stage.GREETING, "but greeting failed.", events)
        elif state == State.EHLO:
            if code == 250:
                self.extensions = parse_extensions(reply)
                if self._want_tls and self.extensions.starttls and not self.tls_active:
                    self._send_line("STARTTLS\r\n", State.STARTTLS)
                else:
                    self._ready(events)
            elif 500 <= code < 600 and not self.tls_active:
                self._send_line(f"HELO {self.helo}\r\n", State.HELO)
            else:
                self._fail_session(reply, Stage.EHLO, "but my name was rejected.", events)
        elif state == State.HELO:
            if code == 250:
                self.extensions = Extensions()
                self._ready(events)
            else:
                self._fail_session(reply, Stage.EHLO, "but my name was rejected.", events)
        elif state == State.STARTTLS:
            if code == 220:
                self.state = State.TLS
                events.append(StartTLS())
            elif code == 421:
                self._fail_session(reply, Stage.STARTTLS, "but STARTTLS failed.", events)
            else:  # RFC 3207 4: the session stays valid; go on in plaintext
                self._ready(events)
        elif state == State.QUIT:
            self.state = State.CLOSED
            events.append(Closed())
        elif state == State.READY and code == 421:
            self._fail_session(reply, Stage.IDLE, "but the remote host closed the session.", events)
        else:
            events.extend(self._abort(f"Connected to {self.peer} but the remote host sent a reply "
                                      f"out of sequence: {reply.text[:200]!r}. (#4.4.2)"))

    def _ready(self, events: list[Event]) -> None:
        self.state = State.READY
        events.append(SessionReady(self.extensions))

    def _fail_session(self, reply: Reply, stage: Stage, what: str, events: list[Event]) -> None:
        outcome = self._said(reply, stage, f"Connected to {self.peer} {what}")
        if isinstance(outcome, Delivered):  # a 2xx where a failure was due
            outcome = TempFail(outcome.text, "4.5.0")
        if self.state == State.TRANSACTION:
            self._finish(events, outcome if isinstance(outcome, TempFail) else
                         TempFail(outcome.reason, "4" + outcome.dsn[1:]))
        events.append(SessionFailed(outcome, stage))
        self._out.append(b"QUIT\r\n")
        self.state = State.CLOSED

    def _abort(self, reason: str) -> list[Event]:
        """End the session at once: everything in flight is deferred."""
        events: list[Event] = []
        if self.state == State.CLOSED:
            return events
        stage = {State.GREETING: Stage.GREETING, State.EHLO: Stage.EHLO, State.HELO: Stage.EHLO,
                 State.STARTTLS: Stage.STARTTLS, State.TLS: Stage.STARTTLS,
                 State.READY: Stage.IDLE}.get(self.state)
        if self.state == State.TRANSACTION:
            kind = self._cmds[self._next][0] if self._next < len(self._cmds) else _DOT
            stage = _STAGE[kind]
            if self._dot_sent and not self._dot_empty and not self._out:  # body on the wire
                reason = "Possible duplicate! " + reason
        self._out = []  # nothing more goes to a peer we gave up on
        outcome = TempFail(reason, "4.4.2")
        if self.state == State.TRANSACTION:
            self._finish(events, outcome)
        events.append(SessionFailed(outcome, stage or Stage.MAIL))
        self.state = State.CLOSED
        return events

    def _said(self, reply: Reply, stage: Stage, prefix: str) -> Outcome:
        o = classify_reply(reply.code, reply.text, stage)
        text = f"{prefix}\nRemote host said: {reply.text}"
        return Delivered(text) if isinstance(o, Delivered) else type(o)(text, o.dsn)

    # ---------------------------------------------------------------- transactions
    def start_transaction(self, sender: str, recipients: Sequence[str],
                          body: bytes | Sequence[bytes]) -> list[Event]:
        """Queue one mail transaction; ``body`` is ``prepare_body()`` output (or buffers
        that concatenate to it, written in turn). Returns events at once only when nothing
        needs to be sent (body over the server's SIZE limit, or no sendable recipient)."""
        if self.state != State.READY:
            raise LocalProtocolError(f"start_transaction in state {self.state.name}")
        if not recipients:
            raise LocalProtocolError("a transaction needs at least one recipient")
        self._reset_transaction()
        n = len(recipients)
        self._outcomes = outcomes = [None] * n
        ext = self.extensions
        one = type(body) is bytes  # the fast path: one prepared buffer
        size = len(body) if one else sum(map(len, body))  # RFC 1870 SIZE: every buffer
        if ext.size and size > ext.size:
            fail = PermFail(f"Connected to {self.peer} but the message ({size} bytes) exceeds "
                            f"its size limit of {ext.size} bytes. (#5.3.4)", "5.3.4")
            return [TransactionDone((fail,) * n, False)]
        if "\r" in sender or "\n" in sender or ">" in sender:
            fail = PermFail("The envelope sender contains a forbidden character. (#5.1.7)", "5.1.7")
            return [TransactionDone((fail,) * n, False)]
        params = ""
        if ext.size is not None:
            params = f" SIZE={size}"
        if ext.eightbitmime and not (body.isascii() if one else all(map(bytes.isascii, body))):
            params += " BODY=8BITMIME"
        cmds = self._cmds
        lines = [f"MAIL FROM:<{sender}>{params}\r\n"]
        if self._need_rset:
            cmds.append((_RSET, 0))
            lines.insert(0, "RSET\r\n")
        cmds.append((_MAIL, 0))
        for i, rcpt in enumerate(recipients):
            if "\r" in rcpt or "\n" in rcpt or ">" in rcpt:
                outcomes[i] = PermFail("The recipient address contains a forbidden character. "
                                       "(#5.1.3)", "5.1.3")
                continue
            cmds.append((_RCPT, i))
            lines.append(f"RCPT TO:<{rcpt}>\r\n")
        if len(cmds) == (2 if self._need_rset else 1):  # no sendable recipient
            return [TransactionDone(tuple(outcomes), False)]
        cmds.append((_DATA, 0))
        lines.append("DATA\r\n")
        self._body = body
        self.state = State.TRANSACTION
        if ext.pipelining:  # RFC 2920 3.1: MAIL, RCPTs and DATA in one group
            self._out.append("".join(lines).encode("utf-8"))
            self._sent = len(cmds)
        else:
            self._lines = [line.encode("utf-8") for line in lines]
            self._send_next()
        return []


    def _send_next(self) -> None:
        self._out.append(self._lines[self._sent])
        self._sent += 1

    def _on_transaction_reply(self, reply: Reply, events: list[Event]) -> None:
        i = self._next
        if i >= self._sent:
            events.extend(self._abort(f"Connected to {self.peer} but the remote host sent a reply "
                                      f"out of sequence: {reply.text[:200]!r}. (#4.4.2)"))
            return
        kind, index = self._cmds[i]
        self._next = i + 1
        code = reply.code
        if code == 421:
            self._fail_session(reply, _STAGE[kind], "but the remote host closed the session.",
                               events)
            return
        if kind == _MAIL:
            if code // 100 != 2:
                self._mail_failure = self._said(reply, Stage.MAIL,
                                                f"Connected to {self.peer} but sender was rejected.")
        elif kind == _RCPT:
            if self._mail_failure is not None:
                pass  # the 503 that follows a failed MAIL says nothing about the recipient
            elif code // 100 == 2:
                self._accepted += 1
            else:
                self._outcomes[index] = self._said(reply, Stage.RCPT,
                                                   f"{self.peer} does not like recipient.")
        elif kind == _DATA:
            self._on_data_reply(reply, events)
            return
        elif kind == _DOT:
            self._on_dot_reply(reply, events)
            return
        elif code // 100 != 2:  # RSET refused: nothing sane can follow
            self._fail_session(reply, Stage.RSET, "but RSET failed.", events)
            return
        if self._sent < len(self._cmds):  # lock-step
            if self._mail_failure is not None:
                self._finish(events, self._mail_failure)
            elif kind == _RCPT and self._cmds[self._sent][0] == _DATA and not self._accepted:
                self._finish(events, None)  # every RCPT failed: never send DATA
            else:
                self._send_next()

    def _on_data_reply(self, reply: Reply, events: list[Event]) -> None:
        if reply.code == 354:
            self._cmds.append((_DOT, 0))
            self._sent += 1
            if self._mail_failure is not None or not self._accepted:
                self._out.append(b".\r\n")  # RFC 2920 3.1: an empty message, then we drop it
                self._dot_empty = True
            elif type(self._body) is bytes:
                self._out.append(self._body)
            else:
                self._out.extend(self._body)
            self._dot_sent = True
            events.append(DataSent())
            return
        if self._mail_failure is not None:
            self._finish(events, self._mail_failure)
        elif self._accepted:
            self._finish(events, self._said(reply, Stage.DATA,
                                            f"{self.peer} failed on DATA command."))
        else:
            self._finish(events, None)

    def _on_dot_reply(self, reply: Reply, events: list[Event]) -> None:
        if self._mail_failure is not None:
            self._finish(events, self._mail_failure)
        elif self._dot_empty:
            self._finish(events, None)
        elif reply.code // 100 == 2:
            self._finish(events, Delivered(f"{self.peer} accepted message.\n"
                                           f"Remote host said: {reply.text}"))
        else:
            self._finish(events, self._said(reply, Stage.DOT,
                                            f"{self.peer} failed after I sent the message."))

    def _finish(self, events: list[Event], rest: Outcome | None) -> None:
        """Complete the transaction; recipients without an outcome get ``rest``."""
        outcomes = self._outcomes
        if rest is not None:
            outcomes = [rest if o is None else o for o in outcomes]
        events.append(TransactionDone(tuple(outcomes), self._dot_sent))
        # once the dot was answered the server has reset (RFC 5321 4.1.1.4); else RSET first
        self._need_rset = not self._dot_sent
        self._body = b""
        self.state = State.READY
