"""Moderated posts: hold, accept, reject, time out (ezmlm-store, -moderate, -clean).

What it does: on a moderated list ``hold_post`` stores the post in
``mod/pending/TIME.ID`` (first line the envelope sender, then the message as
received; written atomically) and mails the moderators one request whose
Reply-To is ``NAME-accept-TIME.ID.MAC@HOST`` and which names
``NAME-reject-TIME.ID.MAC@HOST``. MAC is an ezlist.cookies token (action ``a``)
over the held file's name, valid for ``modtime`` hours (file ``modtime``,
default 120, clamped to 24..240 as ezmlm does).

``accept`` renames the held file into ``mod/accepted/`` (the rename is the
single-use step: of two concurrent accepts only one finds the file), posts it
through ezlist.fanout and then leaves a marker in ``mod/done/``. ``reject``
moves it to ``mod/done/`` and tells the poster (text ``mod-reject``).
``expire`` (run on each delivery to the list and by ``ezlist moderate-expire``)
returns posts older than ``modtime`` to their posters (text ``mod-timeout``),
re-posts a file left in ``accepted/`` by a crash between the rename and the
queueing (at-least-once: a duplicate is possible, a loss is not) and forgets
old ``done/`` markers.

Moderators are the addresses in ``mod/moderators`` (one a line); with none,
requests go to the list's owner.

Public functions:
    read_moderators(list_dir) -> list[str]
    change_moderators(list_dir, add=(), remove=()) -> list[str]
    modtime_hours(list_dir) -> int
    hold_post(cfg, raw, sender, root, now) -> str        the held file's name
    accept(cfg, cmd, root, now) -> Reply;  reject(cfg, cmd, root, now) -> Reply
    expire(cfg, root, now) -> int                        posts timed out
    pending(list_dir) -> list[str]

Failures: a bad, expired or unknown accept/reject address is a permanent
refusal (``Reply`` with code 100); a second accept or reject of a handled post
is answered 0 with a note. ``OSError``, ``sqlite3.Error`` and
``mta.queue.QueueError`` propagate (temporary, exit 111).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ezlist import addresses, cookies, fanout, templates
from ezlist._fsutil import fsync_dir, write_atomic
from ezlist.addresses import Command
from ezlist.listdir import ListConfig, read_key
from ezlist.subscribers import normalize_address

MODTIME_DEFAULT, MODTIME_MIN, MODTIME_MAX = 120, 24, 240  # hours (ezmlm)
RECOVER_AFTER = 600  # s: an accepted/ file older than this was left by a crash
_ACTION = "a"


@dataclass(frozen=True, slots=True)
class Reply:
    """What a handler tells qmail-local: exit code and one line of text."""

    code: int
    text: str


def _mod(list_dir: Path, sub: str = "") -> Path:
    path = Path(list_dir) / "mod" / sub if sub else Path(list_dir) / "mod"
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_moderators(list_dir: Path) -> list[str]:
    path = Path(list_dir) / "mod" / "moderators"
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()]


def change_moderators(list_dir: Path, add=(), remove=()) -> list[str]:
    """Add and remove moderator addresses; returns the new list. ValueError: bad address."""
    current = read_moderators(list_dir)
    for text in list(add) + list(remove):
        if normalize_address(text) is None:
            raise ValueError(f"not an address: {text!r}")
    gone = {normalize_address(a) for a in remove}
    new = [a for a in current if normalize_address(a) not in gone]
    for text in add:
        address = normalize_address(text)
        if address not in {normalize_address(a) for a in new}:
            new.append(address)
    write_atomic(_mod(list_dir) / "moderators", "".join(a + "\n" for a in new).encode())
    return new


def modtime_hours(list_dir: Path) -> int:
    path = Path(list_dir) / "modtime"
    text = path.read_text("ascii").strip() if path.exists() else ""
    hours = int(text) if text.isdigit() else MODTIME_DEFAULT
    return max(MODTIME_MIN, min(MODTIME_MAX, hours))


def _cookie_address(cfg: ListConfig, name: str) -> str:
    return f"held.{name}@{cfg.host}"


def _create_held(cfg: ListConfig, content: bytes, now: int) -> str:
    # TIME.PID as ezmlm-store names its files; a clash (same pid in the same second
    # after a pid wrap) moves to the next free number
    folder = _mod(cfg.path, "pending")
    ident = os.getpid()
    while (folder / f"{now}.{ident}").exists() or (_mod(cfg.path, "done") / f"{now}.{ident}").exists():
        ident += 1
    name = f"{now}.{ident}"
    write_atomic(folder / name, content, mode=0o600)
    return name


def hold_post(cfg: ListConfig, raw: bytes, sender: str, root: Path, now: int) -> str:
    """Store a post for moderation and mail the moderators; returns the held name."""
    name = _create_held(cfg, sender.encode("utf-8", "surrogateescape") + b"\n" + raw, now)
    token = cookies.make_cookie(read_key(cfg.path), cfg.address, _ACTION,
                                _cookie_address(cfg, name), now)
    mac = token.split(".", 1)[1]
    held_time, ident = (int(x) for x in name.split("."))
    accept = addresses.moderation_address(cfg.name, cfg.host, "accept", held_time, ident, mac)
    reject = addresses.moderation_address(cfg.name, cfg.host, "reject", held_time, ident, mac)
    moderators = read_moderators(cfg.path) or ([cfg.options.owner] if cfg.options.owner else [])
    if moderators:
        text = templates.render(cfg.path, "mod-request", A=accept, R=reject)
        fanout.send_reply(cfg, root, moderators[0], f"MODERATE for {cfg.address}", text,
                          reply_to=accept, attach=raw, extra_to=moderators[1:])
    return name


def pending(list_dir: Path) -> list[str]:
    folder = Path(list_dir) / "mod" / "pending"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _verified(cfg: ListConfig, cmd: Command, now: int) -> str | None:
    """The held file name when the accept/reject cookie is ours and current."""
    if cmd.time is None or cmd.number is None or cmd.cookie is None:
        return None
    name = f"{cmd.time}.{cmd.number}"
    ok = cookies.check_cookie(read_key(cfg.path), cfg.address, _ACTION,
                              _cookie_address(cfg, name), f"{cmd.time}.{cmd.cookie}", now,
                              modtime_hours(cfg.path) * 3600)
    return name if ok else None


def _read_held(path: Path) -> tuple[str, bytes]:
    data = path.read_bytes()
    sender, _, raw = data.partition(b"\n")
    return sender.decode("utf-8", "surrogateescape"), raw


def _mark_done(cfg: ListConfig, name: str, what: str) -> None:
    write_atomic(_mod(cfg.path, "done") / name, what.encode() + b"\n")


def _handled(cfg: ListConfig, name: str) -> Reply | None:
    done = Path(cfg.path) / "mod" / "done" / name
    if done.exists():
        return Reply(0, f"that post was already handled: {done.read_text().strip()}")
    return None


def accept(cfg: ListConfig, cmd: Command, root: Path, now: int) -> Reply:
    """A moderator accepted a held post: distribute it."""
    name = _verified(cfg, cmd, now)
    if name is None:
        return Reply(100, "this accept address is not valid or has expired (#5.7.1)")
    src, dst = _mod(cfg.path, "pending") / name, _mod(cfg.path, "accepted") / name
    try:
        os.rename(src, dst)
    except FileNotFoundError:
        return _handled(cfg, name) or Reply(100, "no such post is waiting (#5.7.1)")
    fsync_dir(dst.parent)
    return _post_accepted(cfg, root, name, now)


def _post_accepted(cfg: ListConfig, root: Path, name: str, now: int) -> Reply:
    path = _mod(cfg.path, "accepted") / name
    _, raw = _read_held(path)
    result = fanout.post_message(cfg, raw, root, now)
    _mark_done(cfg, name, f"accepted as post {result.number}")
    path.unlink()
    return Reply(0, f"accepted: post {result.number} to {result.recipients} subscribers")


def _return_to_poster(cfg: ListConfig, root: Path, sender: str, raw: bytes, text_name: str,
                      subject: str) -> None:
    if sender in ("", "#@[]") or "@" not in sender:
        return  # never mail a bounce address or an anonymous sender
    text = templates.render(cfg.path, text_name)
    fanout.send_reply(cfg, root, sender, subject, text, attach=raw)


def reject(cfg: ListConfig, cmd: Command, root: Path, now: int) -> Reply:
    """A moderator rejected a held post: drop it and tell the poster."""
    name = _verified(cfg, cmd, now)
    if name is None:
        return Reply(100, "this reject address is not valid or has expired (#5.7.1)")
    src = _mod(cfg.path, "pending") / name
    try:
        sender, raw = _read_held(src)
    except FileNotFoundError:
        return _handled(cfg, name) or Reply(100, "no such post is waiting (#5.7.1)")
    _mark_done(cfg, name, "rejected")
    src.unlink(missing_ok=True)
    _return_to_poster(cfg, root, sender, raw, "mod-reject",
                      f"Your post to {cfg.address} was rejected")
    return Reply(0, "rejected")


def expire(cfg: ListConfig, root: Path, now: int | None = None) -> int:
    """Time out old held posts, recover crashed accepts, forget old markers."""
    stamp = int(time.time()) if now is None else now
    limit = modtime_hours(cfg.path) * 3600
    count = 0
    for name in pending(cfg.path):
        held_at = int(name.split(".")[0]) if name.split(".")[0].isdigit() else 0
        if stamp - held_at < limit:
            continue
        path = _mod(cfg.path, "pending") / name
        sender, raw = _read_held(path)
        _mark_done(cfg, name, "timed out")
        path.unlink()
        _return_to_poster(cfg, root, sender, raw, "mod-timeout",
                          f"Your post to {cfg.address} timed out")
        count += 1
    accepted = Path(cfg.path) / "mod" / "accepted"
    for path in sorted(accepted.iterdir()) if accepted.is_dir() else ():
        if time.time() - path.stat().st_mtime > RECOVER_AFTER:
            _post_accepted(cfg, root, path.name, stamp)
    done = Path(cfg.path) / "mod" / "done"
    for path in list(done.iterdir()) if done.is_dir() else ():
        if time.time() - path.stat().st_mtime > 2 * limit:
            path.unlink()
    return count
