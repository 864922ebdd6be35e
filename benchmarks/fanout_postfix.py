"""The Postfix side of the fan-out benchmark: configure, start, inject, time, stop.

Postfix (Debian's package) is set up as in /work/shared/reference/postfix-bench:
loopback only, nothing can leave the box (default and relay transports are
``error:``), ``transport_maps`` sends ``d<j>.test`` to ``smtp:[127.0.1.<j%10+1>]:PORT``,
the log goes to ``/var/log/postfix.log`` through postlogd. The profile applied on
top is the reference's "fast" one (connection cache off, 8 connections a host,
long-lived smtp processes), the fastest Postfix found on this kind of machine;
``PROFILES`` also holds "default" (stock settings).

Public:
    configure_postfix(port, profile="fast")   writes main.cf + transport map (root)
    run_postfix(n, message, sinks, workdir) -> dict   one timed VERP fan-out
    stop_postfix()                             idempotent

One run: Postfix started fresh inside its own cpuacct cgroup, 1 s to settle, then
``sendmail -XV -f owner-list@bench.test -- <n recipients>`` (itself in the cgroup),
the spool polled every 20 ms until no queue file is left (maildrop, incoming,
active, deferred, hold). Deliveries are counted from ``status=sent`` log lines.

Failures: ``RuntimeError`` when Postfix is not installed, will not start, holds
mail we did not inject (we never delete it), or a run exceeds its time bound.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from pathlib import Path

from fanout_lib import CLK_TCK, NDOMAINS, CpuGroup, RssSampler, system_busy

SENDER = "owner-list@bench.test"
MAILLOG = Path("/var/log/postfix.log")
SPOOL = Path("/var/spool/postfix")
__all__ = ["configure_postfix", "run_postfix", "stop_postfix", "SENDER"]

QUEUES = ("maildrop", "incoming", "active", "hold")

BASE = """\
# written by benchmarks/fanout_postfix.py (loopback-only bench configuration)
compatibility_level = 3.6
myhostname = bench.test
mydomain = bench.test
myorigin = $myhostname
mydestination = $myhostname, localhost
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
relay_domains =
default_transport = error:outside delivery disabled on this bench host
relay_transport = error:outside delivery disabled on this bench host
transport_maps = hash:/etc/postfix/bench_transport
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps = hash:/etc/aliases
alias_database = hash:/etc/aliases
smtpd_banner = $myhostname ESMTP
biff = no
append_dot_mydomain = no
readme_directory = no
recipient_delimiter = +
mailbox_size_limit = 0
smtp_tls_security_level = none
maillog_file = /var/log/postfix.log
"""

PROFILES = {
    "fast": """\
