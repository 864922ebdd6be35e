"""The local delivery worker alone: ``python -m mta.lspawn`` fed N jobs on its stdin.

A fresh instance (in /var/spool, see local_delivery_vs_postfix.py for why) holds one
queued message and ``alias/.qmail-box`` = the delivery under test (``|true`` or
``./box/``). After one warm-up delivery, one job line carries N recipients; the
figure is N over the wall time until N results came back, and the worker's CPU
(its own and its children's: the ``sh -c`` of program deliveries) per delivery.
Stock concurrencylocal (10). Rounds alternate between this checkout and
``--compare DIR`` (a folder holding an older ``mta/``, e.g. ``git archive COMMIT mta
cli ezlist | tar -x -C DIR``); medians are printed.

    .venv/bin/python benchmarks/local_worker.py [--rounds 3] [--compare DIR]
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
from pathlib import Path
from time import perf_counter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mta.instance import init_instance  # noqa: E402
from mta.queue import enqueue  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
KEPT: list[Path] = []


def _job(msg: int, rids) -> bytes:
    return json.dumps({"jobs": [{"m": msg, "s": "a@b.test",
                                 "r": [[i, "box@mx.test", "box"] for i in rids]}]}).encode() + b"\n"


def one_round(code: Path, alias: str, n: int) -> tuple[float, float]:
    base = Path(tempfile.mkdtemp(dir="/var/spool", prefix="local-worker-"))
    KEPT.append(base)  # removed at the end: deletions slow the next round's file creation
    root = base / "inst"
    init_instance(root, "mx.test", spare_files=0)
    (root / "alias" / ".qmail-box").write_text(alias)
    for sub in ("tmp", "new", "cur"):
        (root / "alias" / "box" / sub).mkdir(parents=True, exist_ok=True)
    msg = enqueue(root, "a@b.test", ["box@mx.test"], b"Subject: t\n\nhi\n")
    p = subprocess.Popen([sys.executable, "-m", "mta.lspawn", "--root", str(root)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=code,
                         env=dict(os.environ, MTA_PRIVSEP="no", PYTHONPATH=str(code)))
    p.stdin.write(_job(msg, [0]))  # warm-up: imports, first thread
    p.stdin.flush()
    p.stdout.readline()
    started = perf_counter()
    p.stdin.write(_job(msg, range(1, n + 1)))
    p.stdin.flush()
    got = 0
    while got < n:
        line = p.stdout.readline()
        if not line:
            raise SystemExit(f"the worker from {code} ended after {got} of {n} results")
        got += len(json.loads(line)["res"])
    wall = perf_counter() - started
    fields = Path(f"/proc/{p.pid}/stat").read_text().rpartition(")")[2].split()
    cpu = sum(int(f) for f in fields[11:15]) / TICK  # includes the warm-up (small)
    p.stdin.write(b'{"stop":1}\n')
    p.stdin.close()
    p.wait(60)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compare", type=Path, metavar="DIR")
    a = ap.parse_args()
    versions = [("this", REPO)] + ([("base", a.compare.resolve())] if a.compare else [])
    try:
        run_all(a, versions)
    finally:
        for base in KEPT:
            shutil.rmtree(base, ignore_errors=True)


def run_all(a, versions) -> None:
    for alias, n in (("|true\n", 300), ("./box/\n", 2000)):
        res: dict[str, list] = {name: [] for name, _ in versions}
        for _ in range(a.rounds):
            for name, code in versions:
                res[name].append(one_round(code, alias, n))
        for name, runs in res.items():
            print(f"{alias.strip():8s} {name}: {n / statistics.median(w for w, _ in runs):6.0f}"
                  f" deliveries/s, {statistics.median(c for _, c in runs) / n * 1000:.2f} ms"
                  f" worker CPU each (rounds: {', '.join(f'{w:.2f}s' for w, _ in runs)})")


if __name__ == "__main__":
    main()
