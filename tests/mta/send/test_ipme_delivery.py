"""End to end: a plain `mta send` knows this machine's addresses (qmail's ipme, DN4).

A real DNS server (tests/dnsserver.py) gives MX records; ``.test::PORT`` in
smtproutes keeps the MX lookup but connects on the sinks' port. No scheduler
options: the addresses come from mta.ipme, as in production.
"""


from tests.sink import Sink

MX_IP = "127.0.1.71"



def test_mx_pointing_at_this_machine_bounces_5_4_6(inst, dns_server):
    with Sink(MX_IP) as mx, Sink("127.0.1.72") as home:
        dns_server.set_zone({
            # best MX is 127.0.0.1 (us), but we do not treat loop.test as local
            "loop.test": {"MX": [[10, "mx.loop.test"]]},
            "mx.loop.test": {"A": ["127.0.0.1"]},
            # we are only the backup MX: deliver to the better one
            "backup.test": {"MX": [[10, "mx.backup.test"], [20, "mx.loop.test"]]},
            "mx.backup.test": {"A": [MX_IP]},
            # another loopback address is not us (tests and local services use them)
            "sink.test": {"MX": [[10, "mx.sink.test"]]},
            "mx.sink.test": {"A": [MX_IP]},
        })
        inst.control("nameservers", f"127.0.0.1:{dns_server.port}\n")
        inst.control("smtproutes", f"home.test:127.0.1.72:{home.port}\n.test::{mx.port}\n")
        inst.start()
        assert inst.inject("sender@home.test",
                           ["u@loop.test", "u@backup.test", "u@sink.test"]) == 0
        home.wait_for(1, 40)
        [bounce] = home.messages
        assert bounce.sender == "" and bounce.rcpts == ["sender@home.test"]
        report = bounce.data.decode().replace("\r\n", "\n").split("--- Below this line")[0]
        assert "<u@loop.test>:\nSorry. Although I'm listed as a best-preference MX" in report
        assert "(#5.4.6)" in report
        assert "backup.test" not in report and "sink.test" not in report
        inst.wait_empty(30)
        assert sorted(r for m in mx.messages for r in m.rcpts) == ["u@backup.test",
                                                                   "u@sink.test"]
