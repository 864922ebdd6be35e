"""Delivery faults at the scheduler level, end to end (security matrix RD*, QF*).

Each test runs the real `mta send` (or the Scheduler in a child process, for
options the command does not take) against scripted sinks on 127.0.1.x and checks
what the queue, the sinks and log/send show. Kills are real SIGKILLs.
"""

import email
import email.policy
import signal
import time

import pytest

from tests.sink import Sink




def deferred(inst, n):
    q = inst.queue()
    return sum(m["recipients"]["deferred"] for m in q) == n


def rcpts_of(sink):
    return [r for m in sink.messages for r in m.rcpts]


# -- refusals and drops: deferred, never bounced, never dropped -------------------

@pytest.mark.parametrize("fault, host", [
    ({"greeting": "421 too busy"}, "127.0.1.31"),          # RD1
    ({"mail_reply": "451 try later"}, "127.0.1.32"),        # RD5
    ({"greeting": "554 go away"}, "127.0.1.33"),            # RD5
    ({"drop_in_data": True}, "127.0.1.34"),                 # RD3
])
def test_temporary_refusals_defer_without_bounce(inst, fault, host):
    with Sink(host, **fault) as s, Sink("127.0.1.30") as home:
        inst.route([("x.test", host, s.port), ("home.test", "127.0.1.30", home.port)])
        inst.start()
        assert inst.inject("sender@home.test", ["a@x.test", "b@x.test"]) == 0
        inst.wait_until(lambda: deferred(inst, 2), 30, f"both recipients deferred after {fault}")
        assert rcpts_of(s) == [] and home.messages == []
        log = "\n".join(inst.log_lines())
        assert log.count(": deferral: ") >= 2 and ": failure: " not in log
        # fixed: a flush delivers them, still without a bounce
        for k in fault:
            setattr(s, k, Sink.__dataclass_fields__[k].default)
        inst.flush()
        s.wait_for(2, 20)
        inst.wait_empty(20)
        assert home.messages == []


def test_554_greeting_falls_back_to_the_next_mx(inst, dns_server):
    with Sink("127.0.1.35", greeting="554 not here") as mx1:
        # the backup MX listens on the same port number, on another loopback address
        with Sink("127.0.1.36", port=mx1.port) as mx2:
            dns_server.set_zone({
                "two.test": {"MX": [[10, "mx1.two.test"], [20, "mx2.two.test"]]},
                "mx1.two.test": {"A": ["127.0.1.35"]},
                "mx2.two.test": {"A": ["127.0.1.36"]}})
            inst.control("nameservers", f"127.0.0.1:{dns_server.port}\n")
            inst.control("smtproutes", f".test::{mx1.port}\n")
            inst.start()
            assert inst.inject("a@mx.test", ["u@two.test"]) == 0
            mx2.wait_for(1, 30)
            inst.wait_empty(20)
        assert rcpts_of(mx1) == [] and mx1.total_sessions >= 1


# -- RD7: a slow host gets its cap, and does not starve the others ----------------

def test_slow_host_capped_and_does_not_starve_others(inst):
    with Sink("127.0.1.37", delay=1.0) as slow, Sink("127.0.1.38") as quick:
        inst.route([("slow.test", "127.0.1.37", slow.port),
                     ("quick.test", "127.0.1.38", quick.port)])
        inst.control("concurrencyperhost", "5\n")
        # VERP: 50 transactions (as 50 messages) to the slow host, queued first
        assert inst.inject("l-@mx.test-@[]", [f"s{i}@slow.test" for i in range(50)]) == 0
        assert inst.inject("l-@mx.test-@[]", [f"q{i}@quick.test" for i in range(10)]) == 0
        inst.start()
        quick.wait_for(10, 8)
        assert slow.rcpt_count() <= 30, "the quick host waited for the slow one"
        slow.wait_for(50, 40)
        inst.wait_empty(20)
        assert slow.peak_sessions <= 5
        assert slow.peak_sessions >= 4  # the cap was used


# -- QF6 / QF10 / QF4: crashes with deliveries in flight --------------------------

def test_kill_while_sink_holds_final_reply_redelivers(inst):
    with Sink("127.0.1.39", delay=30) as s:
        inst.route([("", "127.0.1.39", s.port)])
        inst.start()
        assert inst.inject("a@mx.test", ["held@q.test"]) == 0
        s.wait_until(lambda: s.holding == 1, 20, "the final dot to be held")
        inst.kill()
        s.delay = 0
        inst.start()
        s.wait_for(2, 20)
        inst.wait_empty(20)
        assert rcpts_of(s) == ["held@q.test", "held@q.test"]  # a duplicate, never a loss
        log = "\n".join(inst.log_lines())
        assert "msg 1 to held@q.test was in flight" in log and "possible duplicate" in log


def test_killed_scheduler_orphans_never_race_the_restart(inst):
    with Sink("127.0.1.40", delay=30) as s:
        inst.route([("", "127.0.1.40", s.port)])
        inst.control("concurrencyperhost", "5\n")
        inst.start("--workers", "1")
        rcpts = [f"r{i}@stall.test" for i in range(5)]
        assert inst.inject("l-@mx.test-@[]", rcpts) == 0
        s.wait_until(lambda: s.holding == 5, 20, "five held deliveries")
        inst.kill_scheduler()  # the workers are orphaned, not killed
        s.wait_until(lambda: s.holding == 0, 10, "the orphaned workers to drop their sessions")
        s.delay = 0
        inst.start("--workers", "1")
        s.wait_until(lambda: len(s.messages) >= 10, 20, "each recipient retried")
        inst.wait_empty(20)
        assert sorted(rcpts_of(s)) == sorted(rcpts * 2)
        assert s.overlaps == []


