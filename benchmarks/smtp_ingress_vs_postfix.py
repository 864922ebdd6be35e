"""SMTP ingress: Postfix's smtp-source into our listener + queue owner, and into Postfix.

Both sides accept small messages from ``smtp-source -s 20 -m N -l 1000`` (20 parallel
sessions, one message per connection, smtp-source's default) to a local recipient,
and both answer 250 only once the message is durable:

- ours: ``python -m mta.queued`` (group commit) + ``python -m mta.listen --smtp``,
  i.e. what ``mta start`` runs minus the scheduler: INGRESS ONLY, the messages stay
  in the queue (recipient u@local.test has a .qmail file, so the RCPT check passes).
- Postfix: a separate instance (config dir /etc/postfix-ingress, queue
  /var/spool/postfix-ingress, so a Postfix run by another benchmark is not touched):
  smtpd -> cleanup (fsync) -> incoming queue; qmgr hands them to the ``discard``
  transport, so what is measured is its ingress plus a near-free delivery.

Messages/s is messages / wall time of smtp-source. CPU per message is the CPU time
(user+system) of the server processes (ours: also split per process, user and system) (for Postfix: master and every descendant,
exited children counted through their parent's cutime/cstime), smtp-source excluded.
Runs alternate (ours, postfix, ours, ...) so machine noise hits both alike.
Every run checks that every message was queued, or the benchmark fails: ours counts
the rows in queue.db (``queued == n``); for Postfix, qmgr's "(queue active)" lines for
the run in its log, for the queue ids its cleanup made in this run (waited for, at
most 30 s, since the log is written asynchronously). The 1-minute load average is recorded before each run.

    sudo .venv/bin/python benchmarks/smtp_ingress_vs_postfix.py [--messages 5000] [--runs 3]
        [--json benchmarks/results/ingress.json] [--profile DIR]

``--code DIR`` runs our listener and queue owner from DIR instead of this checkout
(``git archive COMMIT mta | tar -x -C DIR``); ``--compare DIR`` runs that one too,
interleaved with the others and reported as "base": two versions under the same load.
``--json`` writes the per-run figures, the medians, the exact command and the git
commit. ``--profile DIR`` records our listener and queue owner with py-spy (if
installed: ``.venv/bin/pip install py-spy``) during each of our runs, as raw
collapsed stacks in DIR (profiling costs CPU: do not quote the rates of such a run;
env SPY_NATIVE=1 adds C frames, SPY_GIL=1 samples only the thread holding the GIL).

Our instance is made in a fresh folder under ``--dir`` (default /var/spool, where
Postfix's queue is too): on this machine's journal-less ext4, creating a file costs
the kernel 100-500 us of system time depending on where (ext4 skips recently deleted
inodes of the block group, and /var/tmp's group is churned by every test run), so
both queues should live side by side. For the same reason our instances are removed
only when the benchmark ends (``--remove-each-run`` removes each right after its run,
as before): removing 5000 files just before the next engine's run made that run pay
the "recently deleted" cost, whichever engine it was (measured: Postfix 1.69 -> 1.05 ms
and ours 0.21 -> 0.07 ms of owner system time a message once instances were kept).
smtp-source's own CPU a message is reported too (both engines share the 2 cores with it).
Our instance is made by ``mta init`` as a user would, so its queue starts with the default
8192 spare files in queue/free/ (the injections of a run rename those instead of creating
files); making them is part of ``mta init``, not of the measured run.

Needs root for Postfix (``--skip-postfix`` otherwise). As root, our instance is made
with ``--no-privsep`` when privilege separation cannot work (a Python under a folder
the role users cannot reach); the same processes do the same work, all as root.
Leaves Postfix stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import sqlite3
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
CODE = [Path(__file__).resolve().parent.parent]  # where our mta package is imported from
OURS_DIR = ["/var/spool"]  # where our instance is made: next to Postfix's queue (see --dir)
LISTENERS = [1]  # our SMTP listener processes (--listeners)
KEEP = [True]  # remove our instances only at the end (--remove-each-run: after each run)
KEPT: list[Path] = []
REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
PF_DIR = Path("/etc/postfix-ingress")
PF_QUEUE = Path("/var/spool/postfix-ingress")
PF_DATA = Path("/var/lib/postfix-ingress")
PF_LOG = Path("/var/log/postfix-ingress.log")  # maillog_file in MAIN_CF
INGRESS_CODE = ["mta/listen.py", "mta/queued.py", "mta/queue", "mta/received.py", "mta/qq_client.py",
                "mta/smtpd.py", "mta/smtp", "mta/rcpt_token.py", "mta/local/dotqmail.py",
                "mta/control.py", "benchmarks/smtp_ingress_vs_postfix.py"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_smtp(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(100).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"no SMTP greeting on port {port} after {timeout}s")


def user_sys(pid: int) -> tuple[float, float]:
    """(utime, stime) of ``pid`` in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def split_ms(before: dict, after: dict, n: int) -> dict:
    """Per process: user and system ms a message."""
    return {name: {"user": round((after[name][0] - before[name][0]) / n * 1000, 3),
                   "sys": round((after[name][1] - before[name][1]) / n * 1000, 3)}
            for name in before}


