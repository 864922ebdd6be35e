"""VERP fan-out, our engine side by side with Postfix, on the same ten smtp-sinks.

One 4 KB message, VERP, to N recipients ``user<i>@d<i % 1000>.test`` (1,000 domains)
routed to 10 receiving hosts 127.0.1.1-10 (``smtp-sink`` on each, one port chosen at
run time): ours through ``control/smtproutes``, Postfix through ``transport_maps``
(profile "fast" of /work/shared/reference/postfix-bench unless ``--postfix-profile``).
Each of ``--runs`` rounds runs ours then Postfix, sinks restarted before each run.
Reported per engine (median, min, max): deliveries/s from the start of injection
until the message has left the queue, CPU seconds of every engine process
(cpuacct cgroup, injection included), CPU per delivery, and for ours the peak
memory (sum of VmHWM); then the ratios ours/Postfix of the medians.

A separate validation pass (``--validate N``, default min(N, 20000); 0 skips) runs
each engine once against sinks that dump every transaction (``smtp-sink -D``) and
checks that every recipient arrived exactly once, at its route's host, with its own
VERP sender. Timed runs also cross-check deliveries against the sinks' ``-c`` counts.

    .venv/bin/python benchmarks/fanout_vs_postfix.py [--recipients 100000] [--runs 3]
        [--workers 2] [--concurrency 40] [--perhost 4] [--validate N]
        [--ours-only] [--profile DIR] [--json FILE] [--postfix-profile fast|default]
        [--snapshot REV | --code DIR]

Postfix needs root (it is configured in /etc/postfix and started and stopped here;
``postfix stop`` runs at exit); without root the script refuses unless ``--ours-only``.
Exit status 0 when every run delivered exactly N and validation passed, else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout_lib import Sinks, free_port, make_message, recipients, sink_addrs, summarize  # noqa: E402
from fanout_ours import run_ours, verp_of  # noqa: E402

METRICS = ("rate", "wall_s", "inject_s", "cpu_s", "cpu_ms_per_delivery", "peak_mem_mb",
           "peak_rss_sampled_mb", "sinks_cpu_s", "system_busy_pct")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--recipients", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="our remote worker processes")
    ap.add_argument("--concurrency", type=int, default=40, help="our concurrencyremote")
    ap.add_argument("--perhost", type=int, default=4, help="our concurrencyperhost")
    ap.add_argument("--validate", type=int, default=None,
                    help="recipients in the validation pass (default min(N, 20000); 0: none)")
    ap.add_argument("--ours-only", action="store_true", help="skip Postfix")
    ap.add_argument("--postfix-profile", default="fast", choices=("fast", "default"))
    ap.add_argument("--profile", type=Path, default=None,
                    help="also run ours once under py-spy; collapsed stacks and a summary here")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--snapshot", metavar="REV", default=None,
                    help="run our engine from 'git archive REV' (not the working tree)")
    ap.add_argument("--code", type=Path, default=None,
                    help="run our engine from this folder holding mta/, cli/, ezlist/ (experiments)")
    return ap.parse_args(argv)


def show(r: dict) -> None:
    mem = f", peak mem {r['peak_mem_mb']:.0f} MB" if r.get("peak_mem_mb") else ""
    if r.get("peak_rss_sampled_mb"):
        mem += f" (summed RSS sampled 10/s: {r['peak_rss_sampled_mb']:.0f} MB)"
    print(f"  {r['engine']:8s} N={r['n']}: {r['rate']:8.0f} deliveries/s  wall {r['wall_s']:.2f} s"
          f" (inject {r['inject_s']:.2f} s)  delivered {r['delivered']}"
          f" sinks {r.get('sink_mesg')}  cpu {r['cpu_s']:.2f} s"
          f" ({r['cpu_ms_per_delivery']:.3f} ms/delivery, user {r['cpu_user_s']:.1f}"
          f" sys {r['cpu_sys_s']:.1f}){mem}  sinks cpu {r['sinks_cpu_s']:.1f} s,"
          f" system busy {r['system_busy_pct']:.0f} %", flush=True)


def timed(engine: str, args, sinks: Sinks, message: bytes, workdir: Path, rcpts, tag: str,
          profile_dir=None) -> dict:
    sinks.start()
    try:
        if engine == "ours":
            r = run_ours(args.recipients, message, sinks, workdir, workers=args.workers,
                         concurrency=args.concurrency, perhost=args.perhost,
                         profile_dir=profile_dir, tag=tag)
        else:
            from fanout_postfix import run_postfix
            r = run_postfix(args.recipients, message, sinks, workdir, rcpts)
        r["sink_sessions"], r["sink_mesg"] = _settled_counts(sinks, r["delivered"])
    finally:
        sinks.stop()
    r["ok"] = r["delivered"] == args.recipients == r["sink_mesg"] and not r["not_sent"]
    show(r)
    return r


def _settled_counts(sinks: Sinks, expected: int) -> tuple[int, int]:
    deadline = time.monotonic() + 5
    while True:
        sess, mesg = sinks.counts()
        if mesg >= expected or time.monotonic() > deadline:
            return sess, mesg
        time.sleep(0.05)


def validate(engine: str, n: int, sinks: Sinks, message: bytes, workdir: Path, args) -> dict:
    sinks.start(dump=True)
    try:
        if engine == "ours":
            r = run_ours(n, message, sinks, workdir, workers=args.workers,
                         concurrency=args.concurrency, perhost=args.perhost, tag="validate")
            check = sinks.check_dumps(n, verp_of)
        else:
            from fanout_postfix import SENDER, run_postfix
            local, dom = SENDER.split("@")
            r = run_postfix(n, message, sinks, workdir, list(recipients(n)))
            check = sinks.check_dumps(
                n, lambda rc: f"{local}+{rc.split('@')[0]}={rc.split('@')[1]}@{dom}")
    finally:
        sinks.stop()
    check["engine"], check["n"], check["delivered_logged"] = engine, n, r["delivered"]
    print(f"  validation {engine} N={n}: {'OK' if check['ok'] else 'FAILED'} {check}", flush=True)
    return check


def report(results: list[dict], engines: list[str]) -> dict:
    summary = {}
    for e in engines:
        rows = [r for r in results if r["engine"] == e and not r.get("profiled")]
        summary[e] = {m: summarize([r[m] for r in rows if r.get(m) is not None]) for m in METRICS}
    print("\nsummary (median [min-max] over timed runs):")
    for e in engines:
        s = summary[e]
        line = (f"  {e:8s} {s['rate']['median']:8.0f} deliveries/s [{s['rate']['min']:.0f}-"
                f"{s['rate']['max']:.0f}]  cpu {s['cpu_ms_per_delivery']['median']:.3f} ms/delivery"
                f" [{s['cpu_ms_per_delivery']['min']:.3f}-{s['cpu_ms_per_delivery']['max']:.3f}]")
        if s["peak_mem_mb"]["n"]:
            line += f"  peak mem {s['peak_mem_mb']['median']:.0f} MB [{s['peak_mem_mb']['max']:.0f} max]"
        if s["peak_rss_sampled_mb"]["n"]:
            line += f"  sampled RSS {s['peak_rss_sampled_mb']['median']:.0f} MB"
        print(line)
    if "postfix" in summary and "ours" in summary:
        o, p = summary["ours"], summary["postfix"]
        summary["ratios"] = {
            "rate_ours_over_postfix": o["rate"]["median"] / p["rate"]["median"],
            "cpu_per_delivery_ours_over_postfix":
                o["cpu_ms_per_delivery"]["median"] / p["cpu_ms_per_delivery"]["median"]}
        print(f"  ratios ours/Postfix: rate x{summary['ratios']['rate_ours_over_postfix']:.2f},"
              f" CPU per delivery x{summary['ratios']['cpu_per_delivery_ours_over_postfix']:.3f}")
    return summary


def use_snapshot(rev: str, workdir: Path) -> str:
    """Export ``rev``'s packages under workdir/code and put them first on PYTHONPATH."""
    repo = Path(__file__).resolve().parent.parent
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", rev], capture_output=True,
                            text=True, check=True).stdout.strip()
    code = workdir / "code"
    code.mkdir(exist_ok=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "mta", "cli", "ezlist"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(code)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return f"git {commit[:12]}"


def _terminated(signum, frame) -> None:
    raise SystemExit(f"fanout_vs_postfix: stopped by signal {signum}")  # runs the cleanups


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    engines = ["ours"] if args.ours_only else ["ours", "postfix"]
    if not args.ours_only and os.geteuid() != 0:
        print("fanout_vs_postfix: Postfix must be configured, started and stopped as root; "
              "run as root, or pass --ours-only", file=sys.stderr)
        return 2
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fanout-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)  # the sinks run as nobody and write their dumps below it
    code = use_snapshot(args.snapshot, workdir) if args.snapshot else "working tree"
    if args.code:
        os.environ["PYTHONPATH"] = str(args.code.resolve())
        code = f"folder {args.code.resolve()}"
    port = free_port(sink_addrs())
    sinks = Sinks(workdir, port)
    message = make_message()
    n_val = min(args.recipients, 20000) if args.validate is None else args.validate
    print(f"fan-out N={args.recipients} runs={args.runs} engines={engines} sinks port {port}"
          f" workdir {workdir} loadavg {os.getloadavg()[0]:.2f}; ours: workers={args.workers} concurrencyremote={args.concurrency}"
          f" concurrencyperhost={args.perhost} code={code}; postfix profile {args.postfix_profile}", flush=True)
    results: list[dict] = []
    checks: list[dict] = []
    rcpts = None
    try:
        if "postfix" in engines:
            from fanout_postfix import configure_postfix
            configure_postfix(port, args.postfix_profile)
            rcpts = list(recipients(args.recipients))
        for i in range(args.runs):
            for e in engines:
                results.append(timed(e, args, sinks, message, workdir, rcpts, f"{i}"))
        if args.profile is not None:
            print("profiled run (py-spy; not counted in the medians):", flush=True)
            r = timed("ours", args, sinks, message, workdir, rcpts, "profiled", args.profile)
            results.append(r)
            from profile_summary import summarize_profile
            text = summarize_profile(args.profile / "ours.txt")
            (args.profile / "summary.txt").write_text(text)
            print(text)
        if n_val:
            for e in engines:
                checks.append(validate(e, n_val, sinks, message, workdir, args))
    finally:
        sinks.stop()
        if "postfix" in engines:
            from fanout_postfix import stop_postfix
            stop_postfix()
    summary = report(results, engines)
    ok = all(r["ok"] for r in results) and all(c["ok"] for c in checks)
    print(f"\nresult: {'OK' if ok else 'PROBLEMS'}: every timed run delivered exactly N"
          if ok else "\nresult: PROBLEMS (see the runs above)")
    if args.json:
        args.json.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "code": code, "argv": sys.argv, "args": {
                k: str(v) for k, v in vars(args).items()}, "results": results,
            "validation": checks, "summary": summary, "ok": ok}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