def test_crash_after_preprocess_delivers_each_once(inst):
    with Sink("127.0.1.41") as s:
        inst.route([("", "127.0.1.41", s.port)])
        assert inst.inject("a@mx.test", ["one@p.test", "two@p.test"]) == 0
        inst.start(env={"MTA_CRASH_AT": "after_preprocess"})
        assert inst.proc.wait(20) == -signal.SIGKILL
        assert rcpts_of(s) == []
        inst.start()
        s.wait_for(2, 20)
        inst.wait_empty(20)
        assert sorted(rcpts_of(s)) == ["one@p.test", "two@p.test"]


# -- QF11: the queue lifetime ends retries with qmail's text ----------------------

def test_queue_lifetime_expiry_bounces(inst):
    with Sink("127.0.1.42", rcpt_reply={"late@x.test": "451 not now"}) as s, \
            Sink("127.0.1.43") as home:
        inst.route([("x.test", "127.0.1.42", s.port), ("home.test", "127.0.1.43", home.port)])
        inst.control("queuelifetime", "4\n")
        inst.start()
        t0 = time.monotonic()
        assert inst.inject("sender@home.test", ["late@x.test"]) == 0
        # on a loaded machine the first try may already come after the 4 s lifetime: then
        # that try is the last one and the bounce follows at once
        inst.wait_until(lambda: deferred(inst, 1) or home.messages, 30, "the first try")
        if not home.messages:
            time.sleep(max(0.0, 4.5 - (time.monotonic() - t0)))  # let the lifetime run out
            inst.flush()
        home.wait_for(1, 30)
        tries = [line for line in inst.log_lines()
                 if "starting delivery" in line and "late@x.test" in line]
        assert tries, inst.log_lines()  # a last try was made, the bounce did not come untried
        inst.wait_empty(20)
        text = home.messages[0].data.decode().replace("\r\n", "\n")
        assert "<late@x.test>:" in text and "451 not now" in text
        assert ("I'm not going to try again; this message has been in the queue too long."
                in text)


# -- double and triple bounces; DSN format ----------------------------------------

def test_double_bounce_then_triple_bounce_discarded(inst):
    with Sink("127.0.1.44", rcpt_reply={"bad@x.test": "550 no such user"}) as s, \
            Sink("127.0.1.45", rcpt_reply={"gone@home.test": "550 sender gone"}) as home, \
            Sink("127.0.1.46") as pm:
        inst.route([("x.test", "127.0.1.44", s.port), ("home.test", "127.0.1.45", home.port),
                     ("pm.test", "127.0.1.46", pm.port)])
        inst.control("doublebouncehost", "pm.test\n")
        inst.control("doublebounceto", "boss\n")
        inst.start()
        assert inst.inject("gone@home.test", ["bad@x.test"]) == 0
        pm.wait_for(1, 30)
        [double] = pm.messages
        assert double.sender == "#@[]" and double.rcpts == ["boss@pm.test"]
        text = double.data.decode().replace("\r\n", "\n")
        assert "the bounce bounced" in text and "550 sender gone" in text
        inst.wait_empty(20)
        # now the postmaster's box refuses too: the double bounce is dropped and logged
        pm.rcpt_reply["boss@pm.test"] = "550 full"
        assert inst.inject("gone@home.test", ["bad@x.test"]) == 0
        inst.wait_until(lambda: any("triple bounce: discarding" in ln
                                    for ln in inst.log_lines()), 30, "the triple bounce")
        inst.wait_empty(20)
        assert len(pm.messages) == 1


def test_dsn_bounce_parses_as_multipart_report(inst):
    with Sink("127.0.1.47", rcpt_reply={"bad@x.test": "550 5.1.1 no such user"}) as s, \
            Sink("127.0.1.48") as home:
        inst.route([("x.test", "127.0.1.47", s.port), ("home.test", "127.0.1.48", home.port)])
        inst.control("bounceformat", "dsn\n")
        inst.start()
        assert inst.inject("sender@home.test", ["bad@x.test"],
                           b"Subject: original\n\nthe body\n") == 0
        home.wait_for(1, 30)
        msg = email.message_from_bytes(home.messages[0].data.replace(b"\r\n", b"\n"),
                                       policy=email.policy.default)
        assert msg.get_content_type() == "multipart/report"
        assert msg.get_param("report-type") == "delivery-status"
        parts = list(msg.iter_parts())
        assert [p.get_content_type() for p in parts] == [
            "text/plain", "message/delivery-status", "message/rfc822"]
        blocks = parts[1].get_payload()
        rcpt = blocks[1]
        assert rcpt["Final-Recipient"] == "rfc822; bad@x.test"
        assert rcpt["Action"] == "failed"
        assert rcpt["Status"].startswith("5.")
        assert "no such user" in rcpt["Diagnostic-Code"]
        original = parts[2].get_payload()[0]
        assert original["Subject"] == "original"
        inst.wait_empty(20)
