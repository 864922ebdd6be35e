"""Queue failures, each carrying the qmail-queue(8) exit code it maps to.

Every way an injection can fail is one ``QueueError`` subclass whose ``exit_code``
is the code qmail-queue would exit with, so the ``qmail-queue`` shim exits with
``err.exit_code`` and a listener maps it to an SMTP reply as qmail.c does
(codes 11..40 permanent, everything else temporary; see ``permanent``).

Public:
    QueueError            base class; exit_code 81 (internal bug)
    AddressTooLong        11  an address is longer than ADDRESS_LIMIT bytes
    OutOfMemory           51
    QueueTimeout          52  the 24 h suicide timer, or the database stayed locked
    WriteError            53  write/fsync failed: disk full, EIO
    ReadError             54  the message or envelope could not be read (EOF, EIO)
    HomeError             61  the instance root is missing or unusable
    QueueDirError         62  queue/ or queue.db is missing or unusable
    MessDirError          64  could not move the body into queue/mess/
    EnvelopeFormatError   91  a record does not start with F/T, an empty recipient...
    ADDRESS_LIMIT         1002: longest address in bytes (qmail-queue's ADDR 1003 - 1)

An injection that raises any of these has left nothing visible in the queue.
"""

from __future__ import annotations

__all__ = [
    "ADDRESS_LIMIT", "QueueError", "AddressTooLong", "OutOfMemory", "QueueTimeout",
    "WriteError", "ReadError", "HomeError", "QueueDirError", "MessDirError",
    "EnvelopeFormatError",
]

# qmail-queue.c reads at most ADDR-1 = 1002 bytes before the terminating NUL.
ADDRESS_LIMIT = 1002


class QueueError(Exception):
    """An injection failed; nothing was queued."""

    exit_code = 81

    @property
    def permanent(self) -> bool:
        """qmail's rule: exit codes 11..40 are permanent, the rest temporary."""
        return 11 <= self.exit_code <= 40


class AddressTooLong(QueueError):
    exit_code = 11


class OutOfMemory(QueueError):
    exit_code = 51


class QueueTimeout(QueueError):
    exit_code = 52


class WriteError(QueueError):
    exit_code = 53


class ReadError(QueueError):
    exit_code = 54


class HomeError(QueueError):
    exit_code = 61


class QueueDirError(QueueError):
    exit_code = 62


class MessDirError(QueueError):
    exit_code = 64


class EnvelopeFormatError(QueueError):
    exit_code = 91
