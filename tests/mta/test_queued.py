"""The queue owner (mta.queued): socket protocol, group commit, crash safety, listeners
through it end to end, and ``mta start`` restarting it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mta.netstring import encode_netstring
from mta.qq_client import QqClient, QqError, encode_request, socket_path, submit_sync
from mta.queue import clean_queue, message_path, open_queue
from mta.queued import QueueOwner

BIN = Path(sys.executable).parent
CRASH_POINTS = ["after_mess_fsync", "after_intd_fsync", "after_commit",
                "after_batch_commit_before_reply"]


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def connectable(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def rows(root: Path) -> list[tuple]:
    conn = open_queue(root)
    try:
        return conn.execute("SELECT id, sender, qp, nrcpt FROM messages ORDER BY id").fetchall()
    finally:
        conn.close()


def rcpts(root: Path, msg_id: int) -> list[str]:
    conn = open_queue(root)
    try:
        return [a for (a,) in conn.execute("SELECT addr FROM recipients WHERE msg = ?"
                                           " ORDER BY id", (msg_id,))]
    finally:
        conn.close()


class Owner:
    """``python -m mta.queued`` as a real process."""

    def __init__(self, root: Path, *args: str, **env: str) -> None:
        clean = {k: v for k, v in os.environ.items() if k not in ("MTA_CRASH_AT", "MTA_FAULT")}
        self.proc = subprocess.Popen([sys.executable, "-m", "mta.queued", "--root", str(root),
                                      *args], env=dict(clean, **env), stderr=subprocess.PIPE)
        self.path = socket_path(root)
        wait_until(lambda: connectable(self.path) or self.proc.poll() is not None, 15,
                   "the queue owner's socket")
        assert self.proc.poll() is None, self.proc.stderr.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.proc.stderr.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "var"
    r.mkdir()
    open_queue(r).close()
    return r


@pytest.fixture
def owner(root: Path):
    o = Owner(root)
    yield o
    o.stop()


def test_k_only_after_commit_and_the_row_is_the_owners(root: Path, owner: Owner) -> None:
    msg_id = submit_sync(owner.path, "s@x.test", ["a@d.test", "b@e.test"], b"Subject: 1\n\nhi\n")
    assert rows(root) == [(msg_id, "s@x.test", owner.proc.pid, 2)]
    assert message_path(root, msg_id).read_bytes() == b"Subject: 1\n\nhi\n"
    assert rcpts(root, msg_id) == ["a@d.test", "b@e.test"]


def _replies(sock: socket.socket, n: int) -> list[bytes]:
    buf, out = b"", []
    sock.settimeout(10)
    while len(out) < n:
        m = re.match(rb"(\d+):", buf)
        if m and len(buf) > m.end() + int(m[1]):
            end = m.end() + int(m[1])
            assert buf[end:end + 1] == b",", buf
            out.append(buf[m.end():end])
            buf = buf[end + 1:]
            continue
        data = sock.recv(4096)
        if not data:
            break
        buf += data
    return out


def test_pipelined_requests_on_one_connection_are_answered_in_order(root, owner) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(owner.path))
        s.sendall(b"".join(b"".join(encode_request("s@x", [f"r{i}@d"], b"Subject: %d\n\n" % i))
                           for i in range(6)))
        replies = _replies(s, 6)
    ids = [int(r[1:]) for r in replies if r.startswith(b"K")]
    assert len(ids) == 6 and ids == sorted(ids), replies
    for i, msg_id in enumerate(ids):
        assert message_path(root, msg_id).read_bytes() == b"Subject: %d\n\n" % i
        assert rcpts(root, msg_id) == [f"r{i}@d"]


GOOD = b"".join(encode_request("s@x", ["r@d"], b"Subject: good\n\n"))
BAD_INPUT = {
    "garbage": b"HELO there\r\n",
    "leading zero": b"05:hello,",
    "missing comma": b"3:abc;",
    "no recipient": encode_netstring(encode_netstring(b"msg") + encode_netstring(b"s@x")),
    "inner garbage": encode_netstring(b"not a netstring at all"),
    "address not utf-8": encode_netstring(encode_netstring(b"msg") + encode_netstring(b"s@x")
                                          + encode_netstring(b"\xff@d")),
    "oversized": b"".join(encode_request("s@x", ["r@d"], b"x" * 5000))[:40],
}


@pytest.mark.parametrize("case", [*BAD_INPUT, "truncated"])
def test_bad_input_is_refused_clearly_and_nothing_is_queued(root: Path, case: str) -> None:
    o = Owner(root, "--max-bytes", "1000")
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(o.path))
            if case == "truncated":
                s.sendall(GOOD[:-7])
                s.shutdown(socket.SHUT_WR)
            else:
                s.sendall(BAD_INPUT[case])
            [reply] = _replies(s, 1)
            assert reply.startswith(b"D91 bad request") or reply.startswith(
                b"D91 request truncated"), reply
            assert s.recv(100) == b"", "the connection stays open after a refusal"
        assert rows(root) == [] and os.listdir(root / "queue" / "mess") == []
        assert isinstance(submit_sync(o.path, "s@x", ["r@d"], b"after\n"), int)
    finally:
        o.stop()


def test_a_refused_envelope_gets_its_code_and_others_in_the_batch_are_queued(root, owner):
    with pytest.raises(QqError) as err:
        submit_sync(owner.path, "s@x", ["x" * 1100 + "@d"], b"long\n")
    assert (err.value.exit_code, err.value.temporary) == (11, False)
    assert len(rows(root)) == 0
    assert isinstance(submit_sync(owner.path, "s@x", ["r@d"], b"ok\n"), int)


def test_concurrent_requests_share_commits(root: Path) -> None:
    async def run() -> tuple[list, int]:
        o = QueueOwner(root)
        await o.start()
        client = QqClient(socket_path(root))
        try:
            ids = await asyncio.gather(*(client.submit("s@x", [f"r{i}@d"], b"m%d\n" % i)
                                         for i in range(40)))
        finally:
            client.close()
            await o.close()
        return ids, o.batches

    ids, batches = asyncio.run(run())
    assert len(set(ids)) == 40 and batches < 40
    for i, msg_id in enumerate(ids):
        assert message_path(root, msg_id).read_bytes() == b"m%d\n" % i


def _clients(path: Path, n: int, each: int, acked: dict, failed: list, go: threading.Event):
    def client(c: int) -> None:
        go.wait(10)
        for k in range(each):
            body = b"Subject: c%d-%d\n\nbody\n" % (c, k)
            try:
                acked[submit_sync(path, "s@x", [f"c{c}@d"], body, timeout=20)] = (body, f"c{c}@d")
            except QqError as exc:
                failed.append(exc)
                return

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n)]
    for t in threads:
        t.start()
    return threads


def _assert_acked_whole_and_nothing_partial(root: Path, acked: dict, in_flight: int) -> None:
    clean_queue(root)
    committed = rows(root)
    ids = {r[0] for r in committed}
    assert set(acked) <= ids, "a message acknowledged with K is missing"
    for msg_id, (body, rcpt) in acked.items():
        assert message_path(root, msg_id).read_bytes() == body
        assert rcpts(root, msg_id) == [rcpt]
    for msg_id, _, _, nrcpt in committed:  # unacknowledged but committed: still whole
        assert nrcpt == 1 and len(rcpts(root, msg_id)) == 1
        assert message_path(root, msg_id).read_bytes().endswith(b"\n\nbody\n")
    assert len(ids - set(acked)) <= in_flight
    assert sorted(os.listdir(root / "queue" / "mess")) == sorted(map(str, ids))
    assert os.listdir(root / "queue" / "tmp") == []


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_owner_killed_at_each_checkpoint_with_clients_in_flight(root: Path, point: str) -> None:
    o = Owner(root, MTA_CRASH_AT=point)
    acked, failed, go = {}, [], threading.Event()
    threads = _clients(o.path, 8, 3, acked, failed, go)
    go.set()
    o.proc.wait(20)
    for t in threads:
        t.join(30)
    o.stop()
    assert o.proc.returncode == -signal.SIGKILL
    assert acked == {} and failed and all(e.temporary for e in failed)
    if point in ("after_mess_fsync", "after_intd_fsync"):
        assert rows(root) == []
    else:
        assert 1 <= len(rows(root)) <= 8
    _assert_acked_whole_and_nothing_partial(root, acked, in_flight=8)
    again = Owner(root)  # restarts clean and serves
    try:
        assert isinstance(submit_sync(again.path, "s@x", ["r@d"], b"again\n"), int)
    finally:
        again.stop()


def test_owner_killed_at_random_under_load_loses_no_acknowledged_message(root: Path) -> None:
    o = Owner(root)
    acked, failed, go = {}, [], threading.Event()
    threads = _clients(o.path, 8, 10_000, acked, failed, go)
    go.set()
    wait_until(lambda: len(acked) >= 40, 30, "40 acknowledged messages")
    o.proc.kill()
    for t in threads:
        t.join(30)
    o.stop()
    assert len(failed) == 8 and all(e.temporary for e in failed)
    _assert_acked_whole_and_nothing_partial(root, dict(acked), in_flight=8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smtp_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(100).startswith(b"220 ")
    except OSError:
        return False


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    r = tmp_path / "inst"
    subprocess.run([str(BIN / "mta"), "--root", str(r), "init", "--me", "mx.test",
                    "--spare-files", "0"],
                   check=True, capture_output=True, timeout=60)
    (r / "alias" / ".qmail-alice").write_text("./Maildir/\n")
    for sub in ("cur", "new", "tmp"):
        (r / "alias" / "Maildir" / sub).mkdir(parents=True)
    return r


def send(port: int, body: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
        c.sendmail("bob@remote.test", ["alice@mx.test"], f"Subject: {body}\r\n\r\n{body}\r\n")


def test_smtplib_to_listener_to_owner_to_queue_row(instance: Path) -> None:
    o = Owner(instance)
    port = free_port()
    listener = subprocess.Popen([sys.executable, "-m", "mta.listen", "--root", str(instance),
                                 "--smtp", f"127.0.0.1:{port}"], stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: smtp_ready(port) or listener.poll() is not None, 15, "the listener")
        send(port, "through the owner")
        [(msg_id, sender, qp, nrcpt)] = rows(instance)
        assert (sender, qp, nrcpt) == ("bob@remote.test", o.proc.pid, 1)
        body = message_path(instance, msg_id).read_bytes()
        assert body.startswith(b"Received: from ") and body.endswith(b"\n\nthrough the owner\n")
    finally:
        listener.terminate()
        listener.wait(20)
        o.stop()


def _children(pid: int, needle: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        if int(stat.rpartition(")")[2].split()[1]) == pid and needle.encode() in cmd:
            found.append(int(entry))
    return found


def _delivered(instance: Path) -> list[bytes]:
    new = instance / "alias" / "Maildir" / "new"
    return sorted(p.read_bytes() for p in new.iterdir())


def test_mta_start_restarts_the_queue_owner_and_nothing_acknowledged_is_lost(instance) -> None:
    port = free_port()
    start = subprocess.Popen([str(BIN / "mta"), "--root", str(instance), "start", "--smtp",
                              f"127.0.0.1:{port}"], start_new_session=True,
                             stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: smtp_ready(port), 20, "mta start's SMTP listener")
        [first] = _children(start.pid, "mta.queued")
        send(port, "before the kill")
        os.kill(first, signal.SIGKILL)
        # A message handed in as the owner dies gets 451 (maybe queued); the client
        # retries, as SMTP clients do; the listener waits for the new owner meanwhile.
        deadline = time.monotonic() + 15
        while True:
            try:
                send(port, "while it restarts")
                break
            except smtplib.SMTPDataError as exc:
                assert exc.smtp_code == 451 and time.monotonic() < deadline, exc
        wait_until(lambda: len(_children(start.pid, "mta.queued")) == 1, 10, "a new owner")
        assert _children(start.pid, "mta.queued") != [first]
        send(port, "after the restart")
        wait_until(lambda: len(_delivered(instance)) == 3, 30, "three deliveries")
        bodies = b"".join(_delivered(instance))
        for text in (b"before the kill", b"while it restarts", b"after the restart"):
            assert bodies.count(b"\n\n" + text + b"\n") == 1, bodies
        start.send_signal(signal.SIGTERM)
        assert start.wait(30) == 0
        assert not socket_path(instance).exists()
    finally:
        if start.poll() is None:
            os.killpg(start.pid, signal.SIGKILL)
            start.wait(10)


def _shim(root: Path, message: bytes, envelope: bytes, tmp: Path) -> subprocess.CompletedProcess:
    (tmp / "m").write_bytes(message)
    (tmp / "e").write_bytes(envelope)
    env = dict(os.environ, MTA_ROOT=str(root), MTA_QQ="socket")
    with open(tmp / "m", "rb") as m, open(tmp / "e", "rb") as e:
        return subprocess.run([sys.executable, "-m", "cli.qmail_queue"], stdin=m, stdout=e,
                              stderr=subprocess.PIPE, env=env, timeout=60)


def test_qmail_queue_shim_hands_the_message_to_the_owner(root: Path, tmp_path: Path) -> None:
    o = Owner(root)
    try:
        proc = _shim(root, b"Subject: shim\n\nhi\n", b"Fs@x\0Ta@d\0Tb@d\0\0", tmp_path)
        assert proc.returncode == 0, proc.stderr
        [(msg_id, sender, qp, nrcpt)] = rows(root)
        assert (sender, qp, nrcpt) == ("s@x", o.proc.pid, 2)
        body = message_path(root, msg_id).read_bytes()
        assert re.match(rb"Received: \(qmail \d+ invoked by uid \d+\); .*\nSubject: shim\n\nhi\n\Z",
                        body), body
        proc = _shim(root, b"x\n", b"Fs@x\0T" + b"y" * 1100 + b"@d\0\0", tmp_path)
        assert proc.returncode == 11 and len(rows(root)) == 1
    finally:
        o.stop()
    proc = _shim(root, b"x\n", b"Fs@x\0Ta@d\0\0", tmp_path)
    assert proc.returncode == 71 and b"cannot reach the queue owner" in proc.stderr
    assert len(rows(root)) == 1
