"""Receive and deliver locally: smtp-source into the whole system, out into a Maildir.

``smtp-source -s 20 -m N -l 1000`` (20 parallel sessions, one message per
connection) sends N one-recipient messages to u@local.test; the figure is the wall
time from smtp-source's start until all N are files in the recipient's Maildir
``new/`` (ingress, queue, scheduling and delivery overlapping, as on a live server).

- ours: ``mta start`` (queue owner, SMTP listener, scheduler, local and remote
  workers) on an instance made by ``mta init``; ``alias/.qmail-u`` is ``./Maildir/``;
  stock settings (concurrencylocal 10).
- Postfix: the separate instance of ``smtp_ingress_vs_postfix.py`` (/etc/postfix-ingress),
  here with ``local.test`` a virtual mailbox domain: smtpd -> cleanup -> qmgr ->
  virtual(8) writing ``u/Maildir/`` under its mailbox base as uid nobody; stock
  concurrency (20 a destination).

CPU a message is user+system time of the server processes (ours: ``mta start`` and
its children; Postfix: master and its descendants), smtp-source excluded. Runs
alternate (ours, [base,] postfix, ours, ...) so machine noise hits them alike; each
run checks that exactly N files arrived and, for ours, that the queue is empty.
Instances and mailboxes are removed only when the benchmark ends, all in /var/spool:
on this machine's journal-less ext4, deleting thousands of files makes every file
creation in that block group slower for minutes (``smtp_ingress_vs_postfix.py`` has
the figures), which would charge one engine's cleanup to the next engine's run.

    sudo .venv/bin/python benchmarks/local_delivery_vs_postfix.py [--messages 3000]
        [--runs 3] [--compare DIR] [--json benchmarks/results/local-delivery.json]

``--compare DIR`` also runs our engine from DIR (e.g. an older commit:
``git archive COMMIT mta cli ezlist | tar -x -C DIR``), reported as "base".
Needs root for Postfix (``--skip-postfix`` otherwise). Leaves Postfix stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import smtp_ingress_vs_postfix as ing  # noqa: E402  (shared Postfix setup and helpers)

REPO = Path(__file__).resolve().parent.parent
PF_MAIL = Path("/var/spool/postfix-local-mail")  # virtual_mailbox_base (a fresh one a run)
KEPT: list[Path] = []  # our instances and Postfix's mailbox bases, removed at the end
NOBODY = 65534
MAIN_CF = ing.MAIN_CF.replace("mydestination = local.test\n", "mydestination =\n").replace(
    "local_transport = discard:ingress benchmark\n", "") + f"""virtual_mailbox_domains = local.test
