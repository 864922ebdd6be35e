"""Our engine's side of the fan-out benchmark: one timed VERP fan-out through ``mta send``.

A fresh instance (``mta init --me bench.test``, ``--no-privsep`` when root and
the per-role users could not run this Python) per run, with ``smtproutes``
sending ``d<j>.test`` to ``127.0.1.<j%10+1>:PORT`` and the given
``concurrencyremote`` / ``concurrencyperhost``. ``mta send --workers W`` is started
inside its own cpuacct cgroup and given time to start its workers; then the clock
starts and the ``qmail-queue`` shim (in the same cgroup: it does the work of
Postfix's pickup + cleanup) queues the 4 KB message for N recipients with the VERP
sender ``list-return-1-@bench.test-@[]``, the envelope streamed through its fd 1.
The clock stops when ``log/send`` says ``end msg`` (the message is removed once
every recipient is done). Deliveries are the ``success`` lines of that log.

Public:
    run_ours(n, message, sinks, workdir, *, workers, concurrency, perhost,
             profile_dir=None) -> dict
    VERP_SENDER, verp_of(rcpt)

Peak memory is the sum of ``VmHWM`` over the scheduler and its workers, read just
before it is stopped, plus the shim's ``ru_maxrss``. With ``profile_dir`` the
scheduler runs under ``py-spy record --subprocesses`` (raw collapsed stacks in
``profile_dir/ours.txt``); that run's timings include py-spy's overhead.

Failures: ``RuntimeError`` when the scheduler does not start its workers within
20 s, the shim exits non-zero, or the run exceeds its time bound (it is stopped).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from fanout_lib import (CLK_TCK, NDOMAINS, CpuGroup, RssSampler, recipients, system_busy, tree_pids,
                        vm_hwm_kb)

__all__ = ["run_ours", "VERP_SENDER", "verp_of"]

BIN = Path(sys.executable).parent
VERP_SENDER = "list-return-1-@bench.test-@[]"


def verp_of(rcpt: str) -> str:
    box, dom = rcpt.split("@", 1)
    return f"list-return-1-{box}={dom}@bench.test"


def make_instance(root: Path, port: int, concurrency: int, perhost: int) -> None:
    cmd = [str(BIN / "mta"), "--root", str(root), "init", "--me", "bench.test"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if p.returncode != 0 and "--no-privsep" in p.stderr:
        # as root, privilege separation wants a Python every role's uid can reach;
        # the bench runs all roles as root instead (same processes, same work)
        p = subprocess.run(cmd + ["--no-privsep"], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"mta init failed: {p.stderr.strip()[-400:]}")
    ctl = root / "control"
    (ctl / "smtproutes").write_text("".join(
        f"d{j}.test:127.0.1.{j % 10 + 1}:{port}\n" for j in range(NDOMAINS)))
    (ctl / "concurrencyremote").write_text(f"{concurrency}\n")
    (ctl / "concurrencyperhost").write_text(f"{perhost}\n")


def _envelope_chunks(n: int, per: int = 20000):
    yield b"F" + VERP_SENDER.encode() + b"\0"
    it = recipients(n)
    while chunk := [next(it) for _ in range(min(per, n))]:
        n -= len(chunk)
        yield b"".join(b"T" + r.encode() + b"\0" for r in chunk)
    yield b"\0"


def inject(root: Path, n: int, message: bytes, cg: CpuGroup | None) -> tuple[int, int]:
    """Run the shim; returns (exit code, its ru_maxrss in kB)."""
    r, w = os.pipe()
    p = subprocess.Popen([str(BIN / "qmail-queue")], stdin=subprocess.PIPE, stdout=r,
                         env={**os.environ, "MTA_ROOT": str(root)}, cwd=root,
                         preexec_fn=cg.preexec if cg else None)
    os.close(r)
    p.stdin.write(message)
    p.stdin.close()
    for chunk in _envelope_chunks(n):
        view = memoryview(chunk)
        while view:
            view = view[os.write(w, view):]
    os.close(w)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, usage.ru_maxrss


def _start_scheduler(root: Path, workers: int, cg, profile_dir: Path | None):
    cmd = [str(BIN / "mta"), "--root", str(root), "send", "--workers", str(workers)]
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        cmd = [str(BIN / "py-spy"), "record", "--subprocesses", "--format", "raw", "--rate", "100",
               "--output", str(profile_dir / "ours.txt"), "--", *cmd]
    # cwd: the workers run "python -m", which puts the cwd first on sys.path
    proc = subprocess.Popen(cmd, preexec_fn=cg.preexec if cg else None, start_new_session=True,
                            cwd=root,
                            stdout=subprocess.DEVNULL, stderr=open(root / "log" / "send.err", "wb"))
    want = workers + 2 + (profile_dir is not None)  # scheduler, remote workers, local worker
    deadline = time.monotonic() + 20
    while len(tree_pids(proc.pid)) < want or not (root / "queue/lock/sendpid").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc, root)
            raise RuntimeError(f"mta send did not start {workers} workers: "
                               f"{(root / 'log' / 'send.err').read_text()[-500:]}")
        time.sleep(0.05)
    time.sleep(0.5)  # the workers import their modules after they appear
    return proc


def _stop(proc: subprocess.Popen, root: Path) -> None:
    try:
        pid = int((root / "queue/lock/sendpid").read_text())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class LogWatch:
    """Reads ``log/send`` as it grows; counts successes, notes ``end msg``."""

    def __init__(self, path: Path):
        self.path, self.offset, self.rest = path, 0, b""
        self.success = self.failures = self.deferrals = 0
        self.ended = False
        self.last_success_ts = 0.0

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()
        for line in lines:
            if b": success: " in line:
                self.success += 1
                self.last_success_ts = float(line[1:line.index(b" ")])
            elif b": deferral: " in line:
                self.deferrals += 1
            elif b": failure: " in line:
                self.failures += 1
            elif b" end msg " in line:
                self.ended = True


def run_ours(n: int, message: bytes, sinks, workdir: Path, *, workers: int, concurrency: int,
             perhost: int, profile_dir: Path | None = None, tag: str = "run") -> dict:
    root = workdir / f"ours-{tag}"
    make_instance(root, sinks.port, concurrency, perhost)
    cg = CpuGroup.make(f"mtabench_ours_{os.getpid()}")
    proc = _start_scheduler(root, workers, cg, profile_dir)
    watch = LogWatch(root / "log" / "send")
    try:
        cpu0, busy0, sk0 = (cg.ns() if cg else 0), system_busy(), sinks.cpu_ticks()
        us0 = cg.user_sys() if cg else (0.0, 0.0)
        t0, w0 = time.monotonic(), time.time()
        with RssSampler(cg) as rss:
            rc, shim_kb = inject(root, n, message, cg)
            ti = time.monotonic()
            if rc != 0:
                raise RuntimeError(f"qmail-queue exited {rc}")
            bound = max(300.0, n / 500)
            while not watch.ended:
                if time.monotonic() - t0 > bound:
                    raise RuntimeError(f"not done after {bound:.0f} s: {watch.success} delivered")
                time.sleep(0.02)
                watch.poll()
            te = time.monotonic()
        cpu1, busy1, sk1 = (cg.ns() if cg else 0), system_busy(), sinks.cpu_ticks()
        hwm = {pid: vm_hwm_kb(pid) for pid in tree_pids(proc.pid)}
        if profile_dir is not None:
            hwm.pop(proc.pid, None)  # py-spy itself
        user, sys_ = ((a - b) for a, b in zip(cg.user_sys(), us0)) if cg else (0.0, 0.0)
    finally:
        _stop(proc, root)
        if cg:
            cg.remove()
    watch.poll()
    wall = te - t0
    cpu = (cpu1 - cpu0) / 1e9
    return {"engine": "ours", "n": n, "inject_s": ti - t0, "wall_s": wall,
            "wall_to_last_delivery_s": watch.last_success_ts - w0,
            "rate": watch.success / wall, "delivered": watch.success,
            "not_sent": watch.failures + watch.deferrals,
            "cpu_s": cpu, "cpu_user_s": user, "cpu_sys_s": sys_,
            "cpu_ms_per_delivery": 1000 * cpu / max(1, watch.success),
            "sinks_cpu_s": (sk1 - sk0) / CLK_TCK,
            "system_busy_pct": 100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]),
            "peak_mem_mb": (sum(hwm.values()) + shim_kb) / 1024,
            "peak_mem_processes_mb": {str(p): kb / 1024 for p, kb in hwm.items()},
            "peak_rss_sampled_mb": rss.peak_mb,
            "shim_maxrss_mb": shim_kb / 1024, "profiled": profile_dir is not None}
