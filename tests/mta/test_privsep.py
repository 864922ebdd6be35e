"""Privilege separation (root only): one uid a role, and a listener cannot write the queue.

Runs as root (CI does); as an ordinary user there are no uids to switch to, which is
what the skip says. The per-role users must be able to run this Python: where it lives
under a folder only root may search (pyenv under /root on the CI machines), the
fixture adds the search bit (o+x, no listing) to that folder for the test and puts
the old mode back afterwards.
"""

import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates users, switches uids")

BIN = Path(sys.executable).parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uid_of(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def descendants(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    kids = [int(p) for p in out.stdout.split()]
    return kids + [d for k in kids for d in descendants(k)]


def stop_group(p):
    """SIGTERM the process group of ``p`` (mta start), SIGKILL it after 30 s."""
    os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def public_dir():
    changed = []
    for base in (Path(sys.executable).resolve(), Path(sys.base_prefix).resolve()):
        for d in base.parents:
            mode = d.stat().st_mode & 0o7777
            if not mode & 0o001:
                changed.append((d, mode))
                os.chmod(d, mode | 0o001)
    d = Path(tempfile.mkdtemp(prefix="mta-privsep-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    if not os.environ.get("KEEP_PRIVSEP_DIR"):
        shutil.rmtree(d, ignore_errors=True)
    for folder, mode in changed:
        os.chmod(folder, mode)


def can_open_as(user, path):
    """Fork, become ``user`` and try to open ``path`` for writing; no exec involved."""
    pw = pwd.getpwnam(user)
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            os.close(os.open(path, os.O_RDWR))
            os._exit(0)
        except PermissionError:
            os._exit(13)
        except BaseException:
            os._exit(1)
    return os.waitpid(pid, 0)[1] >> 8


def test_init_refuses_a_folder_other_users_cannot_reach(tmp_path, public_dir):
    env = {k: v for k, v in os.environ.items() if k != "MTA_PRIVSEP"}
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    p = subprocess.run([str(BIN / "mta"), "--root", str(hidden / "inst"), "init"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "not searchable by other users" in p.stderr


def test_components_run_under_their_own_uids(public_dir):
    env = {k: v for k, v in os.environ.items() if k != "MTA_PRIVSEP"}
    root = public_dir / "inst"
    subprocess.run([str(BIN / "mta"), "--root", str(root), "init", "--me", "local.test",
                    "--spare-files", "10"],
                   check=True, env=env, capture_output=True, timeout=120)
    users = dict(line.split(":") for line in (root / "control" / "users").read_text().split())
    assert set(users) == {"smtpd", "queue", "remote", "local"}
    uids = {role: pwd.getpwnam(name).pw_uid for role, name in users.items()}
    assert len(set(uids.values())) == 4 and 0 not in uids.values()
    free = root / "queue" / "free"
    spares = [f.stat() for f in free.iterdir()]  # made by root, handed to the queue user
    assert len(spares) == 10 and {st.st_uid for st in spares} == {uids["queue"]}
    p, new = start_and_deliver(root, env, pwd.getpwnam(users["local"]))
    try:
        expected = {"mta.listen": uids["smtpd"], "mta.queued": uids["queue"],
                    " send": uids["queue"], "mta.remote.worker": uids["remote"],
                    "mta.lspawn": uids["local"]}

        def observed():
            procs = {pid: cmdline(pid) for pid in descendants(p.pid)}
            return {frag: {uid_of(pid) for pid, c in procs.items() if frag in c}
                    for frag in expected}
        # a component may still be starting (root) for a moment after mail flowed: bounded wait
        wait_for(lambda: all(v == {expected[k]} for k, v in observed().items()), 30,
                 "every component under its own uid")
        assert observed() == {k: {v} for k, v in expected.items()}
        delivered = next(new.iterdir())
        assert delivered.stat().st_uid == uids["local"]
        # the listener's user cannot write the queue database; its owner can
        db = str(root / "queue" / "queue.db")
        assert can_open_as(users["smtpd"], db) == 13
        assert can_open_as(users["queue"], db) == 0
        # the finished body is recycled, not unlinked: free/ is the queue user's (the
        # owner's first injection, this one, made a fresh file and took no spare)
        assert free.stat().st_uid == uids["queue"]
        wait_for(lambda: len(list(free.iterdir())) == 11, 30,
                 "the delivered body recycled into queue/free beside the 10 spares")
        assert all(f.stat().st_uid == uids["queue"] and f.stat().st_size == 0
                   for f in free.iterdir())
    finally:
        stop_group(p)


def start_and_deliver(root: Path, env: dict, local_pw) -> tuple[subprocess.Popen, Path]:
    """Give alice a Maildir (made as the local user ``local_pw`` would), run ``mta start``,
    send her one message over SMTP and wait until it is in Maildir/new. Returns the
    process (its group is the caller's to stop with ``stop_group``) and new/."""
    (root / "alias" / ".qmail-alice").write_text("./Maildir/\n")
    for sub in ("", "tmp", "new", "cur"):  # maildirmake, as the local user would
        (root / "alias" / "Maildir" / sub).mkdir(exist_ok=True)
        os.chown(root / "alias" / "Maildir" / sub, local_pw.pw_uid, local_pw.pw_gid)
    port = free_port()
    p = subprocess.Popen([str(BIN / "mta"), "--root", str(root), "start", "--smtp",
                          f"127.0.0.1:{port}"], env=env, start_new_session=True)
    try:
        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                return True
            except OSError:
                return False
        wait_for(listening, 30, "the SMTP listener")
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.sendmail("bob@other.test", ["alice@local.test"], b"Subject: x\r\n\r\nhi\r\n")
        new = root / "alias" / "Maildir" / "new"
        wait_for(lambda: new.is_dir() and any(new.iterdir()), 30, "local delivery")
    except BaseException:
        stop_group(p)
        raise
    return p, new
