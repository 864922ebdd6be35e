"""qmail-send's log lines, written to ``log/send`` (and optionally stderr).

The lines are qmail-log(5)'s, so tools written for qmail can read them::

    new msg N
    info msg N: bytes B from <sender> qp P uid U
    starting delivery D: msg N to remote|local ADDRESS
    delivery D: success|deferral|failure: TEXT
    status: local a/b remote c/d
    bounce msg N qp P
    end msg N

In the status line, a and c count the recipients handed to the local and remote
workers and not yet answered (qmail counts running deliveries); the workers run at
most b local deliveries and d connections at once, so a or c above its limit means
work is waiting inside a worker.

Text from reports is made "safe" as qmail does: newline becomes ``/``, any
character below 33 or above 126, and ``%``, becomes ``_``. Each line is prefixed
with a Unix timestamp (``@1732550000.123456 ``), as a log writer such as multilog
would add one. Writes are buffered and flushed by the scheduler after each batch.

Public: SendLog(path, echo=False) with one method per line kind; safe(text).
"""

from __future__ import annotations

import sys
import time

__all__ = ["SendLog", "safe"]

_TABLE = {c: "_" for c in range(256) if c < 33 or c > 126}
_TABLE[ord("%")] = "_"
_TABLE[ord("\n")] = "/"
_TRANS = str.maketrans({chr(k): v for k, v in _TABLE.items()})


def safe(text: str) -> str:
    if not text.isascii():  # rare: characters past Latin-1 become "_" (one pass in C otherwise)
        text = "".join(c if ord(c) < 256 else "_" for c in text)
    return text.translate(_TRANS)


class SendLog:
    def __init__(self, path, echo: bool = False, clock=time.time):
        self._f = open(path, "a", encoding="ascii", errors="replace", buffering=1 << 16)
        self._echo = echo
        self._clock = clock
        self._next_delivery = 1

    def _w(self, line: str) -> None:
        text = f"@{self._clock():.6f} {line}\n"
        self._f.write(text)
        if self._echo:
            sys.stderr.write(text)

    def new_msg(self, msg_id: int) -> None:
        self._w(f"new msg {msg_id}")

    def info_msg(self, msg_id: int, nbytes: int, sender: str, qp: int, uid: int) -> None:
        self._w(f"info msg {msg_id}: bytes {nbytes} from <{safe(sender)}> qp {qp} uid {uid}")

    def starting(self, msg_id: int, channel: str, address: str) -> int:
        d = self._next_delivery
        self._next_delivery += 1
        self._w(f"starting delivery {d}: msg {msg_id} to {channel} {safe(address)}")
        return d

    def result(self, delivery: int, kind: str, text: str) -> None:
        """kind: success, deferral or failure."""
        self._w(f"delivery {delivery}: {kind}: {safe(text)}/")

    def status(self, local: int, local_max: int, remote: int, remote_max: int) -> None:
        self._w(f"status: local {local}/{local_max} remote {remote}/{remote_max}")

    def bounce(self, msg_id: int, qp: int) -> None:
        self._w(f"bounce msg {msg_id} qp {qp}")

    def triple_bounce(self, msg_id: int) -> None:
        self._w(f"triple bounce: discarding bounce/{msg_id}")

    def end_msg(self, msg_id: int) -> None:
        self._w(f"end msg {msg_id}")

    def line(self, text: str) -> None:
        """alert: / warning: / status: exiting and other free-form lines."""
        self._w(text)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()