virtual_mailbox_base = {PF_MAIL}
virtual_mailbox_maps = static:u/Maildir/
virtual_uid_maps = static:{NOBODY}
virtual_gid_maps = static:{NOBODY}
"""


def count_new(maildir: Path) -> int:
    try:
        return len(os.listdir(maildir / "new"))
    except FileNotFoundError:
        return 0


def wait_delivered(maildir: Path, n: int, started: float, timeout: float) -> float:
    """Seconds from ``started`` until ``n`` files are in ``maildir/new``."""
    deadline = time.monotonic() + timeout
    while (got := count_new(maildir)) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"{maildir}: {got} of {n} delivered after {timeout}s")
        time.sleep(0.01)
    if got != n:
        raise SystemExit(f"{maildir}: {got} files for {n} messages")
    return time.perf_counter() - started


def run_ours(n: int, sessions: int, size: int, code: Path | None = None) -> dict:
    base = Path(tempfile.mkdtemp(prefix="mta-local-", dir="/var/spool"))
    root = base / "inst"
    ing.make_instance(root)
    (root / "alias" / ".qmail-u").write_text("./Maildir/\n")
    maildir = root / "alias" / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    shutil.chown(maildir, *_alias_owner(root))
    for sub in ("tmp", "new", "cur"):
        shutil.chown(maildir / sub, *_alias_owner(root))
    port = ing.free_port()
    code = code or REPO
    env = dict(os.environ, PYTHONPATH=str(code))
    with open(base / "start.log", "wb") as out:
        proc = subprocess.Popen([ing.PY, "-m", "cli.mta_cmd", "--root", str(root), "start",
                                 "--smtp", f"127.0.0.1:{port}"], env=env, cwd=code,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ing.wait_smtp(port)
        pids = ing.tree(proc.pid)
        before = ing.cpu_snapshot(pids)
        started = time.perf_counter()
        ingress = ing.smtp_source(port, n, sessions, size)
        wall = wait_delivered(maildir, n, started, 300)
        cpu = ing.cpu_delta(before, ing.cpu_snapshot(ing.tree(proc.pid)))
        with sqlite3.connect(root / "queue" / "queue.db") as db:
            left = _wait_empty(db, 60)
        if left:
            raise SystemExit(f"ours: {left} messages still queued after delivery")
    finally:
        proc.terminate()
        proc.wait(60)
        KEPT.append(base)  # removed at the end: see the module doc
    return {"wall": wall, "ingress": ingress, "cpu": cpu}


def _alias_owner(root: Path) -> tuple[int, int]:
    st = (root / "alias").stat()
    return st.st_uid, st.st_gid


def _wait_empty(db: sqlite3.Connection, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (left := db.execute("SELECT count(*) FROM messages").fetchone()[0]) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def run_postfix(n: int, sessions: int, size: int) -> dict:
    mail = Path(tempfile.mkdtemp(prefix="postfix-local-", dir="/var/spool"))
    KEPT.append(mail)
    os.chown(mail, NOBODY, NOBODY)
    port = ing.free_port()
    ing.setup_postfix(port, main_cf=MAIN_CF.replace(str(PF_MAIL), str(mail)))
    subprocess.run(["postfix", "-c", str(ing.PF_DIR), "start"], check=True, capture_output=True)
    try:
        ing.wait_smtp(port)
        master = int((ing.PF_QUEUE / "pid" / "master.pid").read_text().split()[0])
        before = ing.cpu_snapshot(ing.tree(master))
        started = time.perf_counter()
        ingress = ing.smtp_source(port, n, sessions, size)
        wall = wait_delivered(mail / "u" / "Maildir", n, started, 300)
        cpu = ing.cpu_delta(before, ing.cpu_snapshot(ing.tree(master)))
    finally:
        subprocess.run(["postfix", "-c", str(ing.PF_DIR), "stop"], capture_output=True)
    return {"wall": wall, "ingress": ingress, "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser()
    ing.add_load_args(ap, 3000)
    ap.add_argument("--compare", type=Path, metavar="DIR",
                    help="also run our engine from DIR, interleaved, reported as 'base'")
    ap.add_argument("--json", type=Path, help="write raw figures, command and commit here")
    a = ap.parse_args()
    try:
        run_all(a)
    finally:
        for path in KEPT:
            shutil.rmtree(path, ignore_errors=True)


def run_all(a) -> None:
    contenders = [("ours", lambda *x: run_ours(*x))]
    if a.compare:
        contenders.append(("base", lambda *x: run_ours(*x, code=a.compare.resolve())))
    if not a.skip_postfix:
        contenders.append(("postfix", run_postfix))
    results: dict[str, list[dict]] = {name: [] for name, _ in contenders}
    for r in range(a.runs):
        for name, fn in contenders:
            load = os.getloadavg()[0]
            res = fn(a.messages, a.sessions, a.size)
            res.update(run=r + 1, load1=load, msg_per_s=a.messages / res["wall"],
                       ingress_msg_per_s=a.messages / res["ingress"],
                       cpu_ms_per_msg=res["cpu"] / a.messages * 1000)
            results[name].append(res)
            print(f"run {r + 1} {name:8s} {res['msg_per_s']:6.0f} delivered/s"
                  f"  (ingress {res['ingress_msg_per_s']:5.0f}/s)"
                  f"  {res['cpu_ms_per_msg']:5.2f} ms CPU/msg  {res['wall']:5.1f}s"
                  f"  load {load:.2f}", flush=True)
    med = {name: {"msg_per_s": statistics.median(x["msg_per_s"] for x in runs),
                  "ingress_msg_per_s": statistics.median(x["ingress_msg_per_s"] for x in runs),
                  "cpu_ms_per_msg": statistics.median(x["cpu_ms_per_msg"] for x in runs)}
           for name, runs in results.items()}
    for name, m in med.items():
        print(f"median {name:8s} {m['msg_per_s']:6.0f} delivered/s"
              f"  (ingress {m['ingress_msg_per_s']:5.0f}/s)  {m['cpu_ms_per_msg']:5.2f} ms CPU/msg")
    for name in ("ours", "base"):
        if name in med and "postfix" in med:
            med[f"ratio_{name}"] = med[name]["msg_per_s"] / med["postfix"]["msg_per_s"]
            print(f"ratio {name}/postfix: {med[f'ratio_{name}']:.2f}x")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        a.json.write_text(json.dumps({
            "command": " ".join([".venv/bin/python", *sys.argv]), "commit": commit,
            "compare": str(a.compare) if a.compare else None,
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "messages": a.messages, "sessions": a.sessions, "size": a.size,
            "runs": results, "median": med}, indent=1) + "\n")


if __name__ == "__main__":
    main()
