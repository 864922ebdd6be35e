"""Privilege separation: one uid a role, as qmail runs qmaild, qmailq, qmailr...

When ``mta init`` runs as root it creates (when missing) one system user a role and
records them in ``control/users`` (``role:name`` lines; edit the names before
``mta init`` to choose others):

    smtpd   the network listeners (SMTP, QMTP, QMQP)            default mtad
    queue   the queue owner and the scheduler (write queue.db)   default mtaq
    remote  remote delivery workers (read message bodies)        default mtar
    local   local delivery and the list manager (alias/, lists/) default mtal

and sets ownership: ``queue/`` belongs to the queue user (``queue.db`` 0600, bodies
0640 readable by the ``mta`` group that the remote and local users are in, the
socket folder searchable so listeners reach ``qq.sock``); ``alias/`` and ``lists/``
belong to the local user. ``mta start`` (as root) then runs each component under
its role's uid: a listener cannot write the queue database, remote delivery cannot
write anything but its sockets, local delivery cannot touch the queue except
through the queue owner's socket.

Without ``control/users`` (an instance made by an ordinary user, or with
``MTA_PRIVSEP=no`` / ``mta init --no-privsep``) everything runs as the invoking user.

Public: ROLES, DEFAULT_USERS, load_users(root), setup_users(root, names=None),
drop_to(root, role), become_queue_owner(root), Users.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from pathlib import Path

__all__ = ["ROLES", "DEFAULT_USERS", "GROUP", "load_users", "setup_users", "drop_to",
           "become_queue_owner", "PrivsepError", "privsep_wanted", "privsep_active"]

ROLES = ("smtpd", "queue", "remote", "local")
DEFAULT_USERS = {"smtpd": "mtad", "queue": "mtaq", "remote": "mtar", "local": "mtal"}
GROUP = "mta"


class PrivsepError(Exception):
    """Users or ownership could not be set up as asked."""


def privsep_wanted() -> bool:
    return os.geteuid() == 0 and os.environ.get("MTA_PRIVSEP", "yes").lower() not in ("no", "0")


def load_users(root: Path) -> dict[str, str] | None:
    """role -> user name from ``control/users``, or None (no separation)."""
    path = Path(root) / "control" / "users"
    if not path.exists():
        return None
    users = dict(DEFAULT_USERS)
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        role, sep, name = line.partition(":")
        if not sep or role not in ROLES or not name:
            raise PrivsepError(f"control/users line {n}: expected ROLE:NAME with ROLE one of "
                               f"{', '.join(ROLES)}; got {line!r}")
        users[role] = name
    return users


def _ensure_group() -> int:
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        subprocess.run(["groupadd", "--system", GROUP], check=True, capture_output=True)
        return grp.getgrnam(GROUP).gr_gid


def _ensure_user(name: str, gid: int, in_group: bool) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        cmd = ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
               "--shell", "/usr/sbin/nologin", "--user-group", name]
        if in_group:
            cmd[-1:-1] = ["--groups", GROUP]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise PrivsepError(f"useradd {name} failed: {p.stderr.strip()}")
        return pwd.getpwnam(name)


def setup_users(root: Path, names: dict[str, str] | None = None) -> dict[str, str]:
    """Create missing users, write ``control/users``, set ownership (root only)."""
    root = Path(root)
    for what, path in (("the instance", root), ("this Python", Path(sys.executable)),
                       ("the Python library", Path(sys.base_prefix) / "lib")):
        for d in [path.resolve(), *path.resolve().parents]:
            if d.is_dir() and not os.stat(d).st_mode & 0o001:
                raise PrivsepError(
                    f"{d} is not searchable by other users (mode {oct(os.stat(d).st_mode & 0o777)}),"
                    f" so the per-role users could not reach {what}: chmod o+x it, install"
                    " elsewhere, or use --no-privsep")
    users = dict(names or load_users(root) or DEFAULT_USERS)
    gid = _ensure_group()
    pw = {role: _ensure_user(name, gid, role in ("remote", "local", "queue"))
          for role, name in users.items()}
    (root / "control" / "users").write_text("".join(f"{r}:{users[r]}\n" for r in ROLES))
    _own_tree(root, pw, gid)
    return users


def _chown(path: Path, uid: int, gid: int, mode: int) -> None:
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def _own_tree(root: Path, pw: dict, gid: int) -> None:
    q, loc = pw["queue"], pw["local"]
    os.chmod(root, 0o755)
    _chown(root / "queue", q.pw_uid, gid, 0o751)
    # setgid folders: bodies are created in tmp/ and renamed into mess/ with group mta
    _chown(root / "queue" / "mess", q.pw_uid, gid, 0o2750)
    _chown(root / "queue" / "tmp", q.pw_uid, gid, 0o2700)
    _chown(root / "queue" / "free", q.pw_uid, gid, 0o2700)
    _chown(root / "queue" / "lock", q.pw_uid, gid, 0o751)
    for p in (root / "queue").rglob("*"):
        if p.is_file() or p.is_fifo() or p.is_socket():
            os.chown(p, q.pw_uid, gid)
    for f in (root / "queue").glob("queue.db*"):
        os.chmod(f, 0o600)
    for f in (root / "queue" / "mess").iterdir():
        os.chmod(f, 0o640)
    _chown(root / "log", q.pw_uid, gid, 0o755)
    for p in (root / "log").iterdir():
        os.chown(p, q.pw_uid, gid)
    for sub in ("alias", "lists"):
        for p in [root / sub, *(root / sub).rglob("*")]:
            os.chown(p, loc.pw_uid, loc.pw_gid)


def privsep_active(root: Path) -> bool:
    """Are we root on an instance that separates privileges (``control/users``)?"""
    return os.geteuid() == 0 and (Path(root) / "control" / "users").exists()


def drop_to(root: Path, role: str) -> bool:
    """Become ``role``'s user if we are root and the instance separates; True if dropped."""
    if os.geteuid() != 0:
        return False
    users = load_users(root)
    if users is None:
        return False
    pw = pwd.getpwnam(users[role])
    groups = [pw.pw_gid]
    try:
        groups.append(grp.getgrnam(GROUP).gr_gid)
    except KeyError:
        pass
    os.setgroups(groups)
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    os.umask(0o027 if role == "queue" else 0o022)
    return True


def become_queue_owner(root: Path) -> bool:
    """For root running a queue command (qmail-queue, inject, queue...): act as the owner."""
    try:
        return drop_to(root, "queue")
    except (KeyError, PrivsepError):
        return False
