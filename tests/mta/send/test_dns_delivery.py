"""End to end through a real DNS server on loopback (security matrix DN1-DN5).

`mta send` resolves recipient domains through control/nameservers pointing at
tests/dnsserver.py; MX hosts have A records on 127.0.1.x where sinks listen. The
smtproutes line ``.test::PORT`` keeps the MX lookup but connects on the sinks' port.
"""

import time


from tests.sink import Sink

PORT_HOST = "127.0.1.21"
SELF_IP = "127.0.1.23"



def _zone(mx_ip: str) -> dict:
    return {
        "fast.test": {"MX": [[10, "mx.fast.test"]]},
        "mx.fast.test": {"A": [mx_ip]},
        "aonly.test": {"A": [mx_ip]},
        "broken.test": {"behaviour": "servfail"},
        "slow.test": {"behaviour": "timeout"},
        "nullmx.test": {"behaviour": "nullmx"},
        "self.test": {"MX": [[10, "mx.self.test"]]},
        "mx.self.test": {"A": [SELF_IP]},
        # nx.test is absent: NXDOMAIN
    }


def test_dns_failures_classified_end_to_end(inst, dns_server):
    with Sink(PORT_HOST) as mx, Sink("127.0.1.22") as home:
        dns_server.set_zone(_zone(PORT_HOST))
        inst.control("nameservers", f"127.0.0.1:{dns_server.port}\n")
        inst.control("smtproutes", f"home.test:127.0.1.22:{home.port}\n.test::{mx.port}\n")
        inst.control("timeoutconnect", "2\n")
        inst.start_scheduler(local_ips=[SELF_IP], dns_timeout=5)
        rcpts = ["u@slow.test", "u@broken.test", "u@fast.test", "u@aonly.test",
                 "u@nx.test", "u@nullmx.test", "u@self.test"]
        t0 = time.monotonic()
        assert inst.inject("sender@home.test", rcpts) == 0
        # DN2: slow.test's name servers never answer (lookups give up after 5 s);
        # the others go out at once
        mx.wait_for(2, 20)
        assert time.monotonic() - t0 < 4, "a slow DNS domain held up the rest of the message"
        assert sorted(r for m in mx.messages for r in m.rcpts) == ["u@aonly.test", "u@fast.test"]
        # DN3/DN4/DN5: one QSBMF for the permanent failures, once nothing is in flight
        home.wait_for(1, 40)
        [bounce] = home.messages
        assert bounce.sender == "" and bounce.rcpts == ["sender@home.test"]
        text = bounce.data.decode().replace("\r\n", "\n")
        report = text.split("--- Below this line")[0]
        assert "<u@nx.test>:\nSorry, I couldn't find any host named nx.test. (#5.1.2)" in report
        assert "<u@nullmx.test>:" in report and "5.1.10" in report
        assert "<u@self.test>:" in report and "(#5.4.6)" in report
        # DN1/DN2: SERVFAIL and timeouts are temporary: deferred, never bounced
        assert "broken.test" not in report and "slow.test" not in report
        inst.wait_until(lambda: inst.queue() and inst.queue()[0]["recipients"]["deferred"] == 2,
                        30, "the SERVFAIL and timeout domains to be deferred")
        [m] = inst.queue()
        assert m["recipients"]["delivered"] == 2
        log = "\n".join(inst.log_lines())
        assert log.count("couldn't_find_any_host_by_that_name._(#4.1.2)") == 2
        assert len(home.messages) == 1  # the deferrals did not cause a second bounce


def test_dns_fixed_then_flushed_delivers(inst, dns_server):
    with Sink(PORT_HOST) as mx:
        dns_server.set_zone({"later.test": {"behaviour": "servfail"}})
        inst.control("nameservers", f"127.0.0.1:{dns_server.port}\n")
        inst.control("smtproutes", f".test::{mx.port}\n")
        inst.start()
        assert inst.inject("a@mx.test", ["v@later.test"]) == 0
        inst.wait_until(lambda: inst.queue()[0]["recipients"]["deferred"] == 1, 30,
                        "deferral on SERVFAIL")
        dns_server.set_zone({"later.test": {"A": [PORT_HOST]}})
        inst.flush()
        mx.wait_for(1, 20)
        inst.wait_empty(20)
