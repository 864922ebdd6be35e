"""steer_by_client: every connection of one client address reaches the same socket of a
SO_REUSEPORT group (the program picks source address mod N)."""

import socket

from mta.reuseport import steer_by_client


def _group(n: int, v4_mapped: bool = False) -> list[socket.socket]:
    """n listening sockets on one port; ``v4_mapped``: AF_INET6 sockets bound to
    ::ffff:127.0.0.1, which take IPv4 connections."""
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET6 if v4_mapped else socket.AF_INET)
        if v4_mapped:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("::ffff:127.0.0.1" if v4_mapped else "127.0.0.1",
                socks[0].getsockname()[1] if socks else 0))
        s.listen(64)
        s.setblocking(False)
        socks.append(s)
    return socks


def _who_accepts(socks, src: str) -> int:
    """Which socket got the connection; on loopback the handshake is complete (and the
    connection in that socket's accept queue) once connect() has returned."""
    port = socks[0].getsockname()[1]
    c = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(src, 0))
    try:
        got = []
        for i, s in enumerate(socks):
            try:
                conn, _ = s.accept()
            except BlockingIOError:
                continue
            conn.close()
            got.append(i)
        assert len(got) == 1, f"accepted by {got}"
        return got[0]
    finally:
        c.close()


def test_connections_of_one_client_stay_on_one_socket():
    socks = _group(2)
    try:
        assert steer_by_client(socks[0], 2)
        seen = {src: {_who_accepts(socks, src) for _ in range(8)}
                for src in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")}
        assert all(len(v) == 1 for v in seen.values()), seen
        # the address's low bits pick the socket: both sockets serve someone
        assert {next(iter(v)) for v in seen.values()} == {0, 1}
        assert seen["127.0.0.1"] == seen["127.0.0.3"] != seen["127.0.0.2"]
    finally:
        for s in socks:
            s.close()


def test_refused_where_it_cannot_apply():
    with socket.socket(socket.AF_UNIX) as u:
        assert steer_by_client(u, 2) is False
    socks = _group(1)
    try:
        assert steer_by_client(socks[0], 1) is False  # nothing to steer
    finally:
        socks[0].close()


def test_ipv4_clients_of_an_ipv6_socket_are_steered_by_address():
    """An AF_INET6 socket takes IPv4 connections too (v4-mapped); their header is IPv4's,
    so the program must read the version from the packet, not from the socket."""
    socks = _group(2, v4_mapped=True)
    try:
        assert steer_by_client(socks[0], 2)
        seen = {src: {_who_accepts(socks, src) for _ in range(8)}
                for src in ("127.0.0.1", "127.0.0.2")}
        assert seen["127.0.0.1"] == {1} and seen["127.0.0.2"] == {0}, seen
    finally:
        for s in socks:
            s.close()