def proc_cpu(pid: int) -> float:
    """utime+stime+cutime+cstime of ``pid`` in seconds (0 if gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / TICK


def tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                ppid = int(Path(f"/proc/{e}/stat").read_text().rpartition(")")[2].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(e))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_snapshot(pids: list[int]) -> dict[int, float]:
    return {p: proc_cpu(p) for p in pids}


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after.values()) - sum(v for p, v in before.items() if p in after)


CLIENT_CPU: list[float] = []  # smtp-source's own CPU seconds, one entry a run


def smtp_source(port: int, n: int, sessions: int, size: int) -> float:
    t = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["/usr/sbin/smtp-source", "-s", str(sessions), "-m", str(n), "-l", str(size),
                    "-f", "a@b.test", "-t", "u@local.test", f"127.0.0.1:{port}"],
                   check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CLIENT_CPU.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return wall


def make_instance(root: Path) -> None:
    cmd = [str(Path(PY).parent / "mta"), "--root", str(root), "init", "--me", "local.test"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if p.returncode != 0 and "--no-privsep" in p.stderr:
        p = subprocess.run(cmd + ["--no-privsep"], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise SystemExit(f"mta init failed: {p.stderr.strip()[-400:]}")


def start_profilers(pids: dict[str, int], prof_dir: Path | None, tag: str) -> list:
    if prof_dir is None:
        return []
    spy = Path(PY).parent / "py-spy"
    prof_dir.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen([str(spy), "record", "--format", "raw", "--rate", "250",
                              *(["--native"] if os.environ.get("SPY_NATIVE") else ["--nonblocking"]),
                              *(["--gil"] if os.environ.get("SPY_GIL") else []), "--pid", str(pid),
                              "--output", str(prof_dir / f"{tag}-{name}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, pid in pids.items()]


def stop_profilers(procs: list) -> None:
    for p in procs:
        p.send_signal(signal.SIGINT)
    for p in procs:
        p.wait(60)


def wait_bound(port: int, pids: list[int], timeout: float = 30) -> None:
    """Until every listener process holds a socket on ``port`` (ss -ltnp)."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True,
                             text=True).stdout
        if all(f"pid={pid}," in out for pid in pids):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"listeners {pids} not all bound to {port}: {out}")
        time.sleep(0.05)


def run_ours(n: int, sessions: int, size: int, prof_dir: Path | None = None,
             tag: str = "", code: Path | None = None, extra_env: dict | None = None) -> dict:
    base = Path(tempfile.mkdtemp(prefix="mta-ingress-", dir=OURS_DIR[0]))
    root = base / "inst"
    make_instance(root)
    (root / "alias" / ".qmail-u").write_text("./Maildir/\n")
    port = free_port()
    code = code or CODE[0]  # also the cwd: ``python -m`` puts the cwd first on sys.path
    env = dict(os.environ, PYTHONPATH=str(code), **(extra_env or {}))
    owner_log = base / "queued.log"
    with open(owner_log, "wb") as err:
        owner = subprocess.Popen([PY, "-m", "mta.queued", "--root", str(root)], env=env,
                                 stderr=err, cwd=code)
    while not (root / "queue" / "lock" / "qq.sock").exists():
        time.sleep(0.02)
    share = ["--share", str(LISTENERS[0])] if LISTENERS[0] > 1 else []
    listeners = [subprocess.Popen([PY, "-m", "mta.listen", "--root", str(root), "--smtp",
                                   f"127.0.0.1:{port}", *share], env=env,
                                  stderr=subprocess.DEVNULL, cwd=code)
                 for _ in range(LISTENERS[0])]
    try:
        wait_smtp(port)
        wait_bound(port, [p.pid for p in listeners])
        procs = {("listen" if i == 0 else f"listen{i + 1}"): p.pid
                 for i, p in enumerate(listeners)}
        spies = start_profilers(dict(procs, queued=owner.pid), prof_dir, tag)
        procs["queued"] = owner.pid
        pids = list(procs.values())
        before = cpu_snapshot(pids)
        split0 = {name: user_sys(pid) for name, pid in procs.items()}
        wall = smtp_source(port, n, sessions, size)
        cpu = cpu_delta(before, cpu_snapshot(pids))
        split = split_ms(split0, {name: user_sys(pid) for name, pid in procs.items()}, n)
        stop_profilers(spies)
        with sqlite3.connect(root / "queue" / "queue.db") as db:
            queued = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        if queued != n:
            raise SystemExit(f"ours: smtp-source sent {n} messages but {queued} are queued")
    finally:
        for p in (*listeners, owner):
            p.terminate()
            p.wait(30)
        stats = [line.partition("stopping: ")[2] for line in owner_log.read_text().splitlines()
                 if "stopping: " in line]
        if KEEP[0]:
            KEPT.append(base)
        else:
            shutil.rmtree(base)
    return {"wall": wall, "cpu": cpu, "queued": queued, "batches": stats[-1] if stats else "",
            "cpu_split_ms": split}


