"""Privilege separation with user names of our choosing (root only, as test_privsep).

An instance made without separation, given a ``control/users`` naming other users,
then ``mta init`` as root: those users are created and recorded, own the queue and
alias folders, and ``mta start`` runs each component under them (not under the
default ``mtad``/``mtaq``/``mtar``/``mtal``). The users are removed afterwards.
"""

import os
import pwd
import subprocess
import time

import pytest

from test_privsep import BIN, cmdline, descendants, start_and_deliver, stop_group, uid_of
from test_privsep import public_dir  # noqa: F401  (the fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates users, switches uids")

NAMES = {"smtpd": "mtxsmtpd", "queue": "mtxqueue", "remote": "mtxremote", "local": "mtxlocal"}


@pytest.fixture
def custom_users():
    existed = set()
    for name in NAMES.values():
        try:
            pwd.getpwnam(name)
            existed.add(name)
        except KeyError:
            continue  # absent, as it should be: mta init will create it
    assert not existed, f"users {sorted(existed)} exist already; remove them (userdel) first"
    yield NAMES
    for name in NAMES.values():
        subprocess.run(["userdel", name], capture_output=True, timeout=60)


def wrong_uids(top, roles, uids):
    """Components missing, or not (yet: a worker drops its uid after starting) under theirs."""
    procs = {pid: cmdline(pid) for pid in descendants(top)}
    wrong = []
    for fragment, role in roles:
        pids = [pid for pid, c in procs.items() if fragment in c]
        got = set()
        for pid in pids:
            try:
                got.add(uid_of(pid))
            except FileNotFoundError:
                continue  # it exited since ps listed it
        if got != {uids[role]}:
            wrong.append((fragment, NAMES[role], uids[role], sorted(got)))
    return wrong


def mta(root, *args, env):
    return subprocess.run([str(BIN / "mta"), "--root", str(root), *args], env=env,
                          capture_output=True, text=True, timeout=120, check=True)


def test_names_from_control_users_are_created_and_used(public_dir, custom_users):
    env = {k: v for k, v in os.environ.items() if k != "MTA_PRIVSEP"}
    root = public_dir / "inst"
    mta(root, "init", "--me", "local.test", "--no-privsep", "--spare-files", "0", env=env)
    (root / "control" / "users").write_text("".join(f"{r}:{n}\n" for r, n in NAMES.items()))
    out = mta(root, "init", env=env).stdout
    assert "users " + ",".join(f"{r}={n}" for r, n in NAMES.items()) in out
    uids = {role: pwd.getpwnam(name).pw_uid for role, name in NAMES.items()}
    assert len(set(uids.values())) == 4 and 0 not in uids.values()
    assert (root / "queue" / "queue.db").stat().st_uid == uids["queue"]
    assert (root / "alias").stat().st_uid == uids["local"]
    p, new = start_and_deliver(root, env, pwd.getpwnam(NAMES["local"]))
    try:
        roles = (("mta.listen", "smtpd"), ("mta.queued", "queue"), (" send", "queue"),
                 ("mta.remote.worker", "remote"), ("mta.lspawn", "local"))
        deadline = time.monotonic() + 30
        while wrong := wrong_uids(p.pid, roles, uids):  # (fragment, user, uid, uids seen)
            assert time.monotonic() < deadline, f"not under their users after 30 s: {wrong}"
            time.sleep(0.05)
        assert next(new.iterdir()).stat().st_uid == uids["local"]
    finally:
        stop_group(p)
