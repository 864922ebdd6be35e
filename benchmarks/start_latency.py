#!/usr/bin/env python3
"""How soon a newly injected message starts delivering (issue 3: within 100 ms).

Starts `mta send` on a fresh instance routed to an smtp-sink-like receiver (our test
sink), waits until it is idle, then injects single-recipient messages one at a time
through the qmail-queue shim, each after the previous one was delivered. Latency =
the log's "starting delivery" timestamp minus the message's queue insert time
(``created``, written in the committing transaction; from the ``finished`` table),
and, as an upper bound, minus the moment the shim was started (which adds the
shim's own Python start-up and its fsyncs). All wall-clock. Prints median, min, max over --count injections.

    .venv/bin/python benchmarks/start_latency.py [--count 30]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mta.queue import open_queue  # noqa: E402
from tests.harness import Instance  # noqa: E402
from tests.sink import Sink  # noqa: E402

_START = re.compile(r"^@(\d+\.\d+) starting delivery \d+: msg (\d+) ")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=30)
    args = ap.parse_args()
    os.environ.setdefault("MTA_PRIVSEP", "no")  # as root: one uid, same processes
    inst = Instance(Path(tempfile.mkdtemp(prefix="latency-")))
    lat, from_commit = [], []
    with Sink("127.0.1.60") as sink:
        inst.control("smtproutes", f":127.0.1.60:{sink.port}\n")
        inst.start()
        try:
            inst.inject("a@mx.test", ["warmup@x.test"])
            sink.wait_for(1, 30)
            for i in range(args.count):
                time.sleep(0.2)  # let the scheduler go idle
                injected = time.time()  # before the shim starts: an upper bound
                assert inst.inject("a@mx.test", [f"r{i}@x.test"]) == 0
                sink.wait_for(i + 2, 30)
                starts = [(float(m.group(1)), int(m.group(2))) for line in inst.log_lines()
                          if (m := _START.match(line))]
                started, msg = starts[-1]
                lat.append(started - injected)
                inst.wait_empty(30)
                conn = open_queue(inst.root)
                created = conn.execute("SELECT created FROM finished WHERE id = ?",
                                       (msg,)).fetchone()[0]
                conn.close()
                from_commit.append(started - created)
        finally:
            inst.stop()
    for name, xs in (("from the queue insert (commit)", from_commit),
                     ("from the shim's start (upper bound)", lat)):
        ms = sorted(1000 * x for x in xs)
        print(f"start latency {name}, {len(ms)} injections: median "
              f"{statistics.median(ms):.1f} ms, min {ms[0]:.1f} ms, max {ms[-1]:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
