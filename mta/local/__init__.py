"""Local delivery through dot-qmail files (qmail-local's job).

Every local address is handled like an address of qmail's ``alias`` user: the
instance's ``alias/`` directory is HOME and ``.qmail-LOCAL`` (then the
``-default`` fallbacks) says what to do. See ``deliver`` for the steps,
``dotqmail`` for file selection, ``maildir``/``mbox``/``program`` for the
delivery kinds and ``environment`` for what programs see.

Public:
    deliver_local(job: LocalJob) -> LocalResult
    find_dotqmail(alias_dir, local) -> DotQmailMatch | None
    has_delivery(alias_dir, local) -> bool
"""

from mta.local.deliver import LocalJob, LocalResult, deliver_local
from mta.local.dotqmail import DotQmailError, DotQmailMatch, find_dotqmail, has_delivery

__all__ = [
    "DotQmailError",
    "DotQmailMatch",
    "LocalJob",
    "LocalResult",
    "deliver_local",
    "find_dotqmail",
    "has_delivery",
]
