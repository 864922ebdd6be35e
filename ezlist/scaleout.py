"""Spreading one post's fan-out across several delivery machines over QMQP.

When a list folder holds a ``qmqpservers`` file (as ezmlm switches to QMQP when its
list folder has one), a post is not queued locally: its subscribers are split into
one part per delivery machine, by recipient domain (every recipient of a domain goes
to the same machine, so per-host limits still hold on each machine), and each part
is handed over by QMQP as one message with the post's VERP sender, all parts at
once (one connection per part, so the handover takes as long as the largest part,
not the sum of all). A machine that does not answer has its part handed to the
next machine in the file.

``qmqpservers`` lines: ``ip``, ``ip:port`` (QMQP port, default 628) or
``ip:port:progressport`` (ours: where ``mta start --progress`` answers status
queries for ``ezlist status``). ``#`` comments are allowed.

Durability: the plan (which part goes where, and each part's state) is written to
``sends/NUM.parts`` before the first handover and rewritten atomically after each
``K``. A part is either accepted (``K`` recorded, with the machine's queue id and
the seconds its handover took, ``handover_s``) or
still ours: ``resume`` hands over every part still pending (after a crash, or when
every machine refused for a while). A crash between a ``K`` and its record resends
that part: at least once, never lost.

Public: read_servers(list_dir), split_by_domain(addresses, n), distribute(...),
resume(...), load_parts(list_dir, number), progress(list_dir, number).
"""

from __future__ import annotations

import json
import re
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from ezlist._fsutil import write_atomic
from mta.interfaces import Delivered, PermFail

__all__ = ["Server", "read_servers", "split_by_domain", "distribute", "resume", "load_parts",
           "progress", "ScaleoutError"]

QMQP_PORT = 628
_QP = re.compile(r"\bqp (\d+)")


class ScaleoutError(Exception):
    """A part could not be handed to any machine (temporary) or was refused (permanent)."""

    def __init__(self, text: str, permanent: bool = False):
        super().__init__(text)
        self.permanent = permanent


@dataclass(frozen=True)
class Server:
    host: str
    port: int = QMQP_PORT
    progress_port: int = 0


def read_servers(list_dir: Path) -> list[Server] | None:
    """The list's delivery machines, or None when the list delivers locally."""
    path = Path(list_dir) / "qmqpservers"
    if not path.exists():
        return None
    servers = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) > 3 or not all(p.isdigit() for p in parts[1:]):
            raise ScaleoutError(f"{path} line {n}: expected ip[:port[:progressport]]", True)
        nums = [int(p) for p in parts[1:]] + [QMQP_PORT, 0][len(parts) - 1:]
        servers.append(Server(parts[0], nums[0], nums[1]))
    if not servers:
        raise ScaleoutError(f"{path}: no servers listed", True)
    return servers


def bucket(address: str, n: int) -> int:
    domain = address.rpartition("@")[2].lower()
    return zlib.crc32(domain.encode()) % n


def split_by_domain(addresses: Iterable[str], n: int) -> list[list[str]]:
    parts: list[list[str]] = [[] for _ in range(n)]
    for a in addresses:
        parts[bucket(a, n)].append(a)
    return parts


def _record_path(list_dir: Path, number: int) -> Path:
    return Path(list_dir) / "sends" / f"{number}.parts"


def load_parts(list_dir: Path, number: int) -> list[dict] | None:
    p = _record_path(list_dir, number)
    return json.loads(p.read_text()) if p.exists() else None


def _save(list_dir: Path, number: int, parts: list[dict]) -> None:
    p = _record_path(list_dir, number)
    p.parent.mkdir(exist_ok=True)
    write_atomic(p, json.dumps(parts, indent=1).encode())


