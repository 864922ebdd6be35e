"""Per receiving host state: its queue of transactions and its adaptive concurrency.

Each receiving host (IP and port) has a ceiling on simultaneous connections that
starts at ``concurrencyperhost`` (or its ``control/hostconcurrency`` override) and
adapts as TCP's congestion window does (additive increase, multiplicative
decrease):

- a connection refused, timed out, or answered with 4xx/421 at the greeting while
  other connections to the host work: the ceiling drops to the number that work
  (at least 1), i.e. what the host has shown it accepts;
- every ``GROW_AFTER`` successful transactions since the last change, the
  ceiling climbs by one, up to the configured maximum.

So a host that turns away sessions beyond its third costs one refused connection
per ``GROW_AFTER`` deliveries at most. An optional message rate (``control/hostrate``,
``host:N``) spaces the transactions to a host ``1/N`` seconds apart, across all of
its connections. A host that fails when nothing to it works
(no established connection) is "down": qmail's timeout table marks it for
``DOWN_SECONDS`` (doubling on each consecutive failure, capped), during which its
work is handed to the next MX or deferred without a connection attempt.
A host whose TLS handshake failed is not offered STARTTLS again for
``TLS_RETRY_AFTER`` seconds (each such try costs a connection and a reconnect).

Pure state: no I/O, the clock passed in. Public: Txn, HostState.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["Txn", "HostState", "GROW_AFTER", "TLS_RETRY_AFTER"]

GROW_AFTER = 50
DOWN_SECONDS = 60.0
DOWN_MAX = 3600.0
TLS_RETRY_AFTER = 3600.0


@dataclass(slots=True)
class Txn:
    """One SMTP transaction to make: a message, a sender and its recipients."""

    msg: int
    sender: str
    rcpts: list  # [(rcpt_id, address)]
    dests: list  # remaining destinations after this host that this worker owns
    onward: list = field(default_factory=list)  # then these, owned by other workers


@dataclass(slots=True)
class HostState:
    key: tuple
    max_limit: int
    limit: int = 0
    active: int = 0       # connection tasks running (connecting or connected)
    established: int = 0  # connections past the greeting
    successes: int = 0
    down_until: float = 0.0
    down_for: float = 0.0
    rate: float = 0.0        # messages a second to this host; 0 = no cap (control/hostrate)
    next_slot: float = 0.0   # earliest time the next transaction may start
    plain_until: float = 0.0  # no STARTTLS before this time: a handshake failed
    queue: deque = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.limit = self.limit or self.max_limit

    def wanted(self) -> int:
        """How many more connections this host should get now."""
        return max(0, min(self.limit, len(self.queue)) - self.active)

    def is_down(self, now: float) -> bool:
        return now < self.down_until

    def tls_wanted(self, now: float) -> bool:
        return now >= self.plain_until

    def tls_failed(self, now: float) -> None:
        """A handshake failed (the session went on in plaintext): skip TLS for a while."""
        self.plain_until = now + TLS_RETRY_AFTER

    def connect_failed(self, now: float) -> bool:
        """Record a failure to get a working session; True when the host is now down.

        Called by the failed connection's task while it still counts in ``active``:
        other attempts still under way mean the host may just be busy, not down.
        """
        self.successes = 0
        if self.established > 0 or self.active > 1:
            self.limit = max(1, min(self.limit, self.established))
            return False
        self.limit = max(1, self.limit // 2)
        self.down_for = min(DOWN_MAX, self.down_for * 2 if self.down_for else DOWN_SECONDS)
        self.down_until = now + self.down_for
        return True

    def delay_for_rate(self, now: float) -> float:
        """Seconds to wait before starting a transaction, and book its slot (spacing 1/rate)."""
        if self.rate <= 0:
            return 0.0
        start = max(now, self.next_slot)
        self.next_slot = start + 1.0 / self.rate
        return start - now

    def transaction_done(self) -> None:
        self.down_for = 0.0
        self.successes += 1
        if self.successes >= GROW_AFTER and self.limit < self.max_limit:
            self.limit += 1
            self.successes = 0
