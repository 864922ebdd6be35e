"""The worker side of the scheduler's line protocol, without an event loop.

The protocol is described in ``mta.send.spawn``. Kept apart from it so that a worker
which reads its jobs with blocking calls (``mta.lspawn``) does not import asyncio.

Public: encode_results(results) -> bytes; parse_line(line, on_flush, on_reload);
iter_jobs(stream, on_flush, on_reload) -> Iterator[dict]; SchedulerGone.
A line that is not valid JSON raises ValueError (the scheduler never sends one).
"""

from __future__ import annotations

import json
from typing import BinaryIO, Iterator

__all__ = ["SchedulerGone", "encode_results", "iter_jobs", "parse_line"]


def encode_results(results: list[list]) -> bytes:
    return json.dumps({"res": results}, separators=(",", ":")).encode() + b"\n"


class SchedulerGone(Exception):
    """The worker's input ended without a stop request: its scheduler is dead."""


def parse_line(line: bytes, on_flush=None, on_reload=None) -> list[dict] | None:
    """Worker side, one input line: its jobs; [] for a flush or reload request (the
    callback has run); None for a stop request."""
    msg = json.loads(line)
    if msg.get("stop"):
        return None
    if msg.get("flush"):
        if on_flush is not None:
            on_flush()
        return []
    if msg.get("reload"):
        if on_reload is not None:
            on_reload(msg)
        return []
    return msg["jobs"]


def iter_jobs(stream: BinaryIO, on_flush=None, on_reload=None) -> Iterator[dict]:
    """``read_jobs`` for a worker without an event loop: blocking reads of ``stream``."""
    while line := stream.readline():
        jobs = parse_line(line, on_flush, on_reload)
        if jobs is None:
            return
        yield from jobs
    raise SchedulerGone
