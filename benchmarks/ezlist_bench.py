"""ezlist benchmarks: a post to N subscribers into the queue, subscribe commands, bounces.

Usage: python benchmarks/ezlist_bench.py [--subscribers 1000000] [--subscribes 10000]
       [--bounces 10000] [--dir DIR]

1. post: N subscribers are loaded (SubscriberDB.add_many, timed separately),
   then one post is processed as mail to NAME@ would be (ezlist.deliver.run,
   in-process: check, number, headers, archive, ONE enqueue streaming the
   subscriber rows into the queue). Measured from the start of the post
   processing to the return of enqueue (all recipient rows committed); the
   queue's row count is checked afterwards.
2. subscribe: K addresses each send a subscribe request and then reply to the
   confirmation's cookie address (two ezlist.deliver.run calls in-process, each
   queueing a reply through mta.queue.enqueue with its fsync); the rate is
   addresses fully subscribed per second.
3. bounces: B VERP bounces (``NAME-return-1-box=dom@``) to subscribers through
   ezlist.deliver.run; bounces per second.

Each line also gives this process's CPU time (time.process_time) for the phase:
wall time minus CPU time is time spent waiting (fsyncs, the other processes of
a shared machine).

Nothing is delivered: no `mta send` runs, the queue just fills.

``--through-mta`` measures the same things through the real system instead
(benchmarks/ezlist_mta.py): `mta start` on a temporary instance, the post
injected by the qmail-queue shim and timed from the shim's exit 0 until the
fan-out message with all N recipient rows is committed in queue.db (remote
delivery is routed to a listener that never greets, so nothing leaves), and
``--mta-subscribes`` request + confirmation pairs by SMTP with the replies
received by a test sink.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ezlist import deliver  # noqa: E402
from ezlist.listdir import ListOptions, make_list  # noqa: E402
from ezlist.subscribers import SubscriberDB  # noqa: E402
from mta.instance import init_instance  # noqa: E402
from mta.queue import message_path, open_queue  # noqa: E402

HOST = "lists.bench.test"
POST = b"From: owner@bench.test\nSubject: newsletter\nMessage-ID: <n1@bench.test>\n\n" + \
    b"Hello subscribers.\n" * 200


def _env(root: Path, local: str, sender: str) -> dict:
    return {"MTA_ROOT": str(root), "SENDER": sender, "LOCAL": local, "HOST": HOST}


def bench_post(root: Path, n: int) -> None:
    cfg = make_list(root, f"big@{HOST}", ListOptions(archived=True))
    t0 = time.perf_counter()
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        db.add_many(f"user{i}@d{i % 5000}.example" for i in range(n))
    load = time.perf_counter() - t0
    print(f"load {n} subscribers: {load:.2f}s ({n / load:,.0f}/s)")
    t0, c0 = time.perf_counter(), time.process_time()
    reply = deliver.run(cfg.path, _env(root, "big", "owner@bench.test"), POST)
    took, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert reply.code == 0, reply
    conn = open_queue(root)
    msg_id, nrcpt = conn.execute("SELECT id, nrcpt FROM messages ORDER BY id DESC").fetchone()
    rows = conn.execute("SELECT count(*) FROM recipients WHERE msg = ?", (msg_id,)).fetchone()[0]
    conn.close()
    assert rows == nrcpt == n, (rows, nrcpt, n)
    verdict = "OK" if took <= 10 else "OVER the 10 s target"
    print(f"post to {n} subscribers queued (rows committed) in {took:.2f}s "
          f"({n / took:,.0f} rcpt/s, {cpu:.2f}s CPU) [{verdict}]")


def bench_subscribe(root: Path, k: int) -> None:
    cfg = make_list(root, f"subs@{HOST}", ListOptions())
    conn = open_queue(root)
    start_id = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(k):
        address = f"s{i}@sub{i % 100}.example"
        box, dom = address.split("@")
        r = deliver.run(cfg.path, _env(root, f"subs-subscribe-{box}={dom}", address), b"\n")
        assert r.code == 0, r
        msg_id = conn.execute("SELECT max(id) FROM messages").fetchone()[0]
        body = message_path(root, msg_id).read_bytes()
        local = re.search(rb"^Reply-To: (\S+)@", body, re.M).group(1).decode()
        r = deliver.run(cfg.path, _env(root, local, address), b"Subject: re\n\nok\n")
        assert r.code == 0 and "applied" in r.text, r
    took, cpu = time.perf_counter() - t0, time.process_time() - c0
    queued = conn.execute("SELECT count(*) FROM messages WHERE id > ?", (start_id,)).fetchone()[0]
    conn.close()
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        assert db.count() == k
    print(f"{k} subscribe commands end to end (request + confirmation, in-process, "
          f"{queued} replies queued): {took:.2f}s = {k / took:,.0f} subscriptions/s; "
          f"CPU {cpu:.2f}s = {1000 * cpu / k:.1f} ms a subscription")


def bench_bounces(root: Path, b: int) -> None:
    cfg = make_list(root, f"bnc@{HOST}", ListOptions())
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        db.add_many(f"b{i}@bounce{i % 50}.example" for i in range(b))
    bounce = b"Subject: failure notice\n\nHi. This is the qmail-send program.\n\n<x>:\n550 no\n"
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(b):
        r = deliver.run(cfg.path, _env(root, f"bnc-return-1-b{i}=bounce{i % 50}.example", ""),
                        bounce)
        assert r.code == 99 and "recorded" in r.text, r
    took, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"{b} VERP bounces recorded (in-process): {took:.2f}s = {b / took:,.0f} bounces/s; "
          f"CPU {cpu:.2f}s = {1000 * cpu / b:.2f} ms a bounce")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=1_000_000)
    ap.add_argument("--subscribes", type=int, default=10_000)
    ap.add_argument("--bounces", type=int, default=10_000)
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    ap.add_argument("--through-mta", action="store_true",
                    help="through mta start instead of in-process (see ezlist_mta.py)")
    ap.add_argument("--mta-subscribes", type=int, default=300,
                    help="with --through-mta: request + confirmation pairs by SMTP")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="ezlist-bench-"))
    if args.through_mta:
        from benchmarks.ezlist_mta import run_through_mta
        try:
            run_through_mta(work, args.subscribers, args.mta_subscribes)
        finally:
            if args.dir is None:
                shutil.rmtree(work, ignore_errors=True)
        return
    root = work / "inst"
    init_instance(root, "mx.bench.test")
    try:
        if args.subscribers:
            bench_post(root, args.subscribers)
        if args.subscribes:
            bench_subscribe(root, args.subscribes)
        if args.bounces:
            bench_bounces(root, args.bounces)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
