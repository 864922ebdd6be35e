"""qmail-queue: queue one message, with qmail-queue(8)'s exact interface.

Input: the message on fd 0, read to EOF first; then the envelope on fd 1:
``F`` sender ``\\0``, ``T`` recipient ``\\0`` for each recipient, and one more
``\\0``. The envelope is parsed while it is read (streamed into the database), so
a million recipients cost no memory. Exactly one line is prepended to the message:
``Received: (qmail PID invoked by uid UID); D Mon YYYY HH:MM:SS -0000``.
Addresses are stored as given. The instance is ``--root DIR`` (or ``--root=DIR``)
when that is the first argument (our extension; qmail-queue takes no arguments and
any other argument is ignored, as qmail-queue ignores them), else ``$MTA_ROOT``,
else ``./var``.

When this user may not write the queue (or ``MTA_QQ=socket`` asks for it), the
message goes to the queue owner over ``queue/lock/qq.sock`` instead (DESIGN.md:
qmail-queue works whether or not the daemons run): message and envelope are then
read into memory, and the exit code is the one the owner answered with (71 when
it cannot be reached, as qmail-qmqpc).

Output: nothing on fd 1 (it is the envelope); on failure one diagnostic line on
fd 2 (qmail-queue prints nothing; fd 2 is otherwise unused by the interface).

Exit codes (qmail's; 11..40 permanent, the rest temporary). Any code but 0
leaves nothing in the queue:
    0 queued           11 address longer than 1002 bytes    51 out of memory
    52 timeout (24 h suicide timer, or the queue stayed locked)
    53 write error (disk full, EIO)   54 cannot read the message or envelope,
    including EOF before the envelope's final NUL   61 instance root missing
    62 queue missing or unusable      64 cannot move the body into queue/mess/
    81 internal bug    91 envelope format error (record not F/T, empty recipient,
    address not UTF-8)

Kept light on purpose (no click, no control files): it runs once per injection;
see ``python -X importtime -m cli.qmail_queue``.
"""

from __future__ import annotations

import os
import signal
import sys

DEATH = 86400  # qmail-queue's suicide timer, seconds


def _die_timeout(signum, frame) -> None:
    os._exit(52)  # qmail: "thou shalt not clean up here"; clean_queue will


def main() -> None:
    signal.signal(signal.SIGALRM, _die_timeout)
    signal.alarm(DEATH)
    try:
        code = _run()
    except MemoryError:
        code = 51
    except Exception as exc:  # a bug: report it, exit as qmail-queue's sigbug does
        _complain(f"internal error: {exc!r}")
        code = 81
    sys.exit(code)


def _run() -> int:
    import time
    from mta.queue.envelope import read_envelope
    from mta.queue.errors import QueueError, ReadError
    from mta.queue.inject import commit_body, qmail_received, write_body
    from mta.queue.store import open_queue

    root = find_root(sys.argv[1:])
    if os.geteuid() == 0:  # root first becomes the queue owner (DESIGN.md)
        from mta.privsep import become_queue_owner

        become_queue_owner(root)
    if os.path.exists(os.path.join(root, "control", "qmqpservers")):
        return _run_qmqpc(root)  # a null client (mini-qmail): hand everything over
    if os.environ.get("MTA_QQ") == "socket" or not _may_write(root):
        return _run_socket(root)
    try:
        conn = open_queue(root, create=False)
        try:
            try:
                message = open(0, "rb", buffering=0, closefd=False)
            except OSError as exc:
                raise ReadError(f"cannot read the message: {exc}") from exc
            body = write_body(root, message, qmail_received(os.getpid(), os.getuid(), time.time()))
            try:
                sender, recipients = read_envelope(lambda n: os.read(1, n))
            except BaseException:
                body.discard()
                raise
            commit_body(root, body, sender, recipients, conn=conn)
        finally:
            conn.close()
    except QueueError as exc:
        _complain(str(exc))
        return exc.exit_code
    return 0


