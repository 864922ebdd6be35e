"""Shared pytest fixtures (each helper appends its own; keep each one small)."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

# Tests create instances as root in CI and then write into them as root; per-role
# users would make those files unusable by the components. tests/e2e/test_privsep.py
# turns separation back on for its own instances.
os.environ.setdefault("MTA_PRIVSEP", "no")

from dnsserver import DnsServer


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """A real DNS server on 127.0.0.1 (UDP+TCP, free port), empty zone.

    Fill it with ``dns_server.set_zone({...})``; point a resolver at
    ``dns_server.nameservers``. See tests/dnsserver.py for the zone format.
    """
    with DnsServer() as server:
        yield server
