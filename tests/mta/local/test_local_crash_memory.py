"""Delivery in a separate process: kill at ``maildir_before_link`` (QF5), peak RSS (LM-6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from local_helpers import make_maildir, write_qmail
from mta.interfaces import Delivered
from mta.local import deliver_local

# Delivers argv[3] to argv[2] through alias dir argv[1]; prints the outcome, then
# its own peak RSS in KiB: VmHWM, the high-water mark of this process's memory
# since exec. (getrusage's ru_maxrss would not do: Linux carries the peak of the
# pre-exec fork of the pytest process over into the child.) A 64 MiB message read
# whole would push it far past the 40 MiB bound; Python itself takes ~11 MiB.
CHILD = r"""
import re, sys
from pathlib import Path
from mta.local import LocalJob, deliver_local

def refuse(sender, recipients, message):
    raise RuntimeError("no forwards expected")

alias, local, mess = sys.argv[1:4]
result = deliver_local(LocalJob(Path(alias), Path(mess), "bob@remote.test",
                                local + "@local.test", local, "local.test", refuse))
print(repr(result.outcome))
status = open("/proc/self/status").read()
print(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
"""


def run_child(alias_dir: Path, local: str, message: Path, env_extra: dict[str, str]):
    env = dict(os.environ, **env_extra)
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(alias_dir), local, str(message)],
        env=env, capture_output=True, timeout=120, check=False,
    )


def test_qf5_kill_between_tmp_write_and_link_then_retry(alias_dir, message, make_job):
    maildir = make_maildir(alias_dir / "Maildir")
    write_qmail(alias_dir, ".qmail-alice", "./Maildir/\n")
    killed = run_child(alias_dir, "alice", message, {"MTA_CRASH_AT": "maildir_before_link"})
    assert killed.returncode == -9, killed.stderr.decode()
    assert os.listdir(maildir / "new") == [], "a killed delivery must leave nothing in new/"
    (leftover,) = os.listdir(maildir / "tmp")  # complete but unlinked: maildir(5) cleanup
    assert (maildir / "tmp" / leftover).read_bytes().endswith(message.read_bytes())

    assert isinstance(deliver_local(make_job("alice")).outcome, Delivered)
    (delivered,) = os.listdir(maildir / "new")
    expected = b"Return-Path: <bob@remote.test>\nDelivered-To: alice@local.test\n" + message.read_bytes()
    assert (maildir / "new" / delivered).read_bytes() == expected
    assert delivered != leftover


def test_lm6_giant_header_line_with_bounded_memory(alias_dir, tmp_path):
    size = 64 * 1024 * 1024
    message = tmp_path / "giant"
    with open(message, "wb") as fh:
        fh.write(b"Subject: big\nX-Big: ")
        block = b"a" * (1024 * 1024)
        for _ in range(size // len(block)):
            fh.write(block)
        fh.write(b"\nDelivered-To: someone@else.test\n\nbody\n")
    maildir = make_maildir(alias_dir / "Maildir")
    write_qmail(alias_dir, ".qmail-alice-default", "./Maildir/\n./mbox\n|wc -c > prog.count\n")

    child = run_child(alias_dir, "alice-x", message, {})
    assert child.returncode == 0, child.stderr.decode()
    lines = child.stdout.decode().splitlines()
    assert lines[0] == "Delivered(text='did 2+0+1')"
    peak_kib = int(lines[1])
    assert 0 < peak_kib < 40 * 1024, f"delivery peaked at {peak_kib} KiB"

    head = b"Return-Path: <bob@remote.test>\nDelivered-To: alice-x@local.test\n"
    (name,) = os.listdir(maildir / "new")
    assert (maildir / "new" / name).stat().st_size == len(head) + message.stat().st_size
    assert int((alias_dir / "prog.count").read_text()) == message.stat().st_size
    mbox_size = (alias_dir / "mbox").stat().st_size
    assert mbox_size > message.stat().st_size + len(head)
    with open(alias_dir / "mbox", "rb") as fh:
        fh.seek(mbox_size - 7)
        assert fh.read() == b"\nbody\n\n"


# Appends argv[3] to the mbox argv[1] (or writes it into the Maildir argv[1])
# with a file size limit of argv[4] bytes, so the write fails half way (EFBIG).
FULL_DISK = r"""
import resource, signal, sys
from pathlib import Path
from mta.local.maildir import deliver_maildir
from mta.local.mbox import deliver_mbox

kind, target, mess, limit = sys.argv[1:5]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
if kind == "mbox":
    print(repr(deliver_mbox(Path(target), b"From x Thu Jan  1 00:00:00 1970\n", Path(mess))))
else:
    print(repr(deliver_maildir(Path(target), b"Delivered-To: x@y\n", Path(mess))))
"""


def run_limited(kind: str, target: Path, message: Path, limit: int) -> str:
    child = subprocess.run(
        [sys.executable, "-c", FULL_DISK, kind, str(target), str(message), str(limit)],
        capture_output=True, timeout=60, check=False,
    )
    assert child.returncode == 0, child.stderr.decode()
    return child.stdout.decode().strip()


def test_mbox_write_error_truncates_back(tmp_path):
    mbox = tmp_path / "mbox"
    old = b"From a Thu Jan  1 00:00:00 1970\nSubject: old\n\nold\n\n"
    mbox.write_bytes(old)
    message = tmp_path / "mess"
    message.write_bytes(b"Subject: new\n\n" + b"x" * 200_000 + b"\n")
    result = run_limited("mbox", mbox, message, 100_000)
    assert result.startswith("TempFail(reason='Unable to write ") and "4.3.0" in result
    assert mbox.read_bytes() == old


def test_maildir_write_error_leaves_nothing(tmp_path):
    maildir = make_maildir(tmp_path / "Maildir")
    message = tmp_path / "mess"
    message.write_bytes(b"Subject: new\n\n" + b"x" * 200_000 + b"\n")
    result = run_limited("maildir", maildir, message, 100_000)
    assert result.startswith("TempFail(reason='Temporary error on maildir delivery")
    assert os.listdir(maildir / "new") == [] and os.listdir(maildir / "tmp") == []