async def _hand_over(part: dict, servers: list[Server], sender: str, rcpts: list[str],
                     message: bytes, timeout: float) -> None:
    from mta.net.qm_client import qmqp_send

    n = len(servers)
    order = [servers[(part["bucket"] + k) % n] for k in range(n)]  # own machine first
    for s in order:
        began = time.monotonic()
        outcome = await qmqp_send([(s.host, s.port)], sender, rcpts, message, timeout=timeout)
        if isinstance(outcome, Delivered):
            m = _QP.search(outcome.text)
            part.update(state="accepted", server=asdict(s), remote_id=int(m.group(1)) if m else 0,
                        handover_s=round(time.monotonic() - began, 3))
            return
        if isinstance(outcome, PermFail):
            raise ScaleoutError(f"{s.host}:{s.port} refused part {part['bucket']}: "
                                f"{outcome.reason}", permanent=True)
        part["last_error"] = f"{s.host}:{s.port}: {outcome.reason}"
    raise ScaleoutError(f"no delivery machine took part {part['bucket']}: {part['last_error']}")


async def resume(list_dir: Path, number: int, servers: list[Server], sender: str,
                 addresses: Iterable[str], message: bytes, timeout: float = 60.0) -> list[dict]:
    """Hand over every part of post ``number`` not yet accepted; return the record."""
    parts = load_parts(list_dir, number)
    if parts is None:
        parts = [{"bucket": i, "state": "pending", "recipients": 0} for i in range(len(servers))]
        _save(list_dir, number, parts)
    pending = [p for p in parts if p["state"] != "accepted"]
    if not pending:
        return parts
    split = split_by_domain(addresses, len(parts))

    async def hand_over(p: dict) -> ScaleoutError | None:
        rcpts = split[p["bucket"]]
        p["recipients"] = len(rcpts)
        try:
            if rcpts:
                await _hand_over(p, servers, sender, rcpts, message, timeout)
            else:
                p.update(state="accepted", server=None, remote_id=0)
        except ScaleoutError as e:
            return e
        finally:
            _save(list_dir, number, parts)  # this part's K is on disk before we go on
        return None

    import asyncio

    errors = [e for e in await asyncio.gather(*map(hand_over, pending)) if e is not None]
    for e in errors:
        if e.permanent:
            raise e
    if errors:
        raise ScaleoutError("; ".join(map(str, errors)))
    return parts


def distribute(list_dir: Path, number: int, servers: list[Server], sender: str,
               addresses: Iterable[str], message: bytes, timeout: float = 60.0) -> list[dict]:
    """Synchronous entry for ezlist's post path (runs its own event loop)."""
    import asyncio  # here, not at the top: every delivery to a list imports this module

    return asyncio.run(resume(list_dir, number, servers, sender, addresses, message, timeout))


def progress(list_dir: Path, number: int, timeout: float = 10.0) -> dict:
    """Sum the delivery machines' reports for post ``number``.

    Returns {"pending", "deferred", "delivered", "failed", "nrcpt", "unreachable",
    "parts": [...]} where ``unreachable`` counts parts whose machine did not answer.
    """
    import asyncio

    from mta.progress import query_progress

    parts = load_parts(list_dir, number) or []
    total = {"pending": 0, "deferred": 0, "delivered": 0, "failed": 0, "nrcpt": 0,
             "unreachable": 0, "not_handed_over": 0, "parts": []}

    async def ask(p: dict) -> dict:
        s = p.get("server")
        if p["state"] != "accepted":
            return {"state": "not handed over"}
        if not s or not p.get("remote_id"):
            return {"state": "empty"}
        if not s["progress_port"]:
            return {"state": "no progress port configured"}
        try:
            got = await query_progress(s["host"], s["progress_port"], [p["remote_id"]], timeout)
        except (OSError, asyncio.TimeoutError, ValueError) as e:
            return {"state": f"unreachable: {e}"}
        return got.get(str(p["remote_id"]), {"state": "unknown"})

    async def ask_all() -> list[dict]:
        return await asyncio.gather(*(ask(p) for p in parts))

    for p, got in zip(parts, asyncio.run(ask_all())):
        total["parts"].append({"bucket": p["bucket"], "server": p.get("server"), **got})
        if got.get("state") in ("queued", "finished"):
            for k in ("pending", "deferred", "delivered", "failed", "nrcpt"):
                total[k] += got.get(k, 0)
        elif p["state"] != "accepted":
            total["not_handed_over"] += p.get("recipients", 0)
        elif got.get("state", "").startswith("unreachable"):
            total["unreachable"] += 1
    return total
