"""mta.send.owners: one owner per IP, and how much of an MX list a worker keeps."""

import os
import subprocess
import sys

from mta.send.owners import owned_prefix, worker_for

IPS = [f"127.0.1.{i}" for i in range(1, 60)]


def test_owner_depends_on_the_ip_alone_and_is_stable():
    assert worker_for("127.0.1.1", 1) == 0
    assert all(0 <= worker_for(ip, 3) < 3 for ip in IPS)
    assert {worker_for(ip, 2) for ip in IPS} == {0, 1}  # both workers get hosts
    # the same answer in every process, so a restarted scheduler agrees with itself
    code = ("from mta.send.owners import worker_for; "
            f"print([worker_for(ip, 3) for ip in {IPS!r}])")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=dict(os.environ, PYTHONHASHSEED=seed), check=True, timeout=60)
        assert out.stdout.strip() == str([worker_for(ip, 3) for ip in IPS])


def test_owned_prefix_stops_at_the_first_host_of_another_worker():
    w0 = [ip for ip in IPS if worker_for(ip, 2) == 0]
    w1 = [ip for ip in IPS if worker_for(ip, 2) == 1]
    dests = [(w0[0], 25), (w0[1], 2525), (w1[0], 25), (w0[2], 25)]
    assert owned_prefix(dests, 2) == 2
    assert owned_prefix(dests[2:], 2) == 1
    assert owned_prefix(dests, 1) == 4  # one worker owns everything
    assert owned_prefix([(w1[0], 25, "qmtp")], 2) == 1
