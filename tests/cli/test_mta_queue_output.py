"""``mta queue`` (human and ``--json``) and ``mta stat`` on a queue whose recipients
are in every state, reached for real: a sink accepts two recipients, defers one
(451) and refuses one (550, bounced to the sender's own sink); then a fan-out
message is injected while the scheduler is stopped, so all of its recipients
are pending."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import Instance
from tests.sink import Sink

BIN = Path(sys.executable).parent
FANOUT = [f"u{i}@{d}" for d, n in (("a.test", 4), ("b.test", 3), ("c.test", 2), ("d.test", 1))
          for i in range(n)]


@pytest.fixture(scope="module")
def inst(tmp_path_factory):
    i = Instance(tmp_path_factory.mktemp("queue_output"))
    try:
        _fill(i)
        yield i
    finally:
        i.cleanup()


def _fill(inst: Instance) -> None:
    with Sink("127.0.3.4", rcpt_reply={"later@x.test": "451 try again later",
                                       "bad@x.test": "550 no such user"}) as sink, \
            Sink("127.0.3.5") as home:
        inst.control("smtproutes", f"x.test:127.0.3.4:{sink.port}\n"
                                   f"home.test:127.0.3.5:{home.port}\n")
        assert inst.inject("sender@home.test", ["ok1@x.test", "later@x.test", "bad@x.test",
                                                "ok2@x.test"]) == 0
        inst.start()
        home.wait_for(1, 30)  # the bounce for bad@x.test
        inst.wait_until(lambda: len(inst.queue()) == 1, 30, "the bounce to leave the queue")
        inst.stop()
    assert inst.inject("list@mx.test", FANOUT, b"Subject: fan\n\n" + b"x" * 1000 + b"\n") == 0


def _mta(inst: Instance, *args: str) -> str:
    p = subprocess.run([str(BIN / "mta"), "--root", str(inst.root), *args], capture_output=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.decode()


def test_queue_json_has_ids_and_counts_per_state(inst):
    rows = [json.loads(line) for line in _mta(inst, "queue", "--json").splitlines()]
    assert [r["sender"] for r in rows] == ["sender@home.test", "list@mx.test"]
    for r in rows:
        assert {"id", "sender", "bytes", "created", "recipients"} <= r.keys()
        assert r["recipients"].keys() == {"pending", "deferred", "delivered", "failed"}
        assert r["bytes"] == (inst.root / "queue" / "mess" / str(r["id"])).stat().st_size
        assert time.time() - 300 < r["created"] <= time.time()
    first, fan = rows
    assert first["recipients"] == {"pending": 0, "deferred": 1, "delivered": 2, "failed": 1}
    assert fan["recipients"] == {"pending": 10, "deferred": 0, "delivered": 0, "failed": 0}
    assert first["id"] < fan["id"]


def test_queue_human_output_shows_counts_and_top_domains(inst):
    rows = [json.loads(line) for line in _mta(inst, "queue", "--json").splitlines()]
    date = r"\d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT"
    expected = (
        rf"{date} #{rows[0]['id']} {rows[0]['bytes']} <sender@home\.test>\n"
        r"\trecipients 4: pending 0 deferred 1 delivered 2 failed 1\n"
        r"\ttop domains: x\.test 1\n"  # only what is still to do
        rf"{date} #{rows[1]['id']} {rows[1]['bytes']} <list@mx\.test>\n"
        r"\trecipients 10: pending 10 deferred 0 delivered 0 failed 0\n"
        r"\ttop domains: a\.test 4, b\.test 3, c\.test 2\n")
    out = _mta(inst, "queue")
    assert re.fullmatch(expected, out), out
    assert len(out.splitlines()) == 6  # a paragraph a message, never a line a recipient
    wide = _mta(inst, "queue", "--top", "5").splitlines()[-1]
    assert wide == "\ttop domains: a.test 4, b.test 3, c.test 2, d.test 1"


def test_stat_totals(inst):
    assert _mta(inst, "stat").splitlines() == [
        "messages in queue: 2",
        "recipients to deliver: 11 (pending 10, deferred 1)",
        "recipients done: delivered 2, failed 1",
    ]
