"""SIGHUP reaches the remote delivery worker: new concurrency limits apply while it runs."""

import signal

import pytest

from tests.harness import Instance
from tests.sink import Sink


@pytest.fixture
def inst(tmp_path):
    i = Instance(tmp_path)
    yield i
    i.stop()


def _slow_fanout(inst, sink, n=120):
    """n VERP transactions to one slow host: they take a while at one session."""
    inst.route([("slow.test", sink.host, sink.port)])
    assert inst.inject("l-@mx.test-@[]", [f"u{i}@slow.test" for i in range(n)]) == 0
    sink.wait_for(10, 30)
    assert sink.peak_sessions == 1


def test_sighup_applies_a_new_concurrencyperhost_to_the_running_worker(inst):
    with Sink("127.0.1.91", delay=0.05) as s:
        inst.control("concurrencyperhost", "1\n")
        inst.start("--workers", "1")
        _slow_fanout(inst, s)
        inst.control("concurrencyperhost", "4\n")
        inst.proc.send_signal(signal.SIGHUP)
        s.wait_until(lambda: s.sessions >= 3, 30, "3 sessions after the SIGHUP")
        s.wait_for(120, 60)
        assert s.peak_sessions <= 4


def test_sighup_applies_a_new_concurrencyremote_to_the_running_worker(inst):
    with Sink("127.0.1.92", delay=0.05) as s:
        inst.control("concurrencyperhost", "10\n")
        inst.control("concurrencyremote", "1\n")
        inst.start("--workers", "1")
        _slow_fanout(inst, s)
        inst.control("concurrencyremote", "3\n")
        inst.proc.send_signal(signal.SIGHUP)
        s.wait_until(lambda: s.sessions >= 3, 30, "3 sessions after the SIGHUP")
        s.wait_for(120, 60)
        assert s.peak_sessions <= 3
