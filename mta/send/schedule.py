"""Retry timing: qmail-send's schedule and queue lifetime, as pure functions.

qmail's ``nextretry()``: with ``birth`` the injection time and ``c`` = 20 for
remote and 10 for local deliveries, the next attempt after ``now`` is at
``birth + (floor(sqrt(now - birth)) + c)**2``; remote attempts therefore fall at
0 s, 400 s, 1600 s, 3600 s, ... (about 39 in a week). Once ``now`` is past
``birth + queuelifetime`` the attempt in progress is the last: a temporary failure
then becomes permanent.

Public: next_retry(birth, now, remote) -> float; expired(birth, now, lifetime) -> bool;
TOO_LONG (qmail's text for the conversion).
"""

from __future__ import annotations

import math

__all__ = ["next_retry", "expired", "TOO_LONG", "CHANSKIP_REMOTE", "CHANSKIP_LOCAL"]

CHANSKIP_REMOTE = 20
CHANSKIP_LOCAL = 10
TOO_LONG = "I'm not going to try again; this message has been in the queue too long."


def next_retry(birth: float, now: float, remote: bool) -> float:
    """When to try a recipient again after a temporary failure at ``now``."""
    age = max(0.0, now - birth)
    n = math.isqrt(int(age)) + (CHANSKIP_REMOTE if remote else CHANSKIP_LOCAL)
    return birth + n * n


def expired(birth: float, attempt_started: float, lifetime: int) -> bool:
    """Was the attempt made after the queue lifetime ran out (so it was the last)?"""
    return attempt_started > birth + lifetime