smtp_destination_concurrency_limit = 8
initial_destination_concurrency = 8
max_use = 10000
smtp_connection_cache_on_demand = no
qmgr_message_recipient_limit = 200000
default_recipient_limit = 200000
default_recipient_refill_limit = 1000
""",
    "default": "",
}


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return p


def configure_postfix(port: int, profile: str = "fast") -> None:
    if not Path("/usr/sbin/postfix").exists():
        raise RuntimeError("Postfix is not installed (apt-get install postfix)")
    stop_postfix()
    Path("/etc/postfix/main.cf").write_text(BASE + PROFILES[profile])
    Path("/etc/postfix/bench_transport").write_text("".join(
        f"d{j}.test\tsmtp:[127.0.1.{j % 10 + 1}]:{port}\n" for j in range(NDOMAINS)))
    _run("postmap", "hash:/etc/postfix/bench_transport")
    aliases = Path("/etc/aliases")
    if not aliases.exists() or "postmaster:" not in aliases.read_text():
        with open(aliases, "a") as f:
            f.write("postmaster: root\n")
    _run("newaliases")
    _run("/usr/lib/postfix/configure-instance.sh", "-", check=False)  # chroot files, as Debian's unit
    _run("postfix", "check")


def postfix_running() -> bool:
    return _run("postfix", "status", check=False).returncode == 0


def stop_postfix(cg: CpuGroup | None = None) -> None:
    if postfix_running():
        _run("postfix", "stop", check=False)
    deadline = time.monotonic() + 20
    while postfix_running() or (cg is not None and not cg.empty()):
        if time.monotonic() > deadline:
            raise RuntimeError("Postfix did not stop within 20 s")
        time.sleep(0.1)


def queue_files() -> int:
    n = 0
    for q in QUEUES:
        for _root, _dirs, files in os.walk(SPOOL / q):
            n += len(files)
    for _root, _dirs, files in os.walk(SPOOL / "deferred"):
        n += len(files)
    return n


def _unlimited_stack() -> None:
    # 100k addresses exceed the default 2 MB of argv (a quarter of the stack limit)
    resource.setrlimit(resource.RLIMIT_STACK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def run_postfix(n: int, message: bytes, sinks, workdir: Path, rcpts: list[str]) -> dict:
    stop_postfix()
    if queue_files():
        raise RuntimeError("the Postfix queue is not empty; inspect it with postqueue -p "
                           "(this benchmark never deletes mail it did not inject)")
    MAILLOG.unlink(missing_ok=True)
    cg = CpuGroup.make(f"mtabench_postfix_{os.getpid()}")
    _run_in(cg, ["postfix", "start"])
    time.sleep(1)  # let master, qmgr and pickup settle, as the reference does
    msg_file = workdir / "msg-4k.eml"
    msg_file.write_bytes(message)
    cpu0, busy0, sk0 = (cg.ns() if cg else 0), system_busy(), sinks.cpu_ticks()
    us0 = cg.user_sys() if cg else (0.0, 0.0)
    t0 = time.monotonic()
    with RssSampler(cg) as rss:
        with open(msg_file, "rb") as f:
            p = subprocess.run(["sendmail", "-XV", "-f", SENDER, "--", *rcpts], stdin=f,
                               capture_output=True, preexec_fn=_preexec(cg), timeout=600)
        ti = time.monotonic()
        if p.returncode != 0:
            raise RuntimeError(f"sendmail failed ({p.returncode}): {p.stderr.decode()[-300:]}")
        bound = max(300.0, n / 100)
        while queue_files():
            if time.monotonic() - t0 > bound:
                raise RuntimeError(f"Postfix did not finish {n} deliveries in {bound:.0f} s")
            time.sleep(0.02)
        te = time.monotonic()
    cpu1, busy1, sk1 = (cg.ns() if cg else 0), system_busy(), sinks.cpu_ticks()
    user, sys_ = ((a - b) for a, b in zip(cg.user_sys(), us0)) if cg else (0.0, 0.0)
    stop_postfix(cg)
    sent = deferred = 0
    with open(MAILLOG, "rb") as f:
        for line in f:
            if b"status=sent" in line:
                sent += 1
            elif b"status=deferred" in line or b"status=bounced" in line:
                deferred += 1
    if cg:
        cg.remove()
    wall = te - t0
    cpu = (cpu1 - cpu0) / 1e9
    return {"engine": "postfix", "n": n, "inject_s": ti - t0, "wall_s": wall,
            "rate": sent / wall, "delivered": sent, "not_sent": deferred,
            "cpu_s": cpu, "cpu_user_s": user, "cpu_sys_s": sys_,
            "cpu_ms_per_delivery": 1000 * cpu / max(1, sent),
            "sinks_cpu_s": (sk1 - sk0) / CLK_TCK,
            "system_busy_pct": 100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]),
            "peak_mem_mb": rss.peak_mb, "peak_rss_sampled_mb": rss.peak_mb}


def _preexec(cg: CpuGroup | None):
    def setup() -> None:
        _unlimited_stack()
        if cg:
            cg.preexec()
    return setup


def _run_in(cg: CpuGroup | None, cmd: list[str]) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                       preexec_fn=cg.preexec if cg else None)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.strip()[-500:]}")
    deadline = time.monotonic() + 10
    while not (SPOOL / "pid" / "master.pid").exists() or not postfix_running():
        if time.monotonic() > deadline:
            raise RuntimeError("Postfix master did not come up within 10 s")
        time.sleep(0.05)


