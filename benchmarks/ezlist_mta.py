"""ezlist through the real system: `mta start`, the qmail-queue shim, SMTP, local delivery.

Run by ``benchmarks/ezlist_bench.py --through-mta [--subscribers N] [--mta-subscribes K]``.

1. post from acceptance: a fresh instance with list ``big@lists.bench.test`` and N
   subscribers (loaded with SubscriberDB.add_many, not timed); `mta start` runs with
   every remote domain routed (control/smtproutes) to a loopback listener that
   accepts TCP connections but never sends a greeting, so no recipient is
   delivered or even tried to completion while we watch. The post is injected to
   ``big@`` by the qmail-queue shim (as qmail-inject would); the clock starts when
   the shim has exited 0 (the post is committed to the queue). The scheduler then
   runs the dot-qmail program ``python -m ezlist.deliver`` for it, which queues the
   fan-out. The clock stops when a read-only connection to queue.db sees the
   fan-out message (sender ``big-return-1-@...-@[]``) with N recipient rows
   (polled every 10 ms; one transaction commits the message and all its rows).
   Breakdown from queue.db: the post's queue time, the fan-out's ``created``
   (written at the start of its transaction, after ezlist has started, numbered,
   edited and archived the post and written its body) and the commit seen.
2. subscribe end to end: K addresses ``sI@subJ.example`` each send, over one SMTP
   connection to the listener, a message to ``subs-subscribe-sI=subJ.example@``;
   the confirmations come back by remote SMTP delivery to a test sink; each is
   answered (SMTP again) to its ``Reply-To`` cookie address; done when the
   subscriber database holds K addresses (welcomes: when the sink has them all).
   Each of the 2K local deliveries starts one ``python -m ezlist.deliver``
   process, at most ``concurrencylocal`` (10) at a time; the report prints the
   cost of one such start (import of ezlist.deliver, measured separately).

As root, the instance is made without privilege separation (MTA_PRIVSEP=no): this
Python lives under /root, which the per-role users cannot search.
"""

from __future__ import annotations

import os
import re
import resource
import smtplib
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ezlist.listdir import ListOptions, make_list
from ezlist.subscribers import SubscriberDB

HOST = "lists.bench.test"
POST = (b"From: owner@bench.test\nTo: big@" + HOST.encode() + b"\nSubject: newsletter\n"
        b"Message-ID: <e2e1@bench.test>\n\n" + b"Hello subscribers.\n" * 200)


_LOCAL_START = re.compile(rf"^@(\d+\.\d+) starting delivery \d+: msg \d+ to local big@{HOST}")