def find_root(argv: list[str]) -> str:
    """``--root DIR`` / ``--root=DIR`` as first argument, else $MTA_ROOT, else var."""
    if argv[:1] == ["--root"] and len(argv) > 1:
        return argv[1]
    if argv and argv[0].startswith("--root=") and len(argv[0]) > len("--root="):
        return argv[0][len("--root="):]
    return os.environ.get("MTA_ROOT") or "var"


def _may_write(root: str) -> bool:
    q = os.path.join(root, "queue")
    return (not os.path.exists(q)  # let open_queue report what is missing
            or os.access(os.path.join(q, "tmp"), os.W_OK)
            and os.access(os.path.join(q, "queue.db"), os.W_OK))


def _read_all() -> tuple[list[bytes], str, list[str]]:
    import time
    from mta.queue.envelope import read_envelope
    from mta.queue.errors import ReadError
    from mta.queue.inject import qmail_received

    chunks = [qmail_received(os.getpid(), os.getuid(), time.time())]
    try:
        while data := os.read(0, 1 << 16):
            chunks.append(data)
    except OSError as exc:
        raise ReadError(f"cannot read the message: {exc}") from exc
    sender, recipients = read_envelope(lambda n: os.read(1, n))
    return chunks, sender, list(recipients)


def _run_qmqpc(root: str) -> int:
    """qmail-qmqpc: send to the first server in control/qmqpservers that answers.

    Exit codes as qmail-qmqpc: 0 accepted; 31 the server refused permanently (D);
    71 refused temporarily (Z); 72 the last server tried timed out at connect, 73
    it refused the connection; 74 connected, then the exchange failed (no reply,
    timeout, malformed reply; the next server is not tried, the message may have
    arrived); 55 control/qmqpservers unusable or empty; 91/54 bad input.
    """
    import asyncio
    from mta.control import ControlError, load_control
    from mta.interfaces import Delivered, PermFail
    from mta.net.qm_client import QmqpStop, qmqp_deliver
    from mta.queue.errors import QueueError

    try:
        servers = list(load_control(root).qmqpservers)
        chunks, sender, recipients = _read_all()
    except ControlError as exc:
        _complain(str(exc))
        return 55
    except QueueError as exc:
        _complain(str(exc))
        return exc.exit_code
    result = asyncio.run(qmqp_deliver(servers, sender, recipients, b"".join(chunks)))
    if isinstance(result.outcome, Delivered):
        return 0
    _complain(result.outcome.reason)
    if result.stop is QmqpStop.ANSWERED:
        return 31 if isinstance(result.outcome, PermFail) else 71
    return {QmqpStop.NO_SERVERS: 55, QmqpStop.CONNECT_TIMEOUT: 72,
            QmqpStop.CONNECT_REFUSED: 73}.get(result.stop, 74)


def _run_socket(root: str) -> int:
    import time
    from mta.qq_client import QqError, socket_path, submit_sync
    from mta.queue.envelope import read_envelope
    from mta.queue.errors import QueueError, ReadError
    from mta.queue.inject import qmail_received

    try:
        chunks = [qmail_received(os.getpid(), os.getuid(), time.time())]
        try:
            while data := os.read(0, 1 << 16):
                chunks.append(data)
        except OSError as exc:
            raise ReadError(f"cannot read the message: {exc}") from exc
        sender, recipients = read_envelope(lambda n: os.read(1, n))
        submit_sync(socket_path(root), sender, list(recipients), b"".join(chunks))
    except (QueueError, QqError) as exc:
        _complain(str(exc))
        return exc.exit_code
    return 0


def _complain(text: str) -> None:
    try:
        os.write(2, f"qmail-queue: {text}\n".encode(errors="replace"))
    except OSError:
        return  # no stderr: the exit code says it all


if __name__ == "__main__":
    main()
