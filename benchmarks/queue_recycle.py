"""Kernel time per injection after a round of removals, with and without body recycling.

In a fresh queue under BASE (default /var/spool; ext4 without a journal here): inject
N small messages (1 KB) through enqueue_batch (BATCH at a time, the queue owner's
path), remove them all (remove_message), inject N more and report the system time
per injection of that second round (os.times of this process), plus user and wall.
Modes: "off" (mta.queue.free.FREE_CAP = 0: removal unlinks, as before), "cap1024"
(only 1024 of the N removed bodies are kept) and the default cap (8192: every
removed body can be reused). Medians of ROUNDS runs, each in its own
child process and fresh instance.

    python benchmarks/queue_recycle.py [--base /var/spool] [--n 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BATCH = 100


def run_child(base: str, n: int, cap: int) -> dict:
    import mta.queue.free as free
    from mta.queue import BatchItem, enqueue_batch, open_queue, remove_message

    free.FREE_CAP = cap
    root = tempfile.mkdtemp(prefix="recycle.", dir=base)
    try:
        conn = open_queue(root)
        body = b"Subject: bench\n\n" + b"x" * 1000 + b"\n"

        def inject() -> list[int]:
            ids: list[int] = []
            for start in range(0, n, BATCH):
                items = [BatchItem("a@x.test", [f"r{i}@y.test"], body, b"")
                         for i in range(start, min(n, start + BATCH))]
                ids += enqueue_batch(root, items, conn=conn)
            assert all(isinstance(i, int) for i in ids), ids[:3]
            return ids

        for msg_id in inject():
            remove_message(root, conn, msg_id)
        pooled = len(os.listdir(os.path.join(root, "queue", "free")))
        t0, w0 = os.times(), time.perf_counter()
        inject()
        t1, w1 = os.times(), time.perf_counter()
        conn.close()
        return {"sys_us": (t1.system - t0.system) / n * 1e6,
                "user_us": (t1.user - t0.user) / n * 1e6,
                "wall_us": (w1 - w0) / n * 1e6, "pooled": pooled}
    finally:
        shutil.rmtree(root)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="/var/spool")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child-cap", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_cap is not None:
        print(json.dumps(run_child(args.base, args.n, args.child_cap)))
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from mta.queue.free import FREE_CAP
    for mode, cap in (("off", 0), ("cap1024", 1024), (f"cap{FREE_CAP}", FREE_CAP)):
        runs = []
        for _ in range(args.rounds):
            out = subprocess.run([sys.executable, __file__, "--base", args.base, "--n",
                                  str(args.n), "--child-cap", str(cap)], cwd=here,
                                 check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out))
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{mode:9s} second round: sys {med['sys_us']:6.1f} us/msg  user "
              f"{med['user_us']:6.1f}  wall {med['wall_us']:6.1f}  (free/ held "
              f"{med['pooled']:.0f} before it; sys per run "
              + ", ".join(f"{r['sys_us']:.1f}" for r in runs) + ")", flush=True)


if __name__ == "__main__":
    main()
