"""Injection benchmark through the qmail-queue shim, as ezmlm-send uses it.

1. fan-out: one 4 KB message with N (default 1,000,000) recipients; the envelope is
   written to the shim's fd 1 through a pipe while the shim parses and inserts it.
   Prints elapsed seconds (spawn to exit) and the shim's peak RSS
   (getrusage(RUSAGE_CHILDREN).ru_maxrss). Targets: <= 10 s, < 300 MB.
2. singles: M (default 1,000) one-recipient messages back to back, one shim
   process each; prints messages/s.

Each run uses a fresh instance in a temporary folder (or under --dir). The median
of --runs (default 3) is printed last.

    .venv/bin/python benchmarks/inject_fanout.py [--recipients N] [--singles M]
                                                 [--runs 3] [--dir PATH]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mta.queue import open_queue

SHIM = [sys.executable, "-m", "cli.qmail_queue"]
MESSAGE = (b"From: list@lists.example\nTo: list@lists.example\nSubject: bench\n\n"
           + b"0123456789abcdef" * 252 + b"\n")  # ~4 KB


def envelope_chunks(n: int, per_chunk: int = 10_000):
    """The envelope, generated while it is written (as ezmlm-send streams its
    subscriber list): this process stays small, so the RSS measured below is the
    shim's (a vfork/exec child inherits its parent's RSS high-water mark)."""
    yield b"Flist-return-7-@lists.example-@[]\0"
    for start in range(0, n, per_chunk):
        yield b"".join(b"Tsubscriber%d@host%d.example\0" % (i, i % 5000)
                       for i in range(start, min(n, start + per_chunk)))
    yield b"\0"


def inject(root: Path, n: int) -> int:
    """One shim run, message then envelope through pipes; returns the exit code."""
    env_r, env_w = os.pipe()
    proc = subprocess.Popen(SHIM, stdin=subprocess.PIPE, stdout=env_r,
                            env={**os.environ, "MTA_ROOT": str(root)})
    os.close(env_r)
    proc.stdin.write(MESSAGE)
    proc.stdin.close()
    try:
        for chunk in envelope_chunks(n):
            view = memoryview(chunk)
            while view:
                view = view[os.write(env_w, view):]
    finally:
        os.close(env_w)
    return proc.wait()


def fresh_root(base: Path) -> Path:
    root = Path(tempfile.mkdtemp(prefix="bench-inject-", dir=base))
    open_queue(root).close()
    return root


def run_fanout(base: Path, n: int) -> tuple[float, float]:
    root = fresh_root(base)
    try:
        start = time.perf_counter()
        code = inject(root, n)
        elapsed = time.perf_counter() - start
        if code != 0:
            raise SystemExit(f"qmail-queue exited {code}")
        conn = open_queue(root)
        got = conn.execute("SELECT nrcpt FROM messages").fetchone()[0]
        conn.close()
        if got != n:
            raise SystemExit(f"queued {got} recipients, expected {n}")
    finally:
        shutil.rmtree(root)
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return elapsed, rss_mb


def run_singles(base: Path, m: int) -> float:
    root = fresh_root(base)
    try:
        start = time.perf_counter()
        for _ in range(m):
            if inject(root, 1) != 0:
                raise SystemExit("qmail-queue failed")
        return m / (time.perf_counter() - start)
    finally:
        shutil.rmtree(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipients", type=int, default=1_000_000)
    ap.add_argument("--singles", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to make the instances")
    args = ap.parse_args()
    base = args.dir or Path(tempfile.gettempdir())
    fan, rss, singles = [], [], []
    for i in range(args.runs):
        elapsed, peak = run_fanout(base, args.recipients)
        fan.append(elapsed)
        rss.append(peak)
        print(f"run {i + 1}: fan-out {args.recipients} recipients {elapsed:.2f} s "
              f"({args.recipients / elapsed:,.0f} rcpt/s), peak RSS so far {peak:.0f} MB",
              flush=True)
        if args.singles:
            rate = run_singles(base, args.singles)
            singles.append(rate)
            print(f"run {i + 1}: {args.singles} single-recipient messages {rate:.1f} msg/s",
                  flush=True)
    print(f"median: fan-out {statistics.median(fan):.2f} s, peak RSS {max(rss):.0f} MB"
          + (f", singles {statistics.median(singles):.1f} msg/s" if singles else ""))


if __name__ == "__main__":
    main()
