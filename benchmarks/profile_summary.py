"""Summarize py-spy's raw collapsed stacks (``--format raw --subprocesses``) by process role.

Each line is ``frame;frame;...;frame COUNT``; with ``--subprocesses`` the stack
starts with ``process PID:"cmdline"`` frames (nested for children). Processes are
grouped by role: the scheduler (``mta ... send``), remote workers
(``mta.remote.worker``), the local worker (``mta.lspawn``). For each role: samples
(py-spy samples only running threads unless ``--idle``, so samples ~ CPU time),
the functions where they were spent (self, the leaf frame) and the functions they
were spent under (inclusive, counted once a stack), line numbers dropped.

Public: summarize_profile(path, top=15) -> str. Also a command:
``python benchmarks/profile_summary.py FILE [TOP]``. A missing file raises OSError.
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

__all__ = ["summarize_profile"]

_LINE = re.compile(r" \(([^()]*?):\d+\)$")


def _role(cmdline: str) -> str:
    if "mta.remote.worker" in cmdline:
        return "remote worker(s)"
    if "mta.lspawn" in cmdline:
        return "local worker"
    if " send" in cmdline:
        return "scheduler (mta send)"
    return cmdline[:60]


def _func(frame: str) -> str:
    return _LINE.sub(lambda m: f" ({m.group(1)})", frame)


def summarize_profile(path: Path, top: int = 15) -> str:
    total: Counter = Counter()
    self_t: dict[str, Counter] = defaultdict(Counter)
    incl: dict[str, Counter] = defaultdict(Counter)
    pids: dict[str, set] = defaultdict(set)
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        procs = [f for f in frames if f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("process ")]
        if not procs or not frames:
            continue
        pid, _, cmd = procs[-1][8:].partition(":")
        role = _role(cmd)
        pids[role].add(pid)
        n = int(count)
        total[role] += n
        self_t[role][_func(frames[-1])] += n
        for f in {_func(f) for f in frames}:
            incl[role][f] += n
    grand = sum(total.values()) or 1
    out = [f"py-spy samples (100 Hz, running threads only): {grand}"]
    for role, n in total.most_common():
        out.append(f"\n== {role}: {n} samples ({100 * n / grand:.0f} % of all),"
                   f" {len(pids[role])} process(es)")
        out.append("  self (where the time is spent):")
        out += [f"    {100 * c / n:5.1f} %  {f}" for f, c in self_t[role].most_common(top)]
        out.append("  inclusive (what it is spent under):")
        out += [f"    {100 * c / n:5.1f} %  {f}" for f, c in incl[role].most_common(top + 10)
                if c < n]  # drop the frames every sample shares
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(summarize_profile(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 15))