MAIN_CF = """compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
myhostname = bench.test
mydestination = local.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
local_recipient_maps =
alias_maps =
alias_database =
local_transport = discard:ingress benchmark
default_transport = discard:ingress benchmark
relay_transport = discard:ingress benchmark
smtpd_banner = $myhostname ESMTP
biff = no
maillog_file = {log}
"""


def setup_postfix(port: int, main_cf: str = MAIN_CF) -> None:
    """The separate Postfix instance in PF_DIR, smtpd on ``port``; ``main_cf`` is a
    template with {queue}, {data} and {log} (local_delivery_vs_postfix.py passes its own)."""
    PF_DIR.mkdir(exist_ok=True)
    (PF_DIR / "main.cf").write_text(main_cf.format(queue=PF_QUEUE, data=PF_DATA, log=PF_LOG))
    master = []
    for line in Path("/etc/postfix/master.cf").read_text().splitlines():
        words = line.split()
        if words[:2] == ["smtp", "inet"]:
            line = f"127.0.0.1:{port} inet n - n - - smtpd"
        elif len(words) > 4 and not line[0].isspace() and not line.startswith("#"):
            words[4] = "n"  # no chroot: the new queue dir has no chroot files
            line = " ".join(words)
        master.append(line)
    (PF_DIR / "master.cf").write_text("\n".join(master) + "\n")
    for d in (PF_QUEUE, PF_DATA):
        d.mkdir(exist_ok=True)
    for f in ("dynamicmaps.cf", "postfix-files"):
        if (Path("/etc/postfix") / f).exists():
            shutil.copy(Path("/etc/postfix") / f, PF_DIR / f)
    for d in ("dynamicmaps.cf.d", "postfix-files.d"):
        if (Path("/etc/postfix") / d).is_dir() and not (PF_DIR / d).exists():
            shutil.copytree(Path("/etc/postfix") / d, PF_DIR / d)
    subprocess.run(["postfix", "-c", str(PF_DIR), "set-permissions"], capture_output=True)
    subprocess.run(["postfix", "-c", str(PF_DIR), "check"], check=True)


def run_postfix(n: int, sessions: int, size: int, prof_dir=None, tag: str = "") -> dict:
    port = free_port()
    setup_postfix(port)
    subprocess.run(["postfix", "-c", str(PF_DIR), "start"], check=True, capture_output=True)
    try:
        wait_smtp(port)
        master = int((PF_QUEUE / "pid" / "master.pid").read_text().split()[0])
        log_from = PF_LOG.stat().st_size if PF_LOG.exists() else 0
        before = cpu_snapshot(tree(master))
        wall = smtp_source(port, n, sessions, size)
        cpu = cpu_delta(before, cpu_snapshot(tree(master)))
        queued = postfix_queued(log_from, n)
    finally:
        subprocess.run(["postfix", "-c", str(PF_DIR), "stop"], capture_output=True)
    if queued != n:
        raise SystemExit(f"postfix: smtp-source sent {n} messages but its log shows"
                         f" {queued} entering the queue")
    return {"wall": wall, "cpu": cpu, "queued": queued}


def postfix_queued(log_from: int, n: int, timeout: float = 30) -> int:
    """Messages of this run (cleanup made them after ``log_from``) that qmgr then found
    in the queue; leftovers of an earlier run are not counted. The log lags a little."""
    deadline = time.monotonic() + timeout
    while True:
        made, n_made, n_active = set(), 0, 0  # counts: a short queue id may recur
        with open(PF_LOG, "rb") as f:
            f.seek(log_from)
            for line in f:
                qid = line.partition(b"]: ")[2].partition(b":")[0]
                if b"/cleanup[" in line and b" message-id=" in line:
                    made.add(qid)
                    n_made += 1
                elif b"/qmgr[" in line and b"(queue active)" in line and qid in made:
                    n_active += 1
        count = min(n_made, n_active)
        if count >= n or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


def git_commit() -> str:
    p = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                       text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", *INGRESS_CODE],
                           capture_output=True, text=True).stdout.split()[1::2]
    return p.stdout.strip() + (f" + uncommitted changes in {' '.join(dirty)}" if dirty else "")


