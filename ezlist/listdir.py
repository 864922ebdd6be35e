"""List folders: create, load and edit ``lists/NAME/`` and its dot-qmail wiring.

What it does: a list is a flat folder, one setting a file, as ezmlm lists are
(qmail-ezmlm.md 2.5). ``make_list`` builds the folder under a temporary name and
renames it into place (a crash leaves either no list or a whole one), then writes
``alias/.qmail-NAME`` and ``alias/.qmail-NAME-default`` that hand ``NAME@`` and
``NAME-...@`` to ``python -m ezlist.deliver LISTDIR`` (qmail-local's environment:
SENDER, LOCAL, HOST, EXT, DEFAULT). ``.`` in NAME becomes ``:`` in the dot-qmail
file name, as qmail-local looks it up.

Files in ``lists/NAME/`` (each declared once in ``_FLAGS`` / ``_VALUES``):
    outlocal, outhost   list local part and host (ezmlm names)
    key                 32 random bytes, mode 0600: the cookie secret
    num                 ``lastnum:cumulative-size`` (ezlist.archive)
    subscribers.db      SQLite: subscribers, used cookies, bounces (ezlist.subscribers)
    text/               message templates (ezlist.templates); text/trailer = trailer
    archive/            archive/M/NN when archived (ezlist.archive)
    flag files (present = on): archived, modpost, subonly, modsub, public, keepreceived
    value files: prefix, msgsize (``max:min``), unsuburl, owner,
                 bouncethreshold, bouncetimeout

Public functions:
    list_path(root, name) -> Path
    make_list(root, address, options=ListOptions()) -> ListConfig
    load_list(root, name) -> ListConfig;  load_list_dir(path) -> ListConfig
    edit_list(root, name, **changes) -> ListConfig
    read_key(list_dir) -> bytes

Failures: ``ListError`` (a ValueError) names the list, the file and the problem:
bad name or option, list already exists, missing or malformed setting file.
``OSError`` from the file system propagates.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ezlist import cookies, templates
from ezlist._fsutil import fsync_dir, write_atomic
from ezlist.bounces import BounceBook
from ezlist.subscribers import SubscriberDB


class ListError(ValueError):
    """A list cannot be made, found or read; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class ListOptions:
    """Settings a list owner chooses (ezlist make / edit options)."""

    archived: bool = False
    moderated: bool = False
    subscribers_only: bool = False
    moderate_subscriptions: bool = False
    public: bool = True
    keep_received: bool = False  # keep every incoming Received: line (ezmlm -r)
    prefix: str = ""  # subject prefix; '#' becomes the post number
    trailer: str = ""  # text/trailer; "" = no trailer
    max_message_size: int = 0  # bytes; 0 = no limit
    unsubscribe_url: str = ""  # https base for List-Unsubscribe; "" = mailto only
    owner: str = ""  # forward NAME-owner@ here; "" = no owner alias
    bounce_threshold: int = 3  # bounces before a warning is due
    bounce_timeout: int = 864_000  # seconds (10 days, ezmlm-warn's default)


@dataclass(frozen=True, slots=True)
class ListConfig:
    """A loaded list: identity, folder and options."""

    name: str
    host: str
    path: Path
    options: ListOptions

    @property
    def address(self) -> str:
        return f"{self.name}@{self.host}"

    @property
    def flags(self) -> str:
        """ezmlm flag letters that are on (for ``<=...=>`` template sections)."""
        o = self.options
        pairs = (("a", o.archived), ("m", o.moderated), ("u", o.subscribers_only),
                 ("s", o.moderate_subscriptions), ("p", o.public), ("t", bool(o.trailer)))
        return "".join(letter for letter, on in pairs if on)


# option field -> flag file (present = on)
_FLAGS = {
    "archived": "archived",
    "moderated": "modpost",
    "subscribers_only": "subonly",
    "moderate_subscriptions": "modsub",
    "public": "public",
    "keep_received": "keepreceived",
}
# option field -> value file
_VALUES = {
    "prefix": "prefix",
    "max_message_size": "msgsize",
    "unsubscribe_url": "unsuburl",
    "owner": "owner",
    "bounce_threshold": "bouncethreshold",
    "bounce_timeout": "bouncetimeout",
}
_NAME = re.compile(r"[a-z0-9][a-z0-9._+-]{0,63}", re.ASCII)
_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?",
                   re.ASCII)
_PRINTABLE = re.compile(r"[\x20-\x7e]*", re.ASCII)
_URL = re.compile(r"https://[\x21-\x7e]+", re.ASCII)
_ADDRESS = re.compile(r"[\x21-\x3f\x41-\x7e]+@[a-z0-9.-]+", re.ASCII)


def list_path(root: Path, name: str) -> Path:
    return Path(root) / "lists" / name


def read_key(list_dir: Path) -> bytes:
    """The list's cookie secret."""
    key = (Path(list_dir) / "key").read_bytes()
    if len(key) < 16:
        raise ListError(f"{list_dir}/key: too short ({len(key)} bytes)")
    return key


def _split_address(address: str) -> tuple[str, str]:
    name, at, host = address.strip().lower().rpartition("@")
    if not at or not _NAME.fullmatch(name) or not _HOST.fullmatch(host):
        raise ListError(f"bad list address {address!r}: want NAME@DOMAIN, "
                        "NAME of letters, digits and . _ + -")
    if name.endswith(("-default", "-owner")) or "--" in name:
        raise ListError(f"bad list name {name!r}: clashes with a command address")
    return name, host


