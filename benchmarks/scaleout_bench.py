#!/usr/bin/env python3
"""Issue 6 benchmark: one list post fanned out through one, then two delivery machines.

Setup (all on this host, loopback only): ten Postfix smtp-sink receivers on
127.0.1.1-10; delivery machines are `mta start --qmqp --progress` instances on
127.0.0.2 and 127.0.0.3 routing d<j>.test to 127.0.1.<j%10+1>; the list host is an
instance on 127.0.0.1 with list bench@bench.test and N subscribers
user<i>@d<i%1000>.test. For each configuration (1 machine, 2 machines) a post is
made through ezlist's post path (number, headers, archive, split by domain, QMQP
handover with the VERP sender); the clock runs from the start of the post until
the sinks have counted N messages (VERP: one recipient a message).

Reported per configuration (median of --runs): end-to-end deliveries/s, the list
host's wall time and CPU for the post (what it does per post and per recipient),
the delivery machines' CPU (every process of each ``mta start``, through a cpuacct
cgroup when one can be made), the 1-minute load average when the run began, the
sinks' session count, and per part (ezlist/scaleout.py records it) the
recipients, the QMQP request size (bytes, approximate: the post plus ~200 bytes of
headers and sender, plus each recipient's netstring) and the handover time (connect
to the machine's ``K``, which it sends after its queue commit). Root is needed (smtp-sink runs as nobody; Postfix's
package provides it).

    .venv/bin/python benchmarks/scaleout_bench.py [--recipients 100000] [--runs 3]
        [--configs 1,2] [--remote-concurrency 40] [--per-host 4] [--json FILE]

Each machine has its own ``concurrencyremote`` (default 40) and ``concurrencyperhost``
(4), so two machines also double the connections into the sinks; ``--configs 1
--remote-concurrency 80 --per-host 8`` is the control: one machine with as many.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from fanout_lib import NDOMAINS, CpuGroup, Sinks, free_port, sink_addrs  # noqa: E402

BIN = Path(sys.executable).parent
MACHINES = ("127.0.0.2", "127.0.0.3")


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))}: {p.stderr.strip()[-400:]}")
    return p.stdout


def port_on(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Machine:
    def __init__(self, work: Path, ip: str, sink_port: int, remote: int = 40, per_host: int = 4):
        self.ip, self.root = ip, work / f"machine-{ip}"
        run([str(BIN / "mta"), "--root", str(self.root), "init", "--me", f"mx-{ip}.test",
             "--no-privsep"])
        ctl = self.root / "control"
        (ctl / "smtproutes").write_text("".join(
            f"d{j}.test:127.0.1.{j % 10 + 1}:{sink_port}\n" for j in range(NDOMAINS)))
        (ctl / "concurrencyremote").write_text(f"{remote}\n")
        (ctl / "concurrencyperhost").write_text(f"{per_host}\n")
        (ctl / "qmqpaccess").write_text("127.0.0.0/8:allow\n:deny\n")
        self.qmqp, self.progress = port_on(ip), port_on(ip)
        self.cg = CpuGroup.make(f"mtabench_scaleout_{ip}_{os.getpid()}")  # None: no cpuacct
        self.proc = subprocess.Popen(
            [str(BIN / "mta"), "--root", str(self.root), "start", "--smtp",
             f"{ip}:{port_on(ip)}", "--qmqp", f"{ip}:{self.qmqp}", "--progress",
             f"{ip}:{self.progress}"], start_new_session=True, stderr=subprocess.DEVNULL,
            preexec_fn=self.cg.preexec if self.cg else None)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((ip, self.qmqp), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{ip}: QMQP listener did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.cg:
            self.cg.remove()

    def cpu_s(self) -> float:
        return self.cg.ns() / 1e9 if self.cg else float("nan")


def make_list_host(work: Path, n: int) -> Path:
    from ezlist.listdir import make_list
    from ezlist.subscribers import SubscriberDB

    root = work / "listhost"
    run([str(BIN / "mta"), "--root", str(root), "init", "--me", "bench.test", "--no-privsep"])
    cfg = make_list(root, "bench@bench.test")
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        db.add_many((f"user{i}@d{i % NDOMAINS}.test" for i in range(n)), "bench", int(time.time()))
    return root


def one_post(root: Path, machines: list[Machine], sinks: Sinks, n: int, message: bytes) -> dict:
    from ezlist.fanout import post_message
    from ezlist.listdir import load_list

    cfg = load_list(root, "bench")
    (cfg.path / "qmqpservers").write_text(
        "".join(f"{m.ip}:{m.qmqp}:{m.progress}\n" for m in machines))
    sinks.start()
    load = os.getloadavg()[0]
    mcpu0 = [m.cpu_s() for m in machines]
    ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    result = post_message(cfg, message, root)
    t_handover = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    deadline = time.monotonic() + 900
    while sinks.counts()[1] < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {sinks.counts()[1]} of {n} delivered")
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    mcpu = sum(m.cpu_s() for m in machines) - sum(mcpu0)
    sess, mesg = sinks.counts()
    sinks.stop()
    return {"machines": len(machines), "post": result.number, "wall_s": round(wall, 2),
            "deliveries_per_s": round(n / wall), "handover_wall_s": round(t_handover, 2),
            "listhost_cpu_s": round(cpu, 2), "listhost_cpu_us_per_rcpt": round(1e6 * cpu / n, 2),
            "machines_cpu_s": round(mcpu, 2), "machines_cpu_us_per_rcpt": round(1e6 * mcpu / n, 1),
            "load_1min_at_start": round(load, 1), "sink_sessions": sess, "sink_messages": mesg,
            "parts": part_details(cfg.path, result.number, n, len(machines), len(message))}


def part_details(list_dir: Path, number: int, n: int, k: int, message_bytes: int) -> list[dict]:
    """Per part: recipients, QMQP request bytes (as mta.qmqp encodes it), handover time."""
    from ezlist.scaleout import load_parts, split_by_domain
    from fanout_lib import recipients

    split = split_by_domain(recipients(n), k)
    out = []
    for p in load_parts(list_dir, number) or []:
        rcpts = split[p["bucket"]]
        size = message_bytes + 200 + sum(len(a) + len(str(len(a))) + 2 for a in rcpts)
        out.append({"recipients": p["recipients"], "bytes": size,
                    "handover_s": p.get("handover_s"), "machine": (p.get("server") or {}).get("host")})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipients", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--configs", default="1,2", help="machine counts to run, e.g. 1,2 or 1")
    ap.add_argument("--remote-concurrency", type=int, default=40,
                    help="each machine's control/concurrencyremote")
    ap.add_argument("--per-host", type=int, default=4, help="each machine's concurrencyperhost")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("scaleout_bench: needs root (smtp-sink runs as nobody)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE.parent))
    from fanout_lib import make_message

    work = Path(tempfile.mkdtemp(prefix="scaleout-bench-"))
    sinks = Sinks(work, free_port(sink_addrs()))
    machines = []
    try:
        root = make_list_host(work, args.recipients)
        configs = [int(k) for k in args.configs.split(",")]
        machines = [Machine(work, ip, sinks.port, args.remote_concurrency, args.per_host)
                    for ip in MACHINES[:max(configs)]]
        rows = []
        for _ in range(args.runs):
            for k in configs:  # interleaved, so drift hits both alike
                rows.append(one_post(root, machines[:k], sinks, args.recipients, make_message()))
                print(json.dumps(rows[-1]), flush=True)
        summary = {}
        for k in configs:
            mine = [r for r in rows if r["machines"] == k]
            summary[k] = {key: statistics.median(r[key] for r in mine)
                          for key in ("deliveries_per_s", "wall_s", "handover_wall_s",
                                      "listhost_cpu_s", "listhost_cpu_us_per_rcpt",
                                      "machines_cpu_us_per_rcpt")}
        print(json.dumps({"recipients": args.recipients, "runs": args.runs,
                          "concurrencyremote": args.remote_concurrency,
                          "concurrencyperhost": args.per_host, "median": summary}))
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "median": summary}, indent=1))
    finally:
        for m in machines:
            m.stop()
        sinks.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
