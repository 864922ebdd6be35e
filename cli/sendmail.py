"""The ``sendmail`` shim: what mail tools call to send, mapped onto qmail-inject.

Supported: ``-t`` (recipients from To/Cc/Bcc), ``-f SENDER`` / ``-fSENDER``,
``-F NAME`` / ``-FNAME``, ``-i`` and ``-oi`` (accepted: a lone dot never ends the
message here, the whole of standard input is the message), other ``-o...`` and
``-B...``/``-v`` accepted and ignored as sendmail's compatibility interface does,
then recipients. ``-bs``/``-bd`` and other modes are refused with exit 100.
The instance comes from ``--root DIR`` (or ``--root=DIR``) given as the first
argument (our extension), else ``$MTA_ROOT``, else ``./var``. Exit codes: 0 queued,
100 permanent problem (bad usage, no recipients), 111 temporary.
"""

from __future__ import annotations

import sys

from mta.instance import find_root

__all__ = ["main", "parse_args"]


class UsageError(Exception):
    pass


def parse_args(argv: list[str]) -> dict:
    opts = {"root": None, "sender": None, "fullname": None, "take": False, "recipients": []}
    argv = _take_root(argv, opts)
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            opts["recipients"] += argv[i:]
            break
        if not a.startswith("-") or a == "-":
            opts["recipients"].append(a)
            continue
        flag, rest = a[1:2], a[2:]
        if flag in ("f", "F", "r"):
            if not rest:
                if i >= len(argv):
                    raise UsageError(f"{a} needs an argument")
                rest, i = argv[i], i + 1
            opts["fullname" if flag == "F" else "sender"] = rest
        elif a == "-t":
            opts["take"] = True
        elif a in ("-i", "-oi", "-v") or flag in ("o", "B", "N", "R", "V", "X", "h"):
            continue
        elif flag == "b" and rest == "m":
            continue
        else:
            raise UsageError(f"unsupported option {a}")
    return opts


def _take_root(argv: list[str], opts: dict) -> list[str]:
    """Remove a leading ``--root DIR`` / ``--root=DIR``, noting DIR in ``opts``."""
    if argv[:1] == ["--root"]:
        if len(argv) < 2:
            raise UsageError("--root needs an argument")
        opts["root"] = argv[1]
        return argv[2:]
    if argv and argv[0].startswith("--root="):
        opts["root"] = argv[0][len("--root="):] or None
        return argv[1:]
    return argv


def main(argv: list[str] | None = None) -> int:
    from cli.mta_queue_cmds import inject_message

    argv = sys.argv[1:] if argv is None else argv
    try:
        o = parse_args(argv)
    except UsageError as e:
        sys.stderr.write(f"sendmail: {e}\n")
        return 100
    return inject_message(find_root(o["root"]), sys.stdin.buffer.read(), o["sender"], o["fullname"],
                          o["take"], o["recipients"])


if __name__ == "__main__":
    sys.exit(main())
