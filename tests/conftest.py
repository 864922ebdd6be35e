"""Shared pytest fixtures (each helper appends its own; keep each one small)."""

from __future__ import annotations

from typing import Iterator

import pytest

from dnsserver import DnsServer


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """A real DNS server on 127.0.0.1 (UDP+TCP, free port), empty zone.

    Fill it with ``dns_server.set_zone({...})``; point a resolver at
    ``dns_server.nameservers``. See tests/dnsserver.py for the zone format.
    """
    with DnsServer() as server:
        yield server
