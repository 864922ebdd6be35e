"""End to end: with `mta send --workers 2`, every connection to a host comes from one
worker, so ``concurrencyperhost`` holds even for backup MX hosts shared by domains
whose primaries belong to different workers.

Several domains share primary MX hosts that refuse connections (nothing listens
there) and two backup MX hosts (counting sinks on one port, reached through a real
DNS server and ``.test::PORT`` in smtproutes). Each sink session records which
process owns the client end of its TCP connection, found in /proc (the socket's
inode in /proc/net/tcp, then the worker whose fd links to it).
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass, field


from mta.send.owners import worker_for
from tests.sink import Sink

CANDIDATES = [f"127.0.1.{i}" for i in range(80, 120)]



def _pick(owner: int, n: int, taken: set) -> list[str]:
    """``n`` loopback addresses owned by worker ``owner`` of 2."""
    got = [ip for ip in CANDIDATES if worker_for(ip, 2) == owner and ip not in taken][:n]
    taken.update(got)
    return got


def _proc_hex(ip: str, port: int) -> str:
    return "%08X:%04X" % (struct.unpack("=I", socket.inet_aton(ip))[0], port)


def _socket_inode(local: tuple, remote: tuple) -> str | None:
    want = (_proc_hex(*local), _proc_hex(*remote))
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            w = line.split()
            if (w[1], w[2]) == want:
                return w[9]
    return None


def _children(ppid: int) -> list[int]:
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue  # exited meanwhile
            if int(stat.rsplit(")", 1)[1].split()[1]) == ppid:
                kids.append(int(name))
    return kids


def _owner(pids: list[int], inode: str) -> int | None:
    link = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == link:
                    return pid
            except OSError:
                continue
    return None


@dataclass
class OwnerSink(Sink):
    """A Sink that notes, per session, the pid owning the client's socket."""

    scheduler_pid: int = 0
    owners: list = field(default_factory=list)

    async def _session(self, reader, writer) -> None:
        peer = writer.get_extra_info("peername")[:2]
        inode = _socket_inode(peer, (self.host, self.port))
        pid = _owner(_children(self.scheduler_pid), inode) if inode else None
        with self._lock:
            self.owners.append(pid)
        await super()._session(reader, writer)


def test_shared_backup_hosts_get_connections_from_one_worker_only(inst, dns_server):
    taken: set = set()
    backups = _pick(0, 1, taken) + _pick(1, 1, taken)       # B0 owned by worker 0, B1 by 1
    primaries = _pick(0, 2, taken) + _pick(1, 2, taken)     # refuse: nothing listens
    zone, domains = {}, []
    for i, a in enumerate(primaries):
        for j, b in enumerate(backups):
            d = f"p{i}b{j}.test"
            zone[d] = {"MX": [[10, f"mx.{d}"], [20, f"backup{j}.test"]]}
            zone[f"mx.{d}"] = {"A": [a]}
            domains.append(d)
    for j, b in enumerate(backups):
        zone[f"backup{j}.test"] = {"A": [b]}
        zone[f"b{j}.test"] = {"MX": [[10, f"backup{j}.test"]]}
        domains.append(f"b{j}.test")
    dns_server.set_zone(zone)
    inst.control("nameservers", f"127.0.0.1:{dns_server.port}\n")
    inst.control("concurrencyperhost", "2\n")
    inst.control("timeoutconnect", "2\n")
    with OwnerSink(backups[0], delay=0.03) as s0, \
            OwnerSink(backups[1], delay=0.03, port=s0.port) as s1:
        inst.control("smtproutes", f".test::{s0.port}\n")
        inst.start("--workers", "2")
        s0.scheduler_pid = s1.scheduler_pid = inst.proc.pid
        rcpts = [f"u{k}@{d}" for k in range(25) for d in domains]
        assert inst.inject("l-@mx.test-@[]", rcpts) == 0
        inst.wait_empty(120)
        got = sorted(r for s in (s0, s1) for m in s.messages for r in m.rcpts)
        assert got == sorted(rcpts)  # every one delivered once, through a backup
        for s in (s0, s1):
            assert s.peak_sessions <= 2, f"{s.host}: {s.peak_sessions} sessions at once"
            assert None not in s.owners, f"{s.host}: a session whose client was not found"
            assert len(set(s.owners)) == 1, f"{s.host}: sessions from workers {set(s.owners)}"
        assert set(s0.owners) != set(s1.owners)  # both workers were used, one host each
        assert max(s0.peak_sessions, s1.peak_sessions) == 2  # the cap was reached
