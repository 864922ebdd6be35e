"""The qmail-queue shim: qmail-queue(8)'s interface, Received line and exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from mta.queue import clean_queue, message_path
from queue_shim import (
    RECEIVED_RE, SHIM, assert_queue_empty, envelope, files, messages, recipients, run_shim,
    shim_env, wait_for,
)

MESSAGE = b"Subject: test\n\nHello.\n"

def test_queues_message_with_one_received_line(root: Path, tmp_path: Path) -> None:
    rcpts = ["a@x.test", "B@Y.test", "user@[127.0.0.1]"]
    proc = run_shim(root, MESSAGE, envelope("sender@s.test", rcpts), tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    [(msg_id, sender, size, nrcpt)] = messages(root)
    assert (sender, nrcpt) == ("sender@s.test", 3)
    body = message_path(root, msg_id).read_bytes()
    m = RECEIVED_RE.match(body)
    assert m, body[:120]
    assert int(m.group(2)) == os.getuid()
    assert body[m.end():] == MESSAGE and size == len(body)
    assert body.count(b"Received:") == 1
    assert recipients(root, msg_id) == rcpts
    assert files(root, "tmp") == []


def test_empty_sender_and_trailing_bytes_after_the_end(root: Path, tmp_path: Path) -> None:
    env = envelope("", ["a@x.test"]) + b"ignored after the final NUL" * 100
    proc = run_shim(root, b"", env, tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    assert [(m[1], m[3]) for m in messages(root)] == [("", 1)]


@pytest.mark.parametrize("env_bytes, code", [
    (b"", 54),                                        # EOF before anything
    (b"Fa@b.test", 54),                               # sender without NUL
    (b"Fa@b.test\0Tc@d.test\0", 54),                  # missing final NUL
    (b"Fa@b.test\0Tc@d.te", 54),                      # truncated inside a recipient
    (b"Xa@b.test\0Tc@d.test\0\0", 91),                # no F record
    (b"Fa@b.test\0Tc@d.test\0Ue@f.test\0\0", 91),     # record not starting with T
    (b"Fa@b.test\0T\0\0", 91),                        # empty T record
    (b"Fa@b.test\0T\xff\xfe@d.test\0\0", 91),         # recipient not UTF-8
    (b"F" + b"s" * 1003 + b"\0Tc@d.test\0\0", 11),    # sender over the limit
    (b"Fa@b.test\0T" + b"r" * 1003 + b"\0\0", 11),    # recipient over the limit
    (b"Fa@b.test\0T" + b"r" * 5000, 11),              # over the limit and no NUL at all
])
def test_bad_envelopes_give_qmails_code_and_leave_nothing(
        root: Path, tmp_path: Path, env_bytes: bytes, code: int) -> None:
    proc = run_shim(root, MESSAGE, env_bytes, tmp_path / "s")
    assert proc.returncode == code, proc.stderr
    assert_queue_empty(root)
    assert files(root, "tmp") == []


def test_address_of_exactly_the_limit_is_accepted(root: Path, tmp_path: Path) -> None:
    addr = "r" * 990 + "@example.org"  # 1002 bytes
    proc = run_shim(root, MESSAGE, envelope(addr, [addr]), tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    [(msg_id, *_)] = messages(root)
    assert recipients(root, msg_id) == [addr]


def _run_with(root: Path, stdin, stdout, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run(SHIM, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                          env=shim_env(root), preexec_fn=preexec, timeout=60)


def test_unreadable_message_is_54(root: Path, tmp_path: Path) -> None:
    (tmp_path / "env").write_bytes(envelope("a@b", ["c@d"]))
    fd = os.open(tmp_path / "wo", os.O_WRONLY | os.O_CREAT, 0o600)  # read() -> EBADF
    try:
        with open(tmp_path / "env", "rb") as env:
            proc = _run_with(root, fd, env)
    finally:
        os.close(fd)
    assert proc.returncode == 54, proc.stderr
    assert_queue_empty(root)
    assert files(root, "tmp") == []


def test_closed_envelope_descriptor_is_54(root: Path, tmp_path: Path) -> None:
    (tmp_path / "m").write_bytes(MESSAGE)
    with open(tmp_path / "m", "rb") as m:
        proc = _run_with(root, m, subprocess.DEVNULL, preexec=lambda: os.close(1))
    assert proc.returncode == 54, proc.stderr
    assert_queue_empty(root)
    assert files(root, "tmp") == []


def test_missing_instance_is_61_and_missing_queue_is_62(tmp_path: Path) -> None:
    env = envelope("a@b", ["c@d"])
    assert run_shim(tmp_path / "absent", MESSAGE, env, tmp_path / "s").returncode == 61
    (tmp_path / "bare").mkdir()
    assert run_shim(tmp_path / "bare", MESSAGE, env, tmp_path / "s").returncode == 62
    assert not (tmp_path / "bare" / "queue").exists()


def test_suicide_timer_exits_52_and_cleanup_removes_the_leftover(root: Path) -> None:
    """SIGALRM stands in for the 24 h alarm: sent while the shim waits for input."""
    proc = subprocess.Popen(SHIM, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=shim_env(root))
    try:
        proc.stdin.write(MESSAGE)
        proc.stdin.flush()
        # The tmp file exists only after the handler is installed and the body started.
        wait_for(lambda: files(root, "tmp"), 30, "the shim to create its tmp file")
        proc.send_signal(signal.SIGALRM)
        assert proc.wait(timeout=30) == 52
    finally:
        proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert_queue_empty(root)
    assert len(files(root, "tmp")) == 1  # qmail-queue does not clean up on SIGALRM
    assert clean_queue(root) == 1
    assert files(root, "tmp") == []


def test_many_recipients_stream_through(root: Path, tmp_path: Path) -> None:
    rcpts = [f"user{i}@d{i % 97}.example" for i in range(30000)]
    proc = run_shim(root, MESSAGE, envelope("s@x", rcpts), tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    [(msg_id, _, _, nrcpt)] = messages(root)
    assert nrcpt == 30000
    assert recipients(root, msg_id) == rcpts