def summary(results: dict[str, list[dict]], n: int) -> dict:
    out = {}
    for name, runs in results.items():
        if runs:
            out[name] = {"msg_per_s": statistics.median(n / x["wall"] for x in runs),
                         "cpu_ms_per_msg": statistics.median(x["cpu"] / n * 1000 for x in runs)}
    if "ours" in out and "postfix" in out:
        out["ratio"] = out["ours"]["msg_per_s"] / out["postfix"]["msg_per_s"]
    if "base" in out and "postfix" in out:
        out["ratio_base"] = out["base"]["msg_per_s"] / out["postfix"]["msg_per_s"]
    return out


def add_load_args(ap: argparse.ArgumentParser, messages: int) -> None:
    """The smtp-source load and the rounds (shared with local_delivery_vs_postfix.py)."""
    ap.add_argument("--messages", type=int, default=messages)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-postfix", action="store_true")


def main() -> None:
    ap = argparse.ArgumentParser()
    add_load_args(ap, 5000)
    ap.add_argument("--listeners", type=int, default=1, metavar="N",
                    help="our SMTP listener processes on the port (mta start --smtp-procs N)")
    ap.add_argument("--json", type=Path, help="write raw figures, command and commit here")
    ap.add_argument("--code", type=Path, help="run our engine from this folder (one holding"
                    " mta/, e.g. an older commit's `git archive`); default: this checkout")
    ap.add_argument("--dir", default=OURS_DIR[0],
                    help="folder for our instance (default /var/spool, like Postfix's queue)")
    ap.add_argument("--compare", type=Path, metavar="DIR",
                    help="also run our engine from DIR, interleaved, reported as 'base'")
    ap.add_argument("--compare-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment for the 'base' engine, e.g. MTA_QUEUE_SYNC=fsync")
    ap.add_argument("--remove-each-run", action="store_true",
                    help="remove our instance right after each run (before the next engine's"
                    " run) instead of at the end")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="py-spy raw stacks of our two processes, one file a run")
    a = ap.parse_args()
    LISTENERS[0] = max(1, a.listeners)
    KEEP[0] = not a.remove_each_run
    try:
        run_all(a)
    finally:
        for base in KEPT:
            shutil.rmtree(base)


def run_all(a) -> None:
    if a.code:
        CODE[0] = a.code.resolve()
    OURS_DIR[0] = a.dir
    contenders = [("ours", run_ours)]
    if a.compare:
        base = a.compare.resolve()
        base_env = dict(kv.split("=", 1) for kv in a.compare_env)
        contenders.append(("base", lambda *args: run_ours(*args, code=base,
                                                           extra_env=base_env)))
    if not a.skip_postfix:
        contenders.append(("postfix", run_postfix))
    results: dict[str, list[dict]] = {name: [] for name, _ in contenders}
    for r in range(a.runs):
        for name, fn in contenders:
            load = os.getloadavg()[0]
            res = fn(a.messages, a.sessions, a.size, a.profile if name == "ours" else None,
                     f"run{r + 1}")
            res.update(run=r + 1, load1=load, msg_per_s=a.messages / res["wall"],
                       client_cpu_ms_per_msg=CLIENT_CPU[-1] / a.messages * 1000,
                       cpu_ms_per_msg=res["cpu"] / a.messages * 1000)
            results[name].append(res)
            print(f"run {r + 1} {name:8s} {res['msg_per_s']:7.0f} msg/s"
                  f"  {res['cpu_ms_per_msg']:6.2f} ms CPU/msg"
                  f"  ({res['wall']:.1f}s, {res['queued']} queued, load {load:.2f},"
                  f" smtp-source {res['client_cpu_ms_per_msg']:.2f} ms/msg)"
                  + (f"  [{res['batches']}]" if res.get("batches") else "")
                  + "".join(f"  {k} {v['user']:.2f}u+{v['sys']:.2f}s"
                            for k, v in res.get("cpu_split_ms", {}).items()), flush=True)
    med = summary(results, a.messages)
    for name in ("ours", "base", "postfix"):
        if name in med:
            print(f"median {name:8s} {med[name]['msg_per_s']:7.0f} msg/s"
                  f"  {med[name]['cpu_ms_per_msg']:6.2f} ms CPU/msg")
    if "ratio" in med:
        print(f"ratio ours/postfix: {med['ratio']:.2f}x")
    if "ratio_base" in med:
        print(f"ratio base/postfix: {med['ratio_base']:.2f}x")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({
            "command": " ".join([Path(PY).name and ".venv/bin/python", *sys.argv]),
            "commit": git_commit() if not a.code else f"code from {CODE[0]}", "date_utc": time.strftime("%Y-%m-%d %H:%M:%S",
                                                              time.gmtime()),
            "ours_dir": OURS_DIR[0], "messages": a.messages, "sessions": a.sessions, "size": a.size,
            "runs": results, "median": med}, indent=1) + "\n")


if __name__ == "__main__":
    main()
