"""Benchmark: VERP transactions/s of mta.net.smtp_client against Postfix smtp-sink.

Starts ``/usr/sbin/smtp-sink`` on 127.0.1.1 .. 127.0.1.N (on Linux all of
127.0.0.0/8 is on ``lo``), opens ``--connections`` client connections spread over
them in one uvloop event loop, and sends ``--transactions`` VERP transactions (one
recipient each, one prepared 4 KB body shared by all), pipelined (MAIL, RCPT, DATA
in one write). Reports wall-clock transactions/s and this process's CPU time per
transaction (``time.process_time``: user + system of the client only; the sinks
run in their own processes).

Usage: .venv/bin/python benchmarks/bench_smtp_client.py [--transactions 20000]
       [--connections 50] [--sinks 10] [--body-size 4096] [--repeat 3] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import socket
import subprocess
import sys
import time

import uvloop

from mta.interfaces import Delivered
from mta.net.smtp_client import open_smtp_connection
from mta.remote.body import prepare_body
from mta.verp import verp_sender

SINK = "/usr/sbin/smtp-sink"


def free_port(addrs: list[str]) -> int:
    for _ in range(50):
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
    raise SystemExit("no port free on every sink address")


def start_sinks(addrs: list[str], port: int) -> list[subprocess.Popen]:
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    procs = [subprocess.Popen([SINK, *user, f"{a}:{port}", "1024"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for a in addrs]
    deadline = time.monotonic() + 10
    for a, p in zip(addrs, procs):
        while True:
            try:
                socket.create_connection((a, port), timeout=1).close()
                break
            except OSError:
                if p.poll() is not None or time.monotonic() > deadline:
                    stop_sinks(procs)
                    raise SystemExit(f"smtp-sink on {a}:{port} did not start: "
                                     f"{p.stderr.read().decode() if p.stderr else ''}")
                time.sleep(0.02)
    return procs


def stop_sinks(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


async def worker(addr: str, port: int, count: int, first: int, body: bytes) -> int:
    ok = 0
    conn = await open_smtp_connection(addr, port, helo="bench.test", timeout_connect=10,
                                      timeout_reply=30)
    sender = "list-return-7-@lists.bench.test-@[]"
    for i in range(first, first + count):
        rcpt = f"user{i}@example{i % 97}.test"
        outcomes = await conn.send_transaction(verp_sender(sender, rcpt), (rcpt,), body)
        ok += type(outcomes[0]) is Delivered
    await conn.quit()
    return ok


async def run_once(addrs, port, total, connections, body) -> tuple[int, float, float]:
    per = total // connections
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    results = await asyncio.gather(*(
        worker(addrs[i % len(addrs)], port, per, i * per, body) for i in range(connections)))
    return sum(results), time.perf_counter() - started_wall, time.process_time() - started_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transactions", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--sinks", type=int, default=10)
    ap.add_argument("--body-size", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="cProfile one run, print top 25")
    args = ap.parse_args()
    addrs = [f"127.0.1.{i}" for i in range(1, args.sinks + 1)]
    port = free_port(addrs)
    line = b"x" * 75 + b"\n"
    body = prepare_body(b"Subject: bench\n\n" + line * (args.body_size // len(line)))
    procs = start_sinks(addrs, port)
    try:
        print(f"# {args.transactions} VERP transactions, {args.connections} connections, "
              f"{len(addrs)} smtp-sinks, body {len(body)} bytes prepared")
        for run in range(args.repeat):
            if args.profile:
                prof = cProfile.Profile()
                prof.enable()
            ok, wall, cpu = uvloop.run(run_once(addrs, port, args.transactions,
                                                args.connections, body))
            if args.profile:
                prof.disable()
            n = args.transactions // args.connections * args.connections
            print(f"run {run + 1}: delivered {ok}/{n}  {ok / wall:,.0f} tx/s  "
                  f"CPU {cpu / max(ok, 1) * 1e6:.1f} us/tx  wall {wall:.2f} s")
            if args.profile:
                pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(25)
                break
    finally:
        stop_sinks(procs)


if __name__ == "__main__":
    main()
