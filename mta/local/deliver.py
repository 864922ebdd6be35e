"""Local delivery of one message to one address (qmail-local's job).

``deliver_local(job)`` is synchronous and thread-safe (it never changes the
process's working directory or umask); the scheduler runs it in a pool of
``concurrencylocal`` threads. Steps, as qmail-local.c:

1. check the alias directory (HOME): missing, group/world-writable or sticky
   -> TempFail;
2. loop check on the stored message's header (``loopcheck``): our own
   ``Delivered-To: local@domain`` line or more than 100 hops -> PermFail #5.4.6;
3. choose the dot-qmail file (``dotqmail.find_dotqmail``); none -> PermFail
   ``Sorry, no mailbox here by that name. (#5.1.1)``; writable -> TempFail;
4. execute its lines in order: ``./Maildir/`` and ``./mbox`` lines (relative to
   the alias dir; written with Return-Path and Delivered-To first), ``|program``
   lines (``program.run_program``; exit 99 stops after that line), forwards
   (``&addr`` or a bare address) collected for the end. An empty file means
   ``default_delivery`` (``./Maildir/``, qmail's usual ``defaultdelivery``).
   A file with its owner-execute bit set (or a ``+list`` line) allows only
   forwards, as qmail.
   Every line reads ``personal.personal_copy`` of the message: for a list post
   with the private ``X-Mta-Rcpt-Token`` field, a temporary copy without it and
   with the one-click token filled for ``job.token_recipient`` (default
   ``recipient``); otherwise the stored file itself.
5. the first failing line stops processing and cancels all forwards; otherwise
   all forwards are handed to ``job.inject`` in ONE call, sender = NEWSENDER
   (``dotqmail.forward_sender``), message = Delivered-To line + stored message.

``inject(sender, recipients, message_bytes)`` raises on failure: the failure is
permanent when the exception has a true ``permanent`` attribute, else temporary.
Forwarding reads the whole message into memory (the inject signature takes
bytes); every other path streams the message in bounded pieces.

Public:
    LocalJob, LocalResult, deliver_local(job) -> LocalResult
Failures are values (``LocalResult.outcome`` is TempFail or PermFail); no
exception escapes except for programming errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from mta.interfaces import Delivered, Outcome, PermFail, TempFail
from mta.local.dotqmail import (
    DotQmailError,
    DotQmailMatch,
    Instruction,
    Kind,
    check_home,
    find_dotqmail,
    forward_sender,
    parse_dotqmail,
    read_dotqmail,
)
from mta.local.environment import DeliveryLines, delivery_lines, program_environment
from mta.local.loopcheck import check_loop
from mta.local.maildir import deliver_maildir
from mta.local.mbox import deliver_mbox
from mta.local.personal import personal_copy
from mta.local.program import run_program

__all__ = ["ALIAS_USER", "DEFAULT_DELIVERY", "LocalJob", "LocalResult", "deliver_local"]

ALIAS_USER = "alias"  # USER seen by programs: every address is the alias user's
DEFAULT_DELIVERY = "./Maildir/"
NO_MAILBOX = "Sorry, no mailbox here by that name. (#5.1.1)"

Inject = Callable[[str, Sequence[str], bytes], None]


@dataclass(frozen=True, slots=True)
class LocalJob:
    """One local delivery: one stored message to one local address.

    ``recipient`` is ``local@domain`` after the locals/virtualdomains mapping
    (``local`` already carries any virtualdomains prefix); RECIPIENT and the
    Delivered-To line are built from ``local`` and ``domain``, as qmail-local
    builds them from its arguments. ``message_path`` is the
    stored message with LF line ends. ``extra_env`` is added to every program's
    environment (e.g. the instance root for ezlist programs).
    ``token_recipient`` is the envelope recipient before the locals/virtualdomains
    mapping: the address a one-click token is made for (``mta.rcpt_token``).
    """

    alias_dir: Path
    message_path: Path
    sender: str
    recipient: str
    local: str
    domain: str
    inject: Inject
    extra_env: tuple[tuple[str, str], ...] = ()
    default_delivery: str = DEFAULT_DELIVERY
    token_recipient: str = ""  # the envelope recipient before mapping; "" = recipient


@dataclass(frozen=True, slots=True)
class LocalResult:
    """The outcome of one local delivery; ``Delivered.text`` is qmail's ``did F+W+P``."""

    outcome: Outcome


@dataclass
class _Run:
    """Mutable state of one delivery while its lines execute."""

    job: LocalJob
    match: DotQmailMatch
    lines: DeliveryLines
    newsender: str
    forward_only: bool
    files: int = 0
    programs: int = 0
    forwards: list[str] = field(default_factory=list)