class Blackhole:
    """A listener that never accepts: connections complete in the backlog, no greeting."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(1024)
        self.host, self.port = self.sock.getsockname()

    def __enter__(self) -> "Blackhole":
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()


def _system(base: Path):
    os.environ["MTA_PRIVSEP"] = "no"
    from tests.e2e.conftest import System  # noqa: E402  (after MTA_PRIVSEP is set)
    base.mkdir(parents=True, exist_ok=True)
    system = System(base, me="mx.bench.test")
    system.control("locals", f"mx.bench.test\n{HOST}\n")
    return system


def _inject(system, sender: str, rcpt: str, body: bytes) -> float:
    """The qmail-queue shim with ``body`` on fd 0 and the envelope on fd 1; exit time."""
    envelope = b"F" + sender.encode() + b"\0T" + rcpt.encode() + b"\0\0"
    r, w = os.pipe()
    p = subprocess.Popen([str(Path(sys.executable).parent / "qmail-queue")],
                         stdin=subprocess.PIPE, stdout=r, env=system.env)
    os.close(r)
    p.stdin.write(body)
    p.stdin.close()
    os.write(w, envelope)
    os.close(w)
    code = p.wait(60)
    done = time.time()
    assert code == 0, f"qmail-queue exited {code}"
    return done


def _wait_fanout(root: Path, sender_like: str, n: int, timeout: float) -> tuple[float, int, float]:
    """Poll queue.db read-only until the fan-out has n rows: (seen, msg id, created)."""
    conn = sqlite3.connect(f"file:{root / 'queue' / 'queue.db'}?mode=ro", uri=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT id, created FROM messages WHERE sender LIKE ?",
                               (sender_like,)).fetchone()
            if row:
                rows = conn.execute("SELECT count(*) FROM recipients WHERE msg = ?",
                                    (row[0],)).fetchone()[0]
                assert rows == n, f"fan-out msg {row[0]} visible with {rows} of {n} rows"
                return time.time(), row[0], row[1]
            time.sleep(0.01)
    finally:
        conn.close()
    raise AssertionError(f"no fan-out message with {n} rows within {timeout}s")


def _post_created(root: Path, fanout_id: int) -> float:
    conn = sqlite3.connect(f"file:{root / 'queue' / 'queue.db'}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT created, finished FROM finished WHERE id < ? "
                           "ORDER BY id DESC", (fanout_id,)).fetchone()
        if row is None:  # the post's local delivery not yet recorded as finished
            row = conn.execute("SELECT created, 0 FROM messages WHERE id < ? ORDER BY id DESC",
                               (fanout_id,)).fetchone()
        return row[0]
    finally:
        conn.close()


def bench_post_from_acceptance(base: Path, n: int) -> float:
    system = _system(base)
    cfg = make_list(system.root, f"big@{HOST}", ListOptions(archived=True))
    t0 = time.perf_counter()
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        db.add_many(f"user{i}@d{i % 5000}.example" for i in range(n))
    print(f"[mta] load {n} subscribers: {time.perf_counter() - t0:.2f}s (not timed)")
    with Blackhole("127.0.1.77") as hole:
        system.control("smtproutes", f":{hole.host}:{hole.port}\n")
        system.control("timeoutremote", "3600")
        system.control("concurrencyremote", "2")
        try:
            system.start()
            accepted = _inject(system, "owner@bench.test", f"big@{HOST}", POST)
            seen, msg_id, created = _wait_fanout(system.root, "big-return-1-@%", n, 300)
            took = seen - accepted
            verdict = "OK" if took <= 10 else "OVER the 10 s target"
            print(f"[mta] post to {n} subscribers: accepted (shim exit 0) -> fan-out msg "
                  f"{msg_id} with all {n} rows committed: {took:.2f}s [{verdict}]", flush=True)
            system.stop(120)
        finally:
            system.cleanup()
    queued = _post_created(system.root, msg_id)
    starts = [float(m.group(1)) for line in system.log_lines()
              if (m := _LOCAL_START.match(line))]
    picked = f"{starts[0] - accepted:.3f}s" if starts else "?"
    print(f"[mta]   breakdown from acceptance: post committed {queued - accepted:+.3f}s "
          f"(before the shim exited); local delivery to big@ started {picked}; "
          f"fan-out transaction began {created - accepted:.3f}s (ezlist started, numbered, "
          f"archived, body written); rows + commit {seen - created:.2f}s (poll 10 ms)")
    return took


def _reply_to(data: bytes) -> str:
    m = re.search(rb"^Reply-To: (\S+)\r?$", data, re.M)
    assert m, data[:500]
    return m.group(1).decode()


def _count(list_dir: Path) -> int:
    conn = sqlite3.connect(f"file:{list_dir / 'subscribers.db'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM subscribers").fetchone()[0]
    finally:
        conn.close()


def _wait(predicate, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return time.perf_counter()


def _send_all(port: int, pairs) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        for sender, rcpt, body in pairs:
            s.sendmail(sender, [rcpt], body)


def bench_subscribe_through_mta(base: Path, k: int) -> None:
    from tests.sink import Sink
    system = _system(base)
    cfg = make_list(system.root, f"subs@{HOST}", ListOptions())
    addrs = [f"s{i}@sub{i % 100}.example" for i in range(k)]
    limit = 120 + k  # generous: about 0.3 s of CPU per local delivery on 2 cores
    with Sink("127.0.1.78") as sink:
        system.control("smtproutes", f":{sink.host}:{sink.port}\n")
        try:
            before = _children_cpu()
            system.start()
            t0 = time.perf_counter()
            _send_all(system.port, [(a, f"subs-subscribe-{a.replace('@', '=')}@{HOST}",
                                     b"Subject: sub\r\n\r\nplease\r\n") for a in addrs])
            t_sent = time.perf_counter()
            t_conf = _wait(lambda: sink.rcpt_count() >= k, limit, f"{k} confirmations")
            confirms = list(sink.messages[:k])
            _send_all(system.port, [(m.rcpts[0], _reply_to(m.data),
                                     b"Subject: Re: confirm\r\n\r\nyes\r\n") for m in confirms])
            t_sub = _wait(lambda: _count(cfg.path) >= k, limit, f"{k} subscriptions")
            t_welc = _wait(lambda: sink.rcpt_count() >= 2 * k, limit, f"{k} welcomes")
            system.stop(60)
            cpu = _children_cpu() - before
        finally:
            system.cleanup()
    assert _count(cfg.path) == k and sorted(m.rcpts[0] for m in confirms) == sorted(addrs)
    print(f"[mta] {k} subscribe requests sent by SMTP in {t_sent - t0:.2f}s; "
          f"{k} confirmations at the sink after {t_conf - t0:.2f}s "
          f"({k / (t_conf - t0):.1f}/s)")
    print(f"[mta] {k} confirmations answered: all subscribed after {t_sub - t_conf:.2f}s "
          f"({k / (t_sub - t_conf):.1f}/s), welcomes at the sink after {t_welc - t_conf:.2f}s")
    print(f"[mta] {k} subscriptions end to end (request + confirmation through mta start): "
          f"{t_sub - t0:.2f}s = {k / (t_sub - t0):.1f} subscriptions/s "
          f"({2 * k / (t_sub - t0):.1f} local deliveries/s)")
    print(f"[mta]   CPU of the whole mta system (start to stop, all its processes): "
          f"{cpu:.1f}s = {1000 * cpu / (2 * k):.0f} ms a local delivery incl. its reply")


def _children_cpu() -> float:
    """CPU seconds of every reaped descendant (mta start's components and their children)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure_process_start(runs: int = 10) -> None:
    """Wall and CPU time of one ``python -c 'import ezlist.deliver'`` (what each delivery pays)."""
    walls = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import ezlist.deliver"], check=True)
        walls.append(time.perf_counter() - t0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / runs
    print(f"[mta] one Python start + import ezlist.deliver: median {statistics.median(walls) * 1000:.0f} ms "
          f"wall, {cpu * 1000:.0f} ms CPU ({runs} runs)")


def run_through_mta(work: Path, n: int, k: int) -> None:
    if n:
        bench_post_from_acceptance(work / "post", n)
    if k:
        measure_process_start()
        bench_subscribe_through_mta(work / "subs", k)
