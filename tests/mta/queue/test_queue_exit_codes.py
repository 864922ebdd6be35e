"""qmail-queue's exit codes that need a trigger: the QF2 alias, QF8 on the envelope
side (the COMMIT fails), 51, 64 and 81. Each failure must leave nothing queued.

Codes not tested here, and why: 52 (the suicide timer) and 54/61/62/91/11 are in
test_queue_shim.py; 55 is "unable to read a configuration file", which
qmail-queue itself never uses (ours only in null-client mode, test_null_client.py).
51 has no trigger in direct mode (message and envelope are streamed, nothing grows
with their size); it is triggered in socket mode, which reads the message into memory.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
from pathlib import Path

from mta.queue import clean_queue, message_path
from queue_shim import (
    RECEIVED_RE, SHIM, assert_queue_empty, envelope, files, messages, recipients, run_shim,
    shim_env,
)

MESSAGE = b"Subject: codes\n\n" + b"body line\n" * 100
RCPTS = [f"u{i}@d{i % 3}.test" for i in range(20)]


def _next_injection_works(root: Path, scratch: Path) -> None:
    proc = run_shim(root, b"after\n", envelope("a@b", ["c@d"]), scratch)
    assert proc.returncode == 0, proc.stderr
    assert messages(root)[-1][3] == 1


def test_after_commit_link_is_the_matrix_name_of_after_commit(root: Path, tmp_path: Path) -> None:
    proc = run_shim(root, MESSAGE, envelope("s@x", RCPTS), tmp_path / "s",
                    MTA_CRASH_AT="after_commit_link")
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    assert clean_queue(root) == 0  # committed: nothing of it is a leftover
    [(msg_id, sender, size, nrcpt)] = messages(root)
    assert (sender, nrcpt) == ("s@x", len(RCPTS)) and recipients(root, msg_id) == RCPTS
    body = message_path(root, msg_id).read_bytes()
    assert RECEIVED_RE.match(body) and body.endswith(MESSAGE) and size == len(body)


def test_qf8_commit_io_error_exits_53_and_leaves_nothing(root: Path, tmp_path: Path) -> None:
    proc = run_shim(root, MESSAGE, envelope("s@x", RCPTS), tmp_path / "s",
                    MTA_FAULT="commit_eio")
    assert proc.returncode == 53, proc.stderr
    assert b"disk I/O error" in proc.stderr
    assert_queue_empty(root)  # no rows, and the body already renamed to mess/N is gone
    assert files(root, "tmp") == []
    assert clean_queue(root) == 0  # the injector cleaned up after itself
    _next_injection_works(root, tmp_path / "s")


def test_internal_bug_exits_81_and_leaves_nothing(root: Path, tmp_path: Path) -> None:
    proc = run_shim(root, MESSAGE, envelope("s@x", RCPTS), tmp_path / "s",
                    MTA_FAULT="internal_bug")
    assert proc.returncode == 81, proc.stderr
    assert b"internal error" in proc.stderr
    assert_queue_empty(root)
    assert files(root, "tmp") == []
    _next_injection_works(root, tmp_path / "s")


def test_body_that_cannot_enter_mess_exits_64(root: Path, tmp_path: Path) -> None:
    # The next id is 1 (fresh queue); a directory in its place makes the rename
    # tmp -> mess/1 fail with EISDIR, whoever we run as.
    blocker = root / "queue" / "mess" / "1"
    blocker.mkdir()
    (blocker / "keep").write_text("x")
    proc = run_shim(root, MESSAGE, envelope("s@x", RCPTS), tmp_path / "s")
    assert proc.returncode == 64, proc.stderr
    assert messages(root) == [] and files(root, "tmp") == []
    assert files(root, "mess") == ["1"] and os.listdir(blocker) == ["keep"]
    (blocker / "keep").unlink()
    blocker.rmdir()
    _next_injection_works(root, tmp_path / "s")


def test_out_of_memory_exits_51(root: Path, tmp_path: Path) -> None:
    """Socket mode holds the message in memory: a 400 MB message under a 96 MB
    address-space limit runs out of memory while it is read."""
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(400 << 20)  # sparse: costs no disk
    env_file = tmp_path / "env"
    env_file.write_bytes(envelope("s@x", ["r@y"]))
    limit = 96 << 20

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    with open(big, "rb") as m, open(env_file, "rb") as e:
        proc = subprocess.run(SHIM, stdin=m, stdout=e, stderr=subprocess.PIPE,
                              env=shim_env(root, MTA_QQ="socket"), preexec_fn=cap, timeout=120)
    assert proc.returncode == 51, proc.stderr
    assert_queue_empty(root)
    assert files(root, "tmp") == []