def deliver_local(job: LocalJob) -> LocalResult:
    """Deliver ``job`` as qmail-local would (see module doc)."""
    try:
        return LocalResult(_deliver(job))
    except DotQmailError as exc:
        return LocalResult(TempFail(exc.reason, _dsn_of(exc.reason)))


def _dsn_of(reason: str) -> str:
    start = reason.rfind("(#")
    return reason[start + 2 : -1] if start >= 0 and reason.endswith(")") else "4.0.0"


def _deliver(job: LocalJob) -> Outcome:
    alias_dir = Path(job.alias_dir)
    check_home(alias_dir)
    lines = delivery_lines(job.local, job.domain, job.sender)
    try:
        looping = check_loop(job.message_path, lines.dtline)
    except OSError as exc:
        return TempFail(f"Unable to read message: {exc.strerror}. (#4.3.0)", "4.3.0")
    if looping is not None:
        return looping
    match = find_dotqmail(alias_dir, job.local)
    if match is None:
        return PermFail(NO_MAILBOX, "5.1.1")
    newsender = forward_sender(alias_dir, job.local, job.domain, job.sender)
    data = read_dotqmail(match)
    forward_only = match.forward_only
    if not data:
        data, forward_only = job.default_delivery.encode(), False
    try:
        with personal_copy(job.message_path, job.token_recipient or job.recipient) as path:
            run = _Run(replace(job, message_path=path), match, lines, newsender, forward_only)
            return _run_lines(run, data)
    except OSError as exc:
        return TempFail(f"Unable to read message: {exc.strerror}. (#4.3.0)", "4.3.0")


def _run_lines(run: _Run, data: bytes) -> Outcome:
    for instruction in parse_dotqmail(data):
        outcome, stop = _execute(run, instruction)
        if not isinstance(outcome, Delivered):
            return outcome  # cancels the collected forwards
        if stop:
            break
    if run.forwards:
        failure = _forward(run)
        if failure is not None:
            return failure
    return Delivered(f"did {run.files}+{len(run.forwards)}+{run.programs}")


def _execute(run: _Run, ins: Instruction) -> tuple[Outcome, bool]:
    ok = Delivered()
    if ins.kind is Kind.COMMENT:
        return ok, False
    if ins.kind is Kind.FORWARD_ONLY:
        run.forward_only = True
        return ok, False
    if ins.kind is Kind.FORWARD:
        run.forwards.append(ins.arg)
        return ok, False
    job = run.job
    alias_dir = Path(job.alias_dir)
    if ins.kind is Kind.PROGRAM:
        if run.forward_only:
            return _xbit("prog"), False
        run.programs += 1
        result = run_program(ins.arg, alias_dir, _environment(run), job.message_path)
        return result.outcome, result.stop
    if run.forward_only:
        return _xbit("file"), False
    run.files += 1
    target = alias_dir / ins.arg  # an absolute path in the file stays absolute
    head = run.lines.rpline + run.lines.dtline
    if ins.kind is Kind.MAILDIR:
        return deliver_maildir(target, _b(head), job.message_path), False
    return deliver_mbox(target, _b(run.lines.ufline + head), job.message_path), False


def _xbit(what: str) -> TempFail:
    return TempFail(f"Uh-oh: .qmail has {what} delivery but has x bit set. (#4.7.0)", "4.7.0")


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _environment(run: _Run) -> dict[str, str]:
    job = run.job
    return program_environment(
        user=ALIAS_USER,
        home=os.fspath(job.alias_dir),
        local=job.local,
        host=job.domain,
        ext=job.local,
        sender=job.sender,
        newsender=run.newsender,
        default=run.match.default,
        lines=run.lines,
        extra=job.extra_env,
    )


def _forward(run: _Run) -> Outcome | None:
    """Inject all collected forwards at once; a failure outcome, or None."""
    job = run.job
    try:
        with open(job.message_path, "rb") as fh:
            message = _b(run.lines.dtline) + fh.read()
    except OSError as exc:
        return TempFail(f"Unable to read message: {exc.strerror}. (#4.3.0)", "4.3.0")
    try:
        job.inject(run.newsender, tuple(run.forwards), message)
    except Exception as exc:  # the injector's failure becomes this delivery's result
        reason = f"Unable to forward message: {exc}."
        if getattr(exc, "permanent", False):
            return PermFail(reason, "5.0.0")
        return TempFail(reason, "4.0.0")
    return None
