"""Run every benchmark in turn with small defaults and print one summary.

    .venv/bin/python benchmarks/run_all.py [--full] [--json FILE]

1. ``bench_inject.py`` through pytest-benchmark (``--benchmark-only``): mean times.
2. ``inject_fanout.py``: one message to many recipients through the qmail-queue
   shim (seconds, peak RSS) and single-recipient messages/s.
3. ``bench_smtp_client.py``: VERP transactions/s of our SMTP client into smtp-sinks.
4. ``fanout_vs_postfix.py``: the end-to-end VERP fan-out, ours and Postfix (Postfix
   only as root; otherwise ``--ours-only``), with a validation pass.
5. ``scaleout_bench.py`` (root only): one list post through one, then two QMQP
   delivery machines (deliveries/s, handover time, CPU per recipient).
6. the other helpers' scripts, when present: ``ezlist_bench.py`` (list post,
   subscribes, bounces) and ``smtp_ingress_vs_postfix.py`` (SMTP ingress); their
   last output lines are quoted in the summary.

Small defaults keep the whole thing to a few minutes; ``--full`` uses the sizes
behind benchmarks/RESULTS.md (1M-recipient injection, 100k fan-out x 3: about
15 minutes). Each step has a time bound; a step that fails or times out is shown
as FAILED with the end of its output, the others still run, and the exit status
is 1. Numbers are read from each script's own output (or JSON), never recomputed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable


def step(name: str, cmd: list[str], timeout: float) -> tuple[bool, str, float]:
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=HERE.parent, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        ok = p.returncode == 0
    except subprocess.TimeoutExpired:
        p.terminate()  # SIGTERM first: the scripts stop Postfix and their sinks on the way out
        try:
            out, _ = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        out, ok = f"{out}\nTIMED OUT after {timeout:.0f} s", False
    print(out.rstrip()[-4000:], flush=True)
    return ok, out, time.monotonic() - t0


def bench_inject(tmp: Path, full: bool) -> list[str]:
    js = tmp / "bench_inject.json"
    ok, out, _ = step("bench_inject (pytest-benchmark)",
                      [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / "bench_inject.py"),
                       "--benchmark-only", f"--benchmark-json={js}"], 900 if full else 300)
    if not ok or not js.exists():
        return ["bench_inject: FAILED"]
    rows = json.loads(js.read_text())["benchmarks"]
    return [f"bench_inject {b['name']}: mean {b['stats']['mean'] * 1000:.2f} ms"
            f" (min {b['stats']['min'] * 1000:.2f}, rounds {b['stats']['rounds']})" for b in rows]


def inject_fanout(tmp: Path, full: bool) -> list[str]:
    args = (["--recipients", "1000000", "--singles", "1000", "--runs", "3"] if full
            else ["--recipients", "100000", "--singles", "200", "--runs", "1"])
    ok, out, _ = step("inject_fanout", [PY, str(HERE / "inject_fanout.py"), *args,
                                         "--dir", str(tmp)], 900 if full else 300)
    med = re.findall(r"^median: .*$", out, re.M)
    return [f"inject_fanout ({' '.join(args)}): {med[-1]}" if ok and med else "inject_fanout: FAILED"]


def smtp_client(full: bool) -> list[str]:
    args = ["--transactions", "20000", "--repeat", "3"] if full else ["--transactions", "10000",
                                                                       "--repeat", "1"]
    ok, out, _ = step("bench_smtp_client", [PY, str(HERE / "bench_smtp_client.py"), *args], 300)
    runs = re.findall(r"^run \d+: .*$", out, re.M)
    if not ok or not runs:
        return ["bench_smtp_client: FAILED"]
    rates = sorted(float(r.replace(",", "")) for r in re.findall(r"([\d,]+) tx/s", "\n".join(runs)))
    return [f"bench_smtp_client ({' '.join(args)}): median {rates[len(rates) // 2]:,.0f} tx/s;"
            f" {runs[-1]}"]


def fanout(tmp: Path, full: bool) -> list[str]:
    js = tmp / "fanout.json"
    args = (["--recipients", "100000", "--runs", "3"] if full
            else ["--recipients", "10000", "--runs", "1", "--validate", "2000"])
    if os.geteuid() != 0:
        args.append("--ours-only")
    ok, out, _ = step("fanout_vs_postfix", [PY, str(HERE / "fanout_vs_postfix.py"), *args,
                                             "--json", str(js)], 1800 if full else 600)
    if not js.exists():
        return ["fanout_vs_postfix: FAILED"]
    data = json.loads(js.read_text())
    lines = []
    for engine in ("ours", "postfix"):
        s = data["summary"].get(engine)
        if s:
            mem = (f", peak mem {s['peak_mem_mb']['max']:.0f} MB" if s["peak_mem_mb"]["n"] else "")
            lines.append(f"fanout {engine} N={args[1]}: {s['rate']['median']:,.0f} deliveries/s"
                         f" [{s['rate']['min']:,.0f}-{s['rate']['max']:,.0f}],"
                         f" {s['cpu_ms_per_delivery']['median']:.3f} ms CPU/delivery{mem}")
    r = data["summary"].get("ratios")
    if r:
        lines.append(f"fanout ratios ours/Postfix: rate x{r['rate_ours_over_postfix']:.2f},"
                     f" CPU/delivery x{r['cpu_per_delivery_ours_over_postfix']:.3f}")
    lines.append(f"fanout validation: {'OK' if data['ok'] and ok else 'FAILED'}")
    return lines


def others(tmp: Path, full: bool) -> list[str]:
    """Scripts other helpers own: run with small sizes, quote their last lines."""
    root = os.geteuid() == 0
    steps = [("ezlist_bench.py", [] if full else ["--subscribers", "100000", "--subscribes",
                                                  "200", "--bounces", "1000"], ["--dir", str(tmp)]),
             ("smtp_ingress_vs_postfix.py", [] if full else ["--messages", "1000", "--runs", "1"],
              [] if root else ["--skip-postfix"])]
    lines = []
    for script, args, extra in steps:
        if not (HERE / script).exists():
            continue
        ok, out, _ = step(script, [PY, str(HERE / script), *args, *extra], 1800 if full else 600)
        tail = [x.strip() for x in out.strip().splitlines()[-3:] if x.strip()]
        lines.append(f"{script} ({' '.join(args) or 'defaults'}): "
                     + (" | ".join(tail) if ok else "FAILED"))
    return lines


def scaleout(tmp: Path, full: bool) -> list[str]:
    """One post through one, then two QMQP delivery machines (root: smtp-sink as nobody)."""
    if os.geteuid() != 0:
        return ["scaleout_bench: skipped (needs root)"]
    js = tmp / "scaleout.json"
    args = ["--recipients", "100000", "--runs", "3"] if full else ["--recipients", "10000",
                                                                    "--runs", "1"]
    ok, out, _ = step("scaleout_bench", [PY, str(HERE / "scaleout_bench.py"), *args,
                                          "--json", str(js)], 2400 if full else 600)
    if not ok or not js.exists():
        return ["scaleout_bench: FAILED"]
    med = json.loads(js.read_text())["median"]
    return [f"scaleout N={args[1]} through {k} machine(s): {m['deliveries_per_s']:,.0f}"
            f" deliveries/s, handover {m['handover_wall_s']:.2f} s, list host"
            f" {m['listhost_cpu_us_per_rcpt']:.1f} us CPU/rcpt, machines"
            f" {m['machines_cpu_us_per_rcpt']:.0f} us CPU/rcpt" for k, m in med.items()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--full", action="store_true", help="the sizes behind RESULTS.md")
    ap.add_argument("--json", type=Path, default=None, help="write the summary lines here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-all-") as d:
        tmp = Path(d)
        os.chmod(tmp, 0o755)
        summary = (bench_inject(tmp, args.full) + inject_fanout(tmp, args.full)
                   + smtp_client(args.full) + fanout(tmp, args.full) + scaleout(tmp, args.full)
                   + others(tmp, args.full))
    print("\n=== summary (" + ("full" if args.full else "small defaults") + f", {time.ctime()},"
          f" {os.cpu_count()} CPUs)")
    for line in summary:
        print("  " + line)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 1 if any("FAILED" in line for line in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
