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
and the sinks' session count. Root is needed (smtp-sink runs as nobody; Postfix's
package provides it).

    .venv/bin/python benchmarks/scaleout_bench.py [--recipients 100000] [--runs 3]
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

from fanout_lib import NDOMAINS, Sinks, free_port, sink_addrs  # noqa: E402

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
    def __init__(self, work: Path, ip: str, sink_port: int):
        self.ip, self.root = ip, work / f"machine-{ip}"
        run([str(BIN / "mta"), "--root", str(self.root), "init", "--me", f"mx-{ip}.test",
             "--no-privsep"])
        ctl = self.root / "control"
        (ctl / "smtproutes").write_text("".join(
            f"d{j}.test:127.0.1.{j % 10 + 1}:{sink_port}\n" for j in range(NDOMAINS)))
        (ctl / "concurrencyremote").write_text("40\n")
        (ctl / "concurrencyperhost").write_text("4\n")
        (ctl / "qmqpaccess").write_text("127.0.0.0/8:allow\n:deny\n")
        self.qmqp, self.progress = port_on(ip), port_on(ip)
        self.proc = subprocess.Popen(
            [str(BIN / "mta"), "--root", str(self.root), "start", "--smtp",
             f"{ip}:{port_on(ip)}", "--qmqp", f"{ip}:{self.qmqp}", "--progress",
             f"{ip}:{self.progress}"], start_new_session=True, stderr=subprocess.DEVNULL)
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
    sess, mesg = sinks.counts()
    sinks.stop()
    return {"machines": len(machines), "post": result.number, "wall_s": round(wall, 2),
            "deliveries_per_s": round(n / wall), "handover_wall_s": round(t_handover, 2),
            "listhost_cpu_s": round(cpu, 2), "listhost_cpu_us_per_rcpt": round(1e6 * cpu / n, 2),
            "sink_sessions": sess, "sink_messages": mesg}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipients", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
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
        machines = [Machine(work, ip, sinks.port) for ip in MACHINES]
        rows = []
        for _ in range(args.runs):
            for k in (1, 2):  # interleaved, so drift hits both alike
                rows.append(one_post(root, machines[:k], sinks, args.recipients, make_message()))
                print(json.dumps(rows[-1]), flush=True)
        summary = {}
        for k in (1, 2):
            mine = [r for r in rows if r["machines"] == k]
            summary[k] = {key: statistics.median(r[key] for r in mine)
                          for key in ("deliveries_per_s", "wall_s", "handover_wall_s",
                                      "listhost_cpu_s", "listhost_cpu_us_per_rcpt")}
        print(json.dumps({"recipients": args.recipients, "runs": args.runs, "median": summary}))
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
