"""Types that cross component boundaries (queue, scheduler, delivery, listeners).

Every component of the mta talks to the others only through these frozen values,
as qmail's programs talk through tiny documented interfaces (qmail-queue(8),
qmail-remote(8) RESULTS):

- ``Envelope``: what the queue is given for one message (sender + recipients).
- ``DeliveryRequest``: what the scheduler hands a delivery worker: one message
  body, one (possibly VERPed) sender and the recipients of one transaction.
- ``Delivered`` / ``TempFail`` / ``PermFail``: the outcome of one attempt for one
  recipient (qmail-remote's r/s/h and K/Z/D). Temporary and permanent failures are
  different types, never a flag on one type.
- ``RecipientResult``: a recipient row id paired with its outcome.

Failure classes are values, not exceptions: exceptions stay inside a component.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True, slots=True)
class Delivered:
    """The receiving side took responsibility (2xx after DATA, program exit 0/99)."""

    text: str = ""


@dataclass(frozen=True, slots=True)
class TempFail:
    """Try again later (4xx, timeout, connection trouble, exit 111)."""

    reason: str
    dsn: str = "4.0.0"


@dataclass(frozen=True, slots=True)
class PermFail:
    """Give up and bounce (5xx, NXDOMAIN, null MX, exit 100)."""

    reason: str
    dsn: str = "5.0.0"


Outcome = Union[Delivered, TempFail, PermFail]


@dataclass(frozen=True, slots=True)
class Envelope:
    """Sender and recipients of one message, as handed to the queue.

    ``sender`` may be empty (a bounce) or ``#@[]`` (a double bounce); a sender
    ending in ``-@[]`` asks for per-recipient VERP.
    """

    sender: str
    recipients: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DeliveryRequest:
    """One transaction's worth of work for a delivery worker.

    ``recipients`` pairs each queue row id with its address; all share
    ``sender`` (already VERP-expanded when the message is VERPed, so a VERPed
    request carries exactly one recipient).
    """

    msg_id: int
    body_path: str
    sender: str
    recipients: tuple[tuple[int, str], ...]
    host: str = ""  # receiving host (IP) or "" for local delivery
    port: int = 25
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """The outcome of one attempt for one recipient row."""

    rcpt_id: int
    outcome: Outcome
