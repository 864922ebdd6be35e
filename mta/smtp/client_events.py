"""Values the sans-I/O SMTP client (``mta.smtp.client``) hands its transport.

What it does: defines ``Extensions`` (what EHLO offered, ``parse_extensions``) and
the events ``SMTPClient.receive_data`` returns: ``SessionReady``, ``StartTLS``,
``DataSent``, ``TransactionDone``, ``SessionFailed``, ``Closed``. All are frozen.

How it fails: ``parse_extensions`` never raises; a malformed ``SIZE`` argument
reads as "SIZE without a limit" (0).
"""

from __future__ import annotations

from dataclasses import dataclass

from mta.interfaces import Outcome, PermFail, TempFail
from mta.smtp.reply_parse import Reply
from mta.status import Stage


@dataclass(frozen=True, slots=True)
class Extensions:
    """What the server's EHLO reply offered (all False/None after HELO)."""

    pipelining: bool = False
    size: int | None = None  # None: SIZE not offered; 0: offered without a limit
    eightbitmime: bool = False
    starttls: bool = False
    names: frozenset[str] = frozenset()


def parse_extensions(reply: Reply) -> Extensions:
    """Extensions named in an EHLO reply (the first line is the greeting text)."""
    names: set[str] = set()
    size = None
    for line in reply.lines[1:]:
        words = line.upper().split()
        if not words:
            continue
        names.add(words[0])
        if words[0] == "SIZE":
            size = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
    return Extensions(
        "PIPELINING" in names, size, "8BITMIME" in names, "STARTTLS" in names, frozenset(names)
    )


@dataclass(frozen=True, slots=True)
class SessionReady:
    extensions: Extensions


@dataclass(frozen=True, slots=True)
class StartTLS:
    pass


@dataclass(frozen=True, slots=True)
class DataSent:
    pass


@dataclass(frozen=True, slots=True)
class TransactionDone:
    outcomes: tuple[Outcome, ...]
    dot_sent: bool


@dataclass(frozen=True, slots=True)
class SessionFailed:
    outcome: TempFail | PermFail
    stage: Stage


@dataclass(frozen=True, slots=True)
class Closed:
    pass


Event = SessionReady | StartTLS | DataSent | TransactionDone | SessionFailed | Closed
