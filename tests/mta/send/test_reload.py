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


@pytest.mark.parametrize("controls, change, most", [
    ({"concurrencyperhost": "1"}, ("concurrencyperhost", "4"), 4),
    ({"concurrencyperhost": "10", "concurrencyremote": "1"}, ("concurrencyremote", "3"), 3),
], ids=["concurrencyperhost", "concurrencyremote"])
def test_sighup_applies_a_new_limit_to_the_running_worker(inst, controls, change, most):
    with Sink("127.0.1.91", delay=0.05) as s:  # 120 VERP transactions to one slow host
        for name, value in controls.items():
            inst.control(name, value + "\n")
        inst.route([("slow.test", s.host, s.port)])
        inst.start("--workers", "1")
        assert inst.inject("l-@mx.test-@[]", [f"u{i}@slow.test" for i in range(120)]) == 0
        s.wait_for(10, 30)
        assert s.peak_sessions == 1
        inst.control(change[0], change[1] + "\n")
        inst.proc.send_signal(signal.SIGHUP)
        s.wait_until(lambda: s.sessions >= 3, 30, "3 sessions after the SIGHUP")
        s.wait_for(120, 60)
        assert s.peak_sessions <= most
