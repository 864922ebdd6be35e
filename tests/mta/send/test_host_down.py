"""End to end: qmail's timeout table. A host that turns every session away is skipped.

qmail-queue shim -> `mta send` -> a sink whose greeting is ``421``. The first
message costs one session and marks the host down (``HostState.connect_failed``);
a second message to it while it is down is deferred without a connection attempt;
``mta flush`` (the postmaster's "try now") clears the mark.
"""

from __future__ import annotations


from tests.sink import Sink



def deferred(inst) -> int:
    return sum(m["recipients"]["deferred"] for m in inst.queue())


def test_host_answering_421_is_skipped_while_down_and_retried_on_flush(inst):
    with Sink("127.0.3.6", greeting="421 too busy") as s:
        inst.control("smtproutes", f"busy.test:127.0.3.6:{s.port}\n")
        inst.start("--workers", "1")
        assert inst.inject("a@mx.test", ["one@busy.test"]) == 0
        inst.wait_until(lambda: deferred(inst) == 1, 30, "the first deferral")
        assert s.total_sessions == 1
        assert inst.inject("a@mx.test", ["two@busy.test"]) == 0
        inst.wait_until(lambda: deferred(inst) == 2, 30, "the second deferral")
        assert s.total_sessions == 1, "a host marked down got another connection"
        log = "\n".join(inst.log_lines())
        assert "deferral: 127.0.3.6_is_not_answering;_will_retry_later" in log  # logsafe()d
        assert s.messages == [] and all(m["recipients"]["delivered"] == 0 for m in inst.queue())
        inst.flush()  # everything due now, and no host stays marked down
        s.wait_until(lambda: s.total_sessions >= 2, 30, "a new session after mta flush")
