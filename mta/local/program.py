"""Program delivery: a ``|command`` line of a dot-qmail file (qmail-command(8)).

``run_program(command, cwd, env, message_path)`` runs ``/bin/sh -c command`` in
``cwd`` with exactly the environment ``env``, umask 077, the stored message on
standard input (the file itself, so the program can seek and nothing is held in
our memory; no Return-Path or Delivered-To line: programs get RPLINE/DTLINE),
and standard output and error merged into one pipe. The output is drained to
the end (so the program never blocks on a full pipe) but only the first
``OUTPUT_CAP`` bytes are kept: they become the result's text.

Exit codes, as qmail-local maps them (LD5):

    0                               Delivered
    99                              Delivered, and the caller skips later lines
    100, 64, 65, 70, 76, 77, 78, 112  PermFail
    111 and every other code        TempFail
    killed by a signal              TempFail ``Aack, child crashed. (#4.3.0)``

The DSN code is taken from a ``(#X.Y.Z)`` in the output when there is one, else
5.0.0 / 4.0.0. There is no time limit, as in qmail: a program that never exits
holds its delivery thread.

Public:
    run_program(command, cwd, env, message_path) -> ProgramResult
Failures to start the program (no /bin/sh, unreadable message) are temporary.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from mta.interfaces import Delivered, Outcome, PermFail, TempFail

__all__ = ["OUTPUT_CAP", "PERMANENT_EXITS", "ProgramResult", "outcome_for_exit", "run_program"]

OUTPUT_CAP = 4096
PERMANENT_EXITS = frozenset({100, 64, 65, 70, 76, 77, 78, 112})
_DSN = re.compile(r"\(#([245])\.(\d{1,3})\.(\d{1,3})\)")


@dataclass(frozen=True, slots=True)
class ProgramResult:
    """The outcome of one program run; ``stop`` is true after exit 99."""

    outcome: Outcome
    stop: bool = False


def _dsn(text: str, klass: str) -> str:
    for match in _DSN.finditer(text):
        if match.group(1) == klass:
            return ".".join(match.groups())
    return f"{klass}.0.0"


def outcome_for_exit(code: int, output: str) -> ProgramResult:
    """Map a program's exit status (negative: killed by that signal) to a result."""
    text = output.strip()
    if code == 0:
        return ProgramResult(Delivered(text))
    if code == 99:
        return ProgramResult(Delivered(text), stop=True)
    if code < 0:
        return ProgramResult(TempFail(text or "Aack, child crashed. (#4.3.0)", "4.3.0"))
    if code in PERMANENT_EXITS:
        reason = text or f"Program exited {code}: permanent failure."
        return ProgramResult(PermFail(reason, _dsn(reason, "5")))
    reason = text or f"Program exited {code}: temporary failure."
    return ProgramResult(TempFail(reason, _dsn(reason, "4")))


def run_program(
    command: str, cwd: Path, env: Mapping[str, str], message_path: Path
) -> ProgramResult:
    """Run one ``|command`` delivery (see module doc)."""
    try:
        stdin = open(message_path, "rb")
    except OSError as exc:
        return ProgramResult(
            TempFail(f"Unable to read message: {exc.strerror}. (#4.3.0)", "4.3.0")
        )
    with stdin:
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", command],
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env),
                umask=0o077,
                close_fds=True,
            )
        except (OSError, ValueError) as exc:
            return ProgramResult(TempFail(f"Unable to run /bin/sh: {exc}. (#4.3.0)", "4.3.0"))
    output = _drain(proc)
    code = proc.wait()
    return outcome_for_exit(code, output.decode("utf-8", "replace"))


def _drain(proc: subprocess.Popen) -> bytes:
    kept = bytearray()
    with proc.stdout:
        while chunk := proc.stdout.read1(65536):
            if len(kept) < OUTPUT_CAP:
                kept += chunk[: OUTPUT_CAP - len(kept)]
    return bytes(kept)
