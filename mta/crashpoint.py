"""Named crash checkpoints, a test seam (DESIGN.md "Test seams").

``crash_point(name)`` kills the calling process with SIGKILL when the environment
variable ``MTA_CRASH_AT`` names that checkpoint (a comma-separated list is
allowed). Outside tests the variable is unset and the call costs one dict lookup.

Checkpoints in use: ``after_mess_fsync``, ``after_intd_fsync`` (recipient rows
written, before commit), ``after_commit``, ``before_250``, ``after_preprocess``,
``maildir_before_link``, ``remote_after_dot``.

Aliases (the security matrix's names, QF2): ``after_commit_link`` arms
``after_commit`` (qmail-queue's last step is the link into todo/; ours is the
COMMIT). Both names stay valid.
"""

from __future__ import annotations

import os
import signal

ALIASES = {"after_commit_link": "after_commit"}

_ARMED = frozenset(ALIASES.get(n, n)
                   for n in filter(None, os.environ.get("MTA_CRASH_AT", "").split(",")))


def crash_point(name: str) -> None:
    """Die at once, as a power cut would, if the test armed checkpoint ``name``."""
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
