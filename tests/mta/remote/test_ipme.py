"""mta.ipme: this machine's addresses, from /proc files (a copy given as ``proc``) or live."""

import socket

from mta.ipme import local_addresses

FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.0.1.5
           /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
        |-- 192.0.2.0
           /24 link UNICAST
        |-- 192.0.2.7
           /32 host LOCAL
        |-- 198.51.100.9
           /24 link UNICAST
           /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
        |-- 192.0.2.7
           /32 host LOCAL
"""

IF_INET6 = """\
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
20010db8000000000000000000000042 04 40 00 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
"""


def test_addresses_from_proc_files(tmp_path):
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "fib_trie").write_text(FIB_TRIE)
    (tmp_path / "net" / "if_inet6").write_text(IF_INET6)
    got = local_addresses(tmp_path)
    assert got == {"0.0.0.0", "::", "127.0.0.1", "::1", "192.0.2.7", "198.51.100.9",
                   "fe80::fc:ff:fe00:1", "2001:db8::42"}
    # not the whole 127/8, not an explicit alias on it, no broadcast or network entries
    assert not {"127.0.0.0", "127.0.1.5", "127.255.255.255", "192.0.2.0", "192.0.2.255"} & got


def _route_source() -> str:
    """The address the kernel picks to reach a non-loopback network (one of ours)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))  # UDP connect: no packet, only a route lookup
        return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"  # no route outside loopback on this machine
    finally:
        s.close()


def test_live_addresses_include_an_interface_address_and_not_other_loopback():
    got = local_addresses()
    assert {"0.0.0.0", "127.0.0.1", "::1"} <= got
    assert not any(ip.startswith("127.") and ip != "127.0.0.1" for ip in got)
    assert _route_source() in got


def test_without_proc_interfaces_are_asked_directly(tmp_path):
    got = local_addresses(tmp_path / "absent")  # the SIOCGIFADDR path
    assert {"0.0.0.0", "::", "127.0.0.1", "::1"} <= got
    assert _route_source() in got
