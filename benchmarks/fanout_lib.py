"""Shared pieces of the VERP fan-out benchmark: message, recipients, sinks, accounting.

Used by ``fanout_vs_postfix.py`` (our engine) and ``fanout_postfix.py`` (Postfix) so
both engines are measured with the same message, the same recipients, the same
sinks and the same clocks.

- ``make_message()``: a deterministic 4096-byte message (LF line ends).
- ``recipients(n)``: ``user<i>@d<i % 1000>.test``; ``host_for(domain)`` names the sink
  host (``127.0.1.<j % 10 + 1>``) every route sends domain ``d<j>.test`` to.
- ``Sinks``: ten ``/usr/sbin/smtp-sink`` processes (``-u nobody`` when root, ``-c``
  counters, or ``-D`` transaction dumps for validation); ``counts()`` reads the
  last ``-c`` counter line of each, ``check_dumps()`` proves every recipient was
  delivered exactly once, to the right host, with its own VERP sender.
- ``CpuGroup``: a cpuacct (cgroup v1) group; every process started inside it and
  its descendants are accounted to the nanosecond, exited ones included.
- ``tree_pids``, ``vm_hwm_kb``, ``system_busy``: /proc readings.
- ``summarize(values)``: median, min, max.

Failures: a sink that does not listen within 10 s raises ``RuntimeError`` naming
it; without cgroup v1 ``CpuGroup.make`` returns None and callers fall back to
/proc tick sums (coarser, and blind to processes that already exited).
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

SINK = "/usr/sbin/smtp-sink"
NSINKS = 10
NDOMAINS = 1000
CG_ROOT = Path("/sys/fs/cgroup/cpuacct")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def make_message(sender: str = "list@bench.test") -> bytes:
    """Exactly 4096 bytes: seven header lines and repeated text lines."""
    head = (f"From: Bench List <{sender}>\nTo: Bench List <list@bench.test>\n"
            "Subject: bench fan-out message\nMessage-ID: <bench-fanout-1@bench.test>\n"
            "MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n").encode()
    line = b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnop\n"
    body = bytearray(head)
    while len(body) + len(line) <= 4096:
        body += line
    body += line[:4095 - len(body)] + b"\n"
    return bytes(body)


def recipients(n: int):
    return (f"user{i}@d{i % NDOMAINS}.test" for i in range(n))


def sink_addrs() -> list[str]:
    return [f"127.0.1.{k}" for k in range(1, NSINKS + 1)]


def host_for(domain: str) -> str:
    j = int(domain[1:].split(".", 1)[0])
    return f"127.0.1.{j % NSINKS + 1}"


def free_port(addrs: list[str]) -> int:
    """A TCP port free on every address (chosen at run time)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((addrs[0], 0))
            port = s.getsockname()[1]
        try:
            for a in addrs[1:]:
                with socket.socket() as t:
                    t.bind((a, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no TCP port free on every sink address")


class Sinks:
    """Ten smtp-sink processes on 127.0.1.1-10, one port."""

    def __init__(self, workdir: Path, port: int):
        self.workdir, self.port = workdir, port
        self.procs: list[subprocess.Popen] = []
        self.outs: list[Path] = []
        self.dumps: list[Path] = []

    def start(self, dump: bool = False) -> None:
        self.stop()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        dumpdir = self.workdir / "dumps"
        if dump:
            dumpdir.mkdir(exist_ok=True)
            for old in dumpdir.iterdir():
                old.unlink()
            if os.geteuid() == 0:
                os.chown(dumpdir, _nobody_uid(), -1)
        self.outs, self.dumps = [], []
        for k, addr in enumerate(sink_addrs(), 1):
            out = self.workdir / f"sink{k}.out"
            extra = ["-c"]
            if dump:
                self.dumps.append(dumpdir / f"sink{k}.txt")
                extra = ["-c", "-D", str(self.dumps[-1])]
            with open(out, "wb") as f:
                self.procs.append(subprocess.Popen(
                    [SINK, *user, *extra, "-h", f"sink{k}.test", f"{addr}:{self.port}", "1024"],
                    stdout=f, stderr=subprocess.STDOUT))
            self.outs.append(out)
        for addr, p in zip(sink_addrs(), self.procs):
            _wait_listening(addr, self.port, p)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(10)
        self.procs = []

    def cpu_ticks(self) -> int:
        return sum(pid_ticks(p.pid) for p in self.procs)

    def counts(self) -> tuple[int, int]:
        """(sessions, messages) summed over the sinks' last ``-c`` counter lines."""
        sess = mesg = 0
        for out in self.outs:
            text = out.read_bytes().replace(b"\r", b"\n").decode(errors="replace")
            found = re.findall(r"sess=(\d+) quit=\d+ mesg=(\d+)", text)
            if found:
                sess += int(found[-1][0])
                mesg += int(found[-1][1])
        return sess, mesg

    def check_dumps(self, n: int, verp_of) -> dict:
        """Every ``user<i>@d<j>.test`` exactly once, at its host, with ``verp_of(rcpt)``."""
        seen: Counter = Counter()
        problems: list[str] = []
        txns = 0
        for addr, path in zip(sink_addrs(), self.dumps):
            mail = None
            with open(path, "rb") as f:
                for line in f:
                    if line.startswith(b"X-Mail-Args: "):
                        mail, txns = _first_arg(line), txns + 1
                    elif line.startswith(b"X-Rcpt-Args: "):
                        rcpt = _first_arg(line).strip("<>")
                        seen[rcpt] += 1
                        if mail != f"<{verp_of(rcpt)}>" and len(problems) < 5:
                            problems.append(f"{rcpt}: sender {mail}, wanted {verp_of(rcpt)}")
                        if host_for(rcpt.split("@", 1)[1]) != addr and len(problems) < 5:
                            problems.append(f"{rcpt} arrived at {addr}")
        wanted = set(recipients(n))
        missing = len(wanted - seen.keys())
        dupes = sum(1 for c in seen.values() if c > 1)
        extra = len(seen.keys() - wanted)
        ok = not (missing or dupes or extra or problems) and txns == n
        return {"ok": ok, "transactions": txns, "distinct": len(seen), "missing": missing,
                "duplicated": dupes, "unexpected": extra, "problems": problems}


def _first_arg(line: bytes) -> str:
    """``<addr>`` of an ``X-Mail-Args``/``X-Rcpt-Args`` line, ESMTP parameters dropped."""
    return line[13:].split(None, 1)[0].decode()


def _nobody_uid() -> int:
    import pwd

    return pwd.getpwnam("nobody").pw_uid


def _wait_listening(addr: str, port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"smtp-sink on {addr}:{port} exited with {proc.returncode}")
        try:
            with socket.create_connection((addr, port), timeout=1) as s:
                s.recv(100)
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"smtp-sink on {addr}:{port} is not listening after 10 s")


class CpuGroup:
    """A cpuacct cgroup (v1): ``preexec`` puts a child in it before it execs."""

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def make(cls, name: str) -> "CpuGroup | None":
        path = CG_ROOT / name
        try:
            path.mkdir(exist_ok=True)
        except OSError:
            return None
        return cls(path) if (path / "cgroup.procs").exists() else None

    def preexec(self) -> None:
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def ns(self) -> int:
        return int((self.path / "cpuacct.usage").read_text())

    def user_sys(self) -> tuple[float, float]:
        vals = dict(line.split() for line in (self.path / "cpuacct.stat").read_text().splitlines())
        return int(vals["user"]) / CLK_TCK, int(vals["system"]) / CLK_TCK

    def empty(self) -> bool:
        return not (self.path / "cgroup.procs").read_text().strip()

    def remove(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not self.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            self.path.rmdir()
        except OSError:
            pass  # still busy: left for the next run (named per process, harmless)


class RssSampler:
    """Peak of the summed VmRSS of a cgroup's processes, sampled every ``interval`` s.

    The same meter for both engines: Postfix's many short-lived processes have no
    single VmHWM to read at the end, so both are sampled (a lower bound of the true
    peak; our VmHWM sum is the upper bound and is reported too).
    """

    def __init__(self, cg: "CpuGroup | None", interval: float = 0.1):
        self.cg, self.interval, self.peak_kb = cg, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssSampler":
        if self.cg is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pids = [int(x) for x in (self.cg.path / "cgroup.procs").read_text().split()]
            except OSError:
                pids = []
            self.peak_kb = max(self.peak_kb, sum(vm_kb(pid, "VmRSS:") for pid in pids))
            self._stop.wait(self.interval)

    @property
    def peak_mb(self) -> float | None:
        return self.peak_kb / 1024 if self.cg is not None else None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()


def pid_ticks(pid: int, children: bool = False) -> int:
    f = _stat_fields(pid)
    if f is None:
        return 0
    return int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)


def tree_pids(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = _stat_fields(int(d))
            if f is not None:
                parent[int(d)] = int(f[1])
    want, grew = {root}, True
    while grew:
        new = {p for p, pp in parent.items() if pp in want and p not in want}
        want |= new
        grew = bool(new)
    return sorted(want)


def vm_kb(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` memory field in kB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def vm_hwm_kb(pid: int) -> int:
    return vm_kb(pid, "VmHWM:")


def system_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(v[:8])
    return total - v[3] - v[4], total


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)} if values else {"median": None, "min": None, "max": None, "n": 0}
