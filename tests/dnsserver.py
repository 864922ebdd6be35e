"""A real DNS server on a loopback port, serving a zone given as Python data.

A test fixture module (Exim's fakens, as a network server): remote-delivery and
resolver tests point a real resolver at it instead of mocking DNS. It binds one
port on 127.0.0.1 for both UDP and TCP, answers from a zone held in memory and
records every query it receives (to assert caching).

Zone data: a mapping from a domain name to an entry::

    {
        "example.test":   {"MX": [[10, "mx1.example.test"], [20, "mx2.example.test"]],
                           "ttl": 300},
        "mx1.example.test": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
        "www.example.test": {"CNAME": "mx1.example.test"},
        "broken.test":    {"behaviour": "servfail"},
        "v6.test":        {"A": ["127.0.0.2"], "behaviour": {"AAAA": "timeout"}},
        "nomail.test":    {"behaviour": "nullmx"},
    }

Record keys are ``MX`` (list of [preference, host]), ``A``, ``AAAA`` (lists of
addresses) and ``CNAME`` (one target); ``ttl`` applies to the entry's records
(default 300). ``behaviour`` is one string for every query type, or a mapping from
type to string: ``servfail``, ``nxdomain``, ``refused``, ``timeout`` (never
answer), ``truncate`` (UDP replies carry TC, so the client retries over TCP),
``nullmx`` (MX queries get ``MX 0 .``, RFC 7505). Names are case-insensitive.
A name absent from the zone is NXDOMAIN; a present name without the asked type is
NODATA; negative answers carry an SOA whose minimum is ``negative_ttl``. CNAMEs are
chased inside the zone, as a recursive server would.

Public API:
    DnsServer(zone=None, *, negative_ttl=300, log_path=None): ``start()``/``stop()``
    or a context manager; ``port``, ``nameservers`` ([("127.0.0.1", port)]),
    ``set_zone(zone)``, ``set_name(name, entry)``, ``queries`` (list of Query),
    ``count(name, rdtype=None)``, ``clear_queries()``.
    ``python tests/dnsserver.py --zone zone.json [--log q.jsonl]`` runs it
    standalone for end-to-end tests: prints the port on the first stdout line,
    reloads the zone file on SIGHUP, exits on SIGTERM/SIGINT.

Failures: bad zone data raises ``ValueError`` at ``set_zone``; a malformed query is
dropped (counted nowhere), as a real server would ignore it.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import selectors
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

RECORD_TYPES = ("MX", "A", "AAAA", "CNAME")
BEHAVIOURS = ("servfail", "nxdomain", "refused", "timeout", "truncate", "nullmx")
_MAX_CHAIN = 8


@dataclass(frozen=True)
class Query:
    """One question the server received."""

    name: str  # lower case, no trailing dot
    rdtype: str  # "MX", "A", ...
    transport: str  # "udp" or "tcp"


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _check_entry(name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(entry) - set(RECORD_TYPES) - {"ttl", "behaviour"}
    if unknown:
        raise ValueError(f"{name}: unknown keys {sorted(unknown)}")
    out = dict(entry)
    beh = out.get("behaviour")
    if isinstance(beh, str):
        beh = {"*": beh}
    beh = {k.upper() if k != "*" else k: v for k, v in (beh or {}).items()}
    for v in beh.values():
        if v not in BEHAVIOURS:
            raise ValueError(f"{name}: unknown behaviour {v!r}")
    out["behaviour"] = beh
    for addr in out.get("A", ()):
        ipaddress.IPv4Address(addr)
    for addr in out.get("AAAA", ()):
        ipaddress.IPv6Address(addr)
    out["MX"] = [(int(p), str(h)) for p, h in out.get("MX", ())]
    out["ttl"] = int(out.get("ttl", 300))
    return out


class DnsServer:
    """A DNS server on 127.0.0.1:<free port>, UDP and TCP, run in a thread."""

    def __init__(
        self,
        zone: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        negative_ttl: int = 300,
        log_path: Path | None = None,
    ) -> None:
        self.negative_ttl = negative_ttl
        self.queries: list[Query] = []
        self.errors: list[Exception] = []
        self._zone: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._log = open(log_path, "a", buffering=1) if log_path else None
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._stopping = False
        self.port = 0
        self.set_zone(zone or {})


    def set_zone(self, zone: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the whole zone (validated first; the old zone stays on error)."""
        checked = {_norm(n): _check_entry(n, e) for n, e in zone.items()}
        with self._lock:
            self._zone = checked

    def set_name(self, name: str, entry: Mapping[str, Any] | None) -> None:
        """Add, replace or (entry None) remove one name."""
        with self._lock:
            zone = dict(self._zone)
            zone.pop(_norm(name), None)
            if entry is not None:
                zone[_norm(name)] = _check_entry(name, entry)
            self._zone = zone

    def count(self, name: str, rdtype: str | None = None) -> int:
        """How many queries for ``name`` (of ``rdtype``, or any type) arrived."""
        key = _norm(name)
        with self._lock:
            return sum(q.name == key and rdtype in (None, q.rdtype) for q in self.queries)

    def clear_queries(self) -> None:
        with self._lock:
            self.queries.clear()

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", self.port)]


    def start(self) -> "DnsServer":
        """Bind UDP and TCP on one free port and start serving; returns self."""
        for _ in range(50):
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind(("127.0.0.1", 0))
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                udp.bind(("127.0.0.1", tcp.getsockname()[1]))
            except OSError:
                tcp.close()
                udp.close()
                continue
            break
        else:
            raise OSError("no free port for UDP and TCP together")
        tcp.listen(16)
        self._tcp, self._udp = tcp, udp
        self.port = tcp.getsockname()[1]
        self._spawn(self._serve)
        return self

    def stop(self) -> None:
        """Stop serving, close every socket and join the threads."""
        self._stopping = True
        self._wake_w.send(b"x")
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                continue  # the peer closed it already: its thread is ending anyway
        for t in self._threads:
            t.join(timeout=5)
            if t.is_alive():
                raise RuntimeError(f"dns server thread {t.name} did not stop")
        for s in (self._udp, self._tcp, self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        if self._log:
            self._log.close()
        if self.errors:
            raise RuntimeError(f"dns server failed answering: {self.errors!r}")

    def __enter__(self) -> "DnsServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Any, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name="dnsserver")
        self._threads.append(t)
        t.start()


    def _serve(self) -> None:
        assert self._udp is not None and self._tcp is not None
        sel = selectors.DefaultSelector()
        sel.register(self._udp, selectors.EVENT_READ)
        sel.register(self._tcp, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping:
                for key, _ in sel.select():
                    if key.fileobj is self._udp:
                        data, peer = self._udp.recvfrom(65535)
                        reply = self._handle_safely(data, "udp")
                        if reply is not None:
                            self._udp.sendto(reply, peer)
                    elif key.fileobj is self._tcp:
                        conn, _ = self._tcp.accept()
                        with self._lock:
                            self._conns.add(conn)
                        self._spawn(self._serve_tcp, conn)
        finally:
            sel.close()

    def _serve_tcp(self, conn: socket.socket) -> None:
        # One thread per connection; blocking reads end when stop() shuts it down.
        try:
            with conn:
                while True:
                    head = _recv_exact(conn, 2)
                    if head is None:
                        return
                    data = _recv_exact(conn, int.from_bytes(head, "big"))
                    if data is None:
                        return
                    reply = self._handle_safely(data, "tcp")
                    if reply is not None:
                        conn.sendall(len(reply).to_bytes(2, "big") + reply)
        except OSError:
            return  # peer went away or stop() shut the socket: nothing to answer
        finally:
            with self._lock:
                self._conns.discard(conn)


    def _handle_safely(self, data: bytes, transport: str) -> bytes | None:
        # A bug here must fail the test (stop() re-raises), not kill the thread.
        try:
            return self._handle(data, transport)
        except Exception as exc:  # noqa: BLE001 - kept and re-raised by stop()
            self.errors.append(exc)
            return None

    def _handle(self, data: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
            question = query.question[0]
        except (dns.exception.DNSException, IndexError):
            return None
        qname = _norm(question.name.to_text())
        qtype = dns.rdatatype.to_text(question.rdtype)
        self._record(Query(qname, qtype, transport))
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        with self._lock:
            zone = self._zone
        verdict = self._answer(zone, question.name, question.rdtype, response)
        if verdict == "timeout":
            return None
        if verdict == "truncate" and transport == "udp":
            return _truncated(query)
        limit = 65535 if transport == "tcp" else max(512, query.payload)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            return _truncated(query)

    def _record(self, q: Query) -> None:
        with self._lock:
            self.queries.append(q)
        if self._log:
            self._log.write(json.dumps([q.name, q.rdtype, q.transport]) + "\n")

    def _answer(self, zone: dict, name: dns.name.Name, rdtype: int, response) -> str:
        """Fill ``response``; return "" or the behaviour that shapes the reply."""
        qtype = dns.rdatatype.to_text(rdtype)
        for _ in range(_MAX_CHAIN):
            entry = zone.get(_norm(name.to_text()))
            if entry is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
                self._add_soa(response, name)
                return ""
            beh = entry["behaviour"].get(qtype) or entry["behaviour"].get("*", "")
            if beh in ("servfail", "nxdomain", "refused"):
                response.answer.clear()
                response.set_rcode(dns.rcode.from_text(beh.upper()))
                if beh == "nxdomain":
                    self._add_soa(response, name)
                return beh
            if beh == "timeout":
                return beh
            if beh == "nullmx" and qtype == "MX":
                self._add(response, name, entry["ttl"], "MX", ["0 ."])
                return ""
            values = _rdata_texts(entry, qtype)
            if values:
                self._add(response, name, entry["ttl"], qtype, values)
                return beh
            if "CNAME" in entry and qtype != "CNAME":
                self._add(response, name, entry["ttl"], "CNAME", [_absolute(entry["CNAME"])])
                name = dns.name.from_text(entry["CNAME"])
                continue
            self._add_soa(response, name)
            return beh
        return ""

    @staticmethod
    def _add(response, name: dns.name.Name, ttl: int, qtype: str, texts) -> None:
        rrset = dns.rrset.from_text_list(name, ttl, "IN", qtype, list(texts))
        response.answer.append(rrset)

    def _add_soa(self, response, name: dns.name.Name) -> None:
        owner = name.parent() if len(name.labels) > 2 else name
        soa = f"ns.{owner} hostmaster.{owner} 1 3600 600 86400 {self.negative_ttl}"
        response.authority.append(
            dns.rrset.from_text(owner, self.negative_ttl, "IN", "SOA", soa)
        )


def _rdata_texts(entry: dict[str, Any], qtype: str) -> list[str]:
    if qtype == "MX":
        return [f"{p} {_absolute(h)}" for p, h in entry["MX"]]
    if qtype in ("A", "AAAA"):
        return list(entry.get(qtype, ()))
    if qtype == "CNAME" and "CNAME" in entry:
        return [_absolute(entry["CNAME"])]
    return []


def _absolute(host: str) -> str:
    return host if host.endswith(".") else host + "."


def _truncated(query: dns.message.Message) -> bytes:
    response = dns.message.make_response(query)
    response.flags |= dns.flags.TC | dns.flags.RA
    return response.to_wire()


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def main(argv: list[str] | None = None) -> None:
    """Serve a JSON zone file until SIGTERM/SIGINT; print the port first."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zone", type=Path, required=True)
    parser.add_argument("--log", type=Path, help="append one JSON line per query")
    parser.add_argument("--negative-ttl", type=int, default=300)
    args = parser.parse_args(argv)
    server = DnsServer(
        json.loads(args.zone.read_text()),
        negative_ttl=args.negative_ttl,
        log_path=args.log,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGHUP, lambda *_: server.set_zone(json.loads(args.zone.read_text())))
    with server:
        print(server.port, flush=True)
        while not done.wait(3600):
            continue


if __name__ == "__main__":
    main()
