"""End to end: qmail-queue shim -> `mta send` -> receiving servers on 127.0.1.x."""

import time

import pytest

from tests.harness import Instance
from tests.sink import SessionGroup, Sink


@pytest.fixture
def inst(tmp_path):
    i = Instance(tmp_path)
    yield i
    i.stop()



def test_verp_fanout_each_recipient_once(inst):
    with Sink("127.0.1.1") as s1, Sink("127.0.1.2") as s2:
        inst.route([("a.test", "127.0.1.1", s1.port), ("b.test", "127.0.1.1", s1.port),
                     ("c.test", "127.0.1.2", s2.port)])
        rcpts = [f"u{i}@{d}" for i in range(100) for d in ("a.test", "b.test", "c.test")]
        inst.start()
        assert inst.inject("list-return-7-@mx.test-@[]", rcpts) == 0
        s1.wait_for(200)
        s2.wait_for(100)
        inst.wait_empty(30)
        got = [(m.sender, r) for s in (s1, s2) for m in s.messages for r in m.rcpts]
        assert sorted(r for _, r in got) == sorted(rcpts)  # each exactly once
        for sender, r in got:
            box, dom = r.split("@")
            assert sender == f"list-return-7-{box}={dom}@mx.test"
        log = "\n".join(inst.log_lines())
        assert "new msg " in log and "info msg " in log and "end msg " in log
        assert log.count(": success: ") == 300


def test_without_verp_recipients_share_transactions(inst):
    with Sink("127.0.1.3") as s:
        inst.route([("", "127.0.1.3", s.port)])
        inst.start()
        rcpts = [f"r{i}@d{i % 3}.test" for i in range(250)]
        assert inst.inject("owner@mx.test", rcpts) == 0
        s.wait_for(250)
        assert all(m.sender == "owner@mx.test" for m in s.messages)
        assert max(len(m.rcpts) for m in s.messages) <= 100
        assert len(s.messages) < 20


def test_per_host_and_global_concurrency_caps(inst):
    g = SessionGroup()
    with Sink("127.0.1.4", delay=0.05, group=g) as s1, Sink("127.0.1.5", delay=0.05, group=g) as s2:
        inst.route([("one.test", "127.0.1.4", s1.port), ("two.test", "127.0.1.5", s2.port)])
        inst.control("concurrencyperhost", "3\n")
        inst.control("concurrencyremote", "5\n")
        inst.start("--workers", "1")
        rcpts = [f"x{i}@one.test" for i in range(150)] + [f"y{i}@two.test" for i in range(150)]
        assert inst.inject("l-@mx.test-@[]", rcpts) == 0
        s1.wait_for(150, 60)
        s2.wait_for(150, 60)
        assert s1.peak_sessions <= 3 and s2.peak_sessions <= 3
        assert g.peak <= 5
        assert s1.peak_sessions >= 2  # the cap was actually used


def test_throttled_host_gets_everything_with_few_refusals(inst):
    with Sink("127.0.1.6", max_sessions=3) as s:
        inst.route([("", "127.0.1.6", s.port)])
        inst.control("concurrencyperhost", "10\n")
        inst.start("--workers", "1")
        n = 1000
        assert inst.inject("l-@mx.test-@[]", [f"u{i}@t{i % 7}.test" for i in range(n)]) == 0
        s.wait_for(n, 60)
        inst.wait_empty(30)
        assert s.peak_sessions <= 3
        assert s.refused < 0.05 * n, f"{s.refused} sessions refused for {n} deliveries"


def test_5xx_bounces_qsbmf_and_4xx_retries(inst):
    with Sink("127.0.1.7", rcpt_reply={"bad@x.test": "550 no such user here",
                                       "later@x.test": "451 try again later"}) as s, \
            Sink("127.0.1.8") as home:
        inst.route([("x.test", "127.0.1.7", s.port), ("home.test", "127.0.1.8", home.port)])
        inst.start()
        assert inst.inject("sender@home.test", ["ok@x.test", "bad@x.test", "later@x.test"]) == 0
        home.wait_for(1, 30)
        [bounce] = home.messages
        assert bounce.sender == "" and bounce.rcpts == ["sender@home.test"]
        text = bounce.data.decode().replace("\r\n", "\n")
        assert "Hi. This is the qmail-send program at mx.test." in text
        assert "<bad@x.test>:\n" in text and "550 no such user here" in text
        assert "later@x.test" not in text.split("--- Below this line")[0]
        assert "--- Below this line is a copy of the message." in text
        inst.wait_until(lambda: inst.queue() and inst.queue()[0]["recipients"]["deferred"] == 1,
                        30, "the 4xx recipient to be deferred")
        assert [r for m in s.messages for r in m.rcpts] == ["ok@x.test"]
        s.rcpt_reply.pop("later@x.test")
        inst.flush()
        s.wait_for(2, 30)
        inst.wait_empty(30)


def test_hang_mid_data_defers_never_delivers(inst):
    with Sink("127.0.1.9", hang_after_354=True) as s:
        inst.route([("", "127.0.1.9", s.port)])
        inst.control("timeoutremote", "1\n")
        inst.start()
        assert inst.inject("a@mx.test", ["v@slow.test"]) == 0
        inst.wait_until(lambda: inst.queue()[0]["recipients"]["deferred"] == 1, 30,
                        "deferral after the data timeout")
        [m] = inst.queue()
        assert m["recipients"]["delivered"] == 0


def test_new_message_starts_promptly(inst):
    with Sink("127.0.1.10") as s:
        inst.route([("", "127.0.1.10", s.port)])
        inst.start()
        assert inst.inject("a@mx.test", ["first@p.test"]) == 0
        s.wait_for(1, 30)  # the scheduler is up and idle now
        t0 = time.monotonic()
        assert inst.inject("a@mx.test", ["second@p.test"]) == 0
        s.wait_for(2, 10)
        # the trigger wakes the scheduler: far below qmail-send's 25-minute rescan
        assert time.monotonic() - t0 < 2.0


def test_hostrate_spaces_transactions_to_a_host(inst):
    with Sink("127.0.1.11") as s:
        inst.route([("", "127.0.1.11", s.port)])
        inst.control("hostrate", "127.0.1.11:20\n")
        inst.control("concurrencyperhost", "5\n")
        inst.start()
        assert inst.inject("l-@mx.test-@[]", [f"u{i}@r.test" for i in range(21)]) == 0
        s.wait_for(21, 60)
        times = sorted(m.at for m in s.messages)
        # 20 intervals at no more than 20 messages a second, over 5 connections
        assert times[-1] - times[0] >= 20 / 20 * 0.9, times[-1] - times[0]
