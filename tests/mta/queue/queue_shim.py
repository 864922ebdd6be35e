"""Helpers for the queue tests: run the qmail-queue shim, inspect a queue."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

SHIM = [sys.executable, "-m", "cli.qmail_queue"]
RECEIVED_RE = re.compile(
    rb"\AReceived: \(qmail (\d+) invoked by uid (\d+)\); "
    rb"\d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
    rb"\d\d:\d\d:\d\d -0000\n")


def envelope(sender: str, recipients) -> bytes:
    return (b"F" + sender.encode() + b"\0"
            + b"".join(b"T" + r.encode() + b"\0" for r in recipients) + b"\0")


def shim_env(root: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MTA_CRASH_AT", "MTA_FAULT")}
    env["MTA_ROOT"] = str(root)
    env.update(extra)
    return env


def run_shim(root: Path, message: bytes, env_bytes: bytes, scratch: Path,
             **extra: str) -> subprocess.CompletedProcess:
    """Run the shim with ``message`` on fd 0 and ``env_bytes`` on fd 1 (as files)."""
    scratch.mkdir(exist_ok=True)
    mpath, epath = scratch / f"m{time.time_ns()}", scratch / f"e{time.time_ns()}"
    mpath.write_bytes(message)
    epath.write_bytes(env_bytes)
    with open(mpath, "rb") as m, open(epath, "rb") as e:
        return subprocess.run(SHIM, stdin=m, stdout=e, stderr=subprocess.PIPE,
                              env=shim_env(root, **extra), timeout=60)


def db(root: Path) -> sqlite3.Connection:
    return sqlite3.connect(root / "queue" / "queue.db")


def messages(root: Path) -> list[tuple]:
    with db(root) as conn:
        return conn.execute("SELECT id, sender, bytes, nrcpt FROM messages ORDER BY id").fetchall()


def recipients(root: Path, msg_id: int) -> list[str]:
    with db(root) as conn:
        return [a for (a,) in conn.execute(
            "SELECT addr FROM recipients WHERE msg = ? ORDER BY id", (msg_id,))]


def files(root: Path, sub: str) -> list[str]:
    return sorted(os.listdir(root / "queue" / sub))


def assert_queue_empty(root: Path) -> None:
    """Nothing visible: no rows at all, and no body file in mess/."""
    with db(root) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM recipients").fetchone()[0] == 0
    assert files(root, "mess") == []


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)
