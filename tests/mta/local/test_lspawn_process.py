"""``python -m mta.lspawn`` as the scheduler runs it: jobs on stdin, results on stdout.

The contract (mta.send.spawn): one result line per recipient; at most
``concurrencylocal`` deliveries at once; a stop request finishes what the worker
holds (the waiting ones too) and exits 0; a bare end of input (the scheduler
died) exits 111 at once, even while a delivery is still running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mta.instance import init_instance
from mta.queue import enqueue
from tests.harness import open_fifo_writer


def _worker(root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mta.lspawn", "--root", str(root)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=dict(os.environ, MTA_PRIVSEP="no"))


def _send(proc: subprocess.Popen, obj: dict) -> None:
    proc.stdin.write(json.dumps(obj).encode() + b"\n")
    proc.stdin.flush()


def _results(proc: subprocess.Popen, n: int) -> dict[int, list]:
    got: dict[int, list] = {}
    while len(got) < n:
        line = proc.stdout.readline()
        assert line, f"the worker ended after {len(got)} of {n} results"
        for res in json.loads(line)["res"]:
            got[res[0]] = res
    return got


def _instance(tmp_path: Path, alias: str) -> tuple[Path, int]:
    root = tmp_path / "inst"
    init_instance(root, "mx.test", spare_files=0)
    (root / "alias" / ".qmail-box").write_text(alias)
    for sub in ("tmp", "new", "cur"):
        (root / "alias" / "box" / sub).mkdir(parents=True, exist_ok=True)
    return root, enqueue(root, "a@b.test", ["box@mx.test"], b"Subject: t\n\nhi\n")


def _job(msg: int, rids) -> dict:
    return {"jobs": [{"m": msg, "s": "a@b.test",
                      "r": [[rid, "box@mx.test", "box"] for rid in rids]}]}


def test_results_for_every_recipient_then_stop_exits_0(tmp_path):
    root, msg = _instance(tmp_path, "./box/\n")
    (root / "control" / "concurrencylocal").write_text("3\n")
    proc = _worker(root)
    try:
        _send(proc, _job(msg, range(1, 21)))
        got = _results(proc, 20)
        assert sorted(got) == list(range(1, 21))
        assert {r[1] for r in got.values()} == {"K"}, got
        _send(proc, {"stop": 1})
        proc.stdin.close()
        assert proc.wait(20) == 0
    finally:
        proc.kill()
    assert len(os.listdir(root / "alias" / "box" / "new")) == 20


def test_cap_holds_and_stop_finishes_the_waiting_ones(tmp_path):
    """concurrencylocal 2, four deliveries each waiting on its own FIFO: two start,
    the stop request comes, and all four still end (in order of release)."""
    fifos = [tmp_path / f"go{i}" for i in range(4)]
    for f in fifos:
        os.mkfifo(f)
    started = tmp_path / "started"
    started.mkdir()
    root, msg = _instance(tmp_path, "./box/\n")
    # box-x-N: note that it started, then wait for FIFO goN (DEFAULT is N)
    (root / "alias" / ".qmail-box-x-default").write_text(
        f"|touch {started}/$DEFAULT; read x < {tmp_path}/go$DEFAULT\n")
    (root / "control" / "concurrencylocal").write_text("2\n")
    proc = _worker(root)
    try:
        _send(proc, {"jobs": [{"m": msg, "s": "a@b.test",
                               "r": [[i + 1, f"box-x-{i}@mx.test", f"box-x-{i}"]
                                     for i in range(4)]}]})
        _send(proc, {"stop": 1})
        proc.stdin.close()
        deadline = time.monotonic() + 20
        while len(os.listdir(started)) < 2:
            assert time.monotonic() < deadline, "two deliveries did not start"
            time.sleep(0.02)
        for i in range(4):
            assert len(os.listdir(started)) <= 2 + i  # never more than the cap running
            fd = open_fifo_writer(fifos[i], max(1.0, deadline - time.monotonic()))
            os.write(fd, b"go\n")
            os.close(fd)
        got = _results(proc, 4)
        assert {r[1] for r in got.values()} == {"K"}, got
        assert proc.wait(20) == 0
    finally:
        proc.kill()


def test_end_of_input_without_stop_exits_111_at_once(tmp_path):
    fifo = tmp_path / "never"
    os.mkfifo(fifo)
    root, msg = _instance(tmp_path, f"|read x < {fifo}\n")
    proc = _worker(root)
    try:
        _send(proc, _job(msg, [1]))
        open_fifo_writer(fifo, 20)  # the delivery is running, and blocked
        proc.stdin.close()
        assert proc.wait(20) == 111
        assert proc.stdout.read() == b""  # nothing reported for the unfinished delivery
    finally:
        proc.kill()