def _validate(opts: ListOptions) -> None:
    if "\n" in opts.prefix or not _PRINTABLE.fullmatch(opts.prefix) or len(opts.prefix) > 64:
        raise ListError("prefix: printable ASCII, at most 64 characters")
    if opts.unsubscribe_url and not _URL.fullmatch(opts.unsubscribe_url):
        raise ListError("unsubscribe URL: must be https://... without spaces")
    if opts.owner and not _ADDRESS.fullmatch(opts.owner):
        raise ListError(f"owner: not an address: {opts.owner!r}")
    if opts.max_message_size < 0 or opts.bounce_threshold < 1 or opts.bounce_timeout < 0:
        raise ListError("sizes and timeouts must be >= 0, the bounce threshold >= 1")
    for field in _FLAGS:
        if not isinstance(getattr(opts, field), bool):
            raise ListError(f"{field}: must be true or false")


def _write_options(path: Path, opts: ListOptions) -> None:
    for field, filename in _FLAGS.items():
        if getattr(opts, field):
            write_atomic(path / filename, b"")
        else:
            (path / filename).unlink(missing_ok=True)
    for field, filename in _VALUES.items():
        value = getattr(opts, field)
        text = f"{value}:0" if filename == "msgsize" else str(value)
        write_atomic(path / filename, text.encode("ascii") + b"\n")
    trailer = path / "text" / "trailer"
    if opts.trailer:
        write_atomic(trailer, opts.trailer.encode("utf-8"))
    else:
        trailer.unlink(missing_ok=True)
    if opts.archived:
        (path / "archive").mkdir(exist_ok=True)


def _dot_name(name: str, suffix: str = "") -> str:
    return ".qmail-" + (name + suffix).replace(".", ":")


def _write_aliases(root: Path, name: str, list_dir: Path, owner: str) -> None:
    alias = Path(root) / "alias"
    alias.mkdir(parents=True, exist_ok=True)
    program = f"|{shlex.quote(sys.executable)} -m ezlist.deliver {shlex.quote(str(list_dir))}\n"
    for suffix in ("", "-default"):
        write_atomic(alias / _dot_name(name, suffix), program.encode())
    owner_file = alias / _dot_name(name, "-owner")
    if owner:
        write_atomic(owner_file, f"&{owner}\n".encode())
    elif owner_file.exists():
        owner_file.unlink()
        fsync_dir(alias)


def make_list(root: Path, address: str, options: ListOptions = ListOptions()) -> ListConfig:
    """Create ``lists/NAME`` and its dot-qmail files; refuse an existing list."""
    name, host = _split_address(address)
    _validate(options)
    lists = Path(root) / "lists"
    lists.mkdir(parents=True, exist_ok=True)
    final = lists / name
    alias = Path(root) / "alias" / _dot_name(name)
    if final.exists() or alias.exists():
        raise ListError(f"list {name}: already exists ({final} or {alias})")
    tmp = lists / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        (tmp / "text").mkdir()
        write_atomic(tmp / "outlocal", name.encode() + b"\n")
        write_atomic(tmp / "outhost", host.encode() + b"\n")
        write_atomic(tmp / "key", cookies.new_key(), mode=0o600)
        write_atomic(tmp / "num", b"0:0\n")
        templates.write_defaults(tmp / "text")
        _write_options(tmp, options)
        with SubscriberDB(tmp / "subscribers.db") as db:
            BounceBook(db, read_key(tmp), f"{name}@{host}")  # creates the bounce tables
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(lists)
    _write_aliases(root, name, final.resolve(), options.owner)
    return ListConfig(name, host, final, options)


def _read_value(path: Path, filename: str, default: object) -> object:
    file = path / filename
    if not file.exists():
        return default
    text = file.read_text("ascii", errors="replace").strip()
    if filename == "msgsize":
        text = text.partition(":")[0]
    if isinstance(default, int):
        if not text.isdigit():
            raise ListError(f"{file}: line 1: not a number: {text!r}")
        return int(text)
    return text


def load_list_dir(path: Path) -> ListConfig:
    """Load a list from its folder."""
    path = Path(path)
    try:
        name = (path / "outlocal").read_text("ascii").strip()
        host = (path / "outhost").read_text("ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError) as exc:
        raise ListError(f"{path}: not a list folder ({exc})") from exc
    defaults = ListOptions()
    values: dict[str, object] = {f: (path / n).exists() for f, n in _FLAGS.items()}
    for field, filename in _VALUES.items():
        values[field] = _read_value(path, filename, getattr(defaults, field))
    trailer = path / "text" / "trailer"
    values["trailer"] = trailer.read_text("utf-8", errors="replace") if trailer.exists() else ""
    options = ListOptions(**values)  # type: ignore[arg-type]
    try:
        _validate(options)
    except ListError as exc:
        raise ListError(f"{path}: {exc}") from exc
    return ListConfig(name, host, path, options)


def load_list(root: Path, name: str) -> ListConfig:
    """Load ``lists/NAME`` under instance ``root``."""
    path = list_path(root, name.lower())
    if not _NAME.fullmatch(name.lower()) or not path.is_dir():
        raise ListError(f"no such list: {name!r} (looked in {path})")
    return load_list_dir(path)


def edit_list(root: Path, name: str, **changes: object) -> ListConfig:
    """Change options of an existing list (``ListOptions`` field names)."""
    cfg = load_list(root, name)
    unknown = set(changes) - {f.name for f in dataclasses.fields(ListOptions)}
    if unknown:
        raise ListError(f"unknown list option(s): {', '.join(sorted(unknown))}")
    options = dataclasses.replace(cfg.options, **changes)
    _validate(options)
    _write_options(cfg.path, options)
    _write_aliases(root, cfg.name, cfg.path.resolve(), options.owner)
    return dataclasses.replace(cfg, options=options)
