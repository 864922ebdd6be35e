"""Mail-loop detection before local delivery (qmail-local ``bouncexf``).

``check_loop(message_path, dtline)`` reads the header of the stored message (LF
line ends) up to the first empty line and returns a permanent failure when

- a header line is exactly our own ``Delivered-To: local@domain`` line (LP1):
  ``This message is looping: it already has my Delivered-To line. (#5.4.6)``;
- more than ``MAX_HOPS`` (100) header lines start with ``Received:`` or
  ``Delivered-To:`` (case-insensitive), as qmail-smtpd's hop count:
  ``This message is looping: too many hops. (#5.4.6)``.

Memory is bounded whatever the message: lines are read in pieces of at most
``LINE_CAP`` bytes and a longer line is skipped over piece by piece, never held
(LM-6: a 64 MiB header line). Only the first piece of a line is looked at, so a
line too long to be a Delivered-To line still counts as a hop when it starts
with ``Received:``.

Public:
    check_loop(message_path, dtline) -> PermFail | None
Raises OSError when the message cannot be read (the caller makes it temporary).
"""

from __future__ import annotations

from pathlib import Path

from mta.interfaces import PermFail

__all__ = ["LINE_CAP", "MAX_HOPS", "check_loop"]

LINE_CAP = 8192
MAX_HOPS = 100
_HOP_PREFIXES = (b"received:", b"delivered-to:")


def check_loop(message_path: Path, dtline: str) -> PermFail | None:
    """A PermFail when the message is looping, else None (see module doc)."""
    own = dtline.encode("utf-8", "surrogateescape")
    hops = 0
    with open(message_path, "rb") as fh:
        while True:
            line = fh.readline(LINE_CAP)
            if len(line) <= 1:  # empty line (end of header) or EOF, as qmail
                return None
            if not line.endswith(b"\n"):
                _skip_rest_of_line(fh)
            elif line == own:
                return PermFail(
                    "This message is looping: it already has my Delivered-To line. (#5.4.6)",
                    "5.4.6",
                )
            if line[:13].lower().startswith(_HOP_PREFIXES):
                hops += 1
                if hops > MAX_HOPS:
                    return PermFail("This message is looping: too many hops. (#5.4.6)", "5.4.6")


def _skip_rest_of_line(fh) -> None:
    while True:
        piece = fh.readline(LINE_CAP)
        if not piece or piece.endswith(b"\n"):
            return
