"""The lines and environment qmail-local gives every delivery.

qmail-local prepends ``Return-Path:`` and ``Delivered-To:`` lines to files it
writes, starts mbox entries with a ``From `` line, and exports all three (plus
the address pieces) to programs. This module computes them exactly as
qmail-local.c does:

- DTLINE ``Delivered-To: LOCAL@HOST\\n`` (newlines in the address become ``_``);
- RPLINE ``Return-Path: <SENDER>\\n`` with the local part quoted as qmail's
  ``quote2`` does, newlines become ``_``;
- UFLINE ``From SENDER DATE\\n`` (``MAILER-DAEMON`` for the empty sender; blanks
  and newlines in the sender become ``-``; DATE in asctime form, UTC);
- HOST2..HOST4: HOST without its last 1..3 dot-components; EXT2..EXT4: EXT after
  its 1st..3rd ``-``.

Programs get only these variables plus a short list passed through from our own
environment (PATH and the instance's MTA_* settings), not the whole environment
of the delivery worker. None of the values is quoted: they are attacker
controlled, as in qmail.

Public:
    delivery_lines(local, host, sender, now=None) -> DeliveryLines
    program_environment(...) -> dict[str, str]
    quote_address(address) -> str
Nothing here fails.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Iterable, Mapping

__all__ = ["DeliveryLines", "delivery_lines", "program_environment", "quote_address"]

_PASS_THROUGH = ("PATH", "MTA_ROOT", "MTA_CRASH_AT", "TZ", "LANG", "LC_ALL", "PYTHONPATH")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# qmail quote.c: characters that force quoting of the local part.
_SPECIALS = set('()<>@,;:\\".[] \t')


@dataclass(frozen=True, slots=True)
class DeliveryLines:
    dtline: str
    rpline: str
    ufline: str


def quote_address(address: str) -> str:
    """qmail quote2: quote the local part when it needs it (RFC 822 quoted-string)."""
    at = address.rfind("@")
    local, rest = (address, "") if at < 0 else (address[:at], address[at:])
    if not _needs_quote(local):
        return address
    escaped = "".join("\\" + c if c in '"\\\n\r' else c for c in local)
    return f'"{escaped}"{rest}'


def _needs_quote(local: str) -> bool:
    if not local:
        return False
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return True
    return any(c in _SPECIALS and c != "." or ord(c) < 32 or ord(c) > 126 for c in local)


def delivery_lines(local: str, host: str, sender: str, now: float | None = None) -> DeliveryLines:
    """DTLINE, RPLINE and UFLINE for one delivery, as qmail-local builds them."""
    recipient = f"{local}@{host}".replace("\n", "_")
    rp = quote_address(sender).replace("\n", "_")
    if sender:
        ufsender = "".join("-" if c in " \t\n" else c for c in sender)
    else:
        ufsender = "MAILER-DAEMON"
    stamp = time.asctime(time.gmtime(time.time() if now is None else now))
    return DeliveryLines(
        dtline=f"Delivered-To: {recipient}\n",
        rpline=f"Return-Path: <{rp}>\n",
        ufline=f"From {ufsender} {stamp}\n",
    )


def _host_parts(host: str) -> list[str]:
    out = []
    end = len(host)
    for _ in range(3):
        dot = host.rfind(".", 0, end)
        end = end if dot < 0 else dot
        out.append(host[:end])
    return out


def _ext_parts(ext: str) -> list[str]:
    out = []
    rest = ext
    for _ in range(3):
        dash = rest.find("-")
        rest = "" if dash < 0 else rest[dash + 1 :]
        out.append(rest)
    return out


def program_environment(
    *,
    user: str,
    home: str,
    local: str,
    host: str,
    ext: str,
    sender: str,
    newsender: str,
    default: str | None,
    lines: DeliveryLines,
    extra: Iterable[tuple[str, str]] = (),
    inherit: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a ``|program`` delivery (qmail-command(8))."""
    inherit = os.environ if inherit is None else inherit
    env = {k: inherit[k] for k in _PASS_THROUGH if k in inherit}
    env.setdefault("PATH", _DEFAULT_PATH)
    env.update(extra)
    host2, host3, host4 = _host_parts(host)
    ext2, ext3, ext4 = _ext_parts(ext)
    env.update(
        SENDER=sender,
        NEWSENDER=newsender,
        RECIPIENT=f"{local}@{host}",
        USER=user,
        HOME=home,
        HOST=host,
        HOST2=host2,
        HOST3=host3,
        HOST4=host4,
        LOCAL=local,
        EXT=ext,
        EXT2=ext2,
        EXT3=ext3,
        EXT4=ext4,
        DTLINE=lines.dtline,
        RPLINE=lines.rpline,
        UFLINE=lines.ufline,
    )
    if default is not None:
        env["DEFAULT"] = default
    return env
