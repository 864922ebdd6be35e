"""The instance root: where it is, and creating one (``mta init``).

An instance is a folder holding ``control/`` (qmail-style flat files), ``queue/``
(message files and ``queue.db``), ``alias/`` (dot-qmail files for local addresses),
``lists/`` (one folder a list) and ``log/``.

Public:
    find_root(option=None) -> Path   ``--root`` option, else ``$MTA_ROOT``, else ``./var``
    init_instance(root, me=None, spare_files=0)
                                      create the layout; idempotent. A queue made now
                                      gets ``spare_files`` empty files in queue/free/
                                      (mta.queue.free.stock_pool; None: as many as
                                      free/ keeps, what ``mta init`` does by default)
    InstanceError                     the path is not usable as an instance

``init_instance`` refuses a folder that already holds files but is not an instance,
so a typo in ``--root`` never scatters our folders into someone's home directory.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["find_root", "init_instance", "InstanceError", "SUBDIRS"]

SUBDIRS = ("control", "queue", "alias", "lists", "log")


class InstanceError(Exception):
    """The given path cannot be (or is not) an instance root."""


def find_root(option: str | os.PathLike | None = None) -> Path:
    """Resolve the instance root the way every command does."""
    if option:
        return Path(option)
    env = os.environ.get("MTA_ROOT")
    return Path(env) if env else Path("var")


def is_instance(root: Path) -> bool:
    return (root / "control").is_dir() and (root / "queue").is_dir()


def init_instance(root: Path, me: str | None = None,
                  spare_files: int | None = 0) -> list[str]:
    """Create the instance at ``root``; return what was created (empty when nothing).

    ``me`` defaults to this machine's fully qualified name. An existing ``control/me``
    is kept unless ``me`` is given explicitly.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise InstanceError(f"{root} exists and is not a folder")
    if root.is_dir() and not is_instance(root) and any(root.iterdir()):
        raise InstanceError(f"{root} holds files but is not an instance; refusing to use it")
    created = []
    for sub in SUBDIRS:
        p = root / sub
        if not p.is_dir():
            p.mkdir(parents=True, exist_ok=True)
            created.append(f"{sub}/")
    (root / "alias").chmod(0o755)
    me_file = root / "control" / "me"
    if me or not me_file.exists():
        value = (me or socket.getfqdn() or "localhost").strip().lower()
        if not value or any(c.isspace() for c in value) or "@" in value:
            raise InstanceError(f"not a host name: {value!r}")
        _write_atomic(me_file, value + "\n")
        created.append("control/me")
    from mta.queue import open_queue  # creates queue.db, mess/, tmp/, lock/trigger

    open_queue(root).close()
    if spare_files != 0 and "queue/" in created:
        from mta.queue.free import stock_pool

        try:
            made = stock_pool(root / "queue" / "free", spare_files)
        except OSError as exc:
            raise InstanceError(f"cannot create spare files in {root / 'queue' / 'free'}:"
                                f" {exc}") from exc
        created.append(f"queue/free/ ({made} spare files)")
    return created


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
