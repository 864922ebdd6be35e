"""End to end: `mta send` uses opportunistic STARTTLS against real receiving servers.

The TLS receivers are aiosmtpd servers (in a thread, on 127.0.1.x, port 0) with a
throwaway self-signed certificate made by ``openssl``; the plain one is tests/sink.py.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from dataclasses import dataclass, field

import pytest
from aiosmtpd.smtp import SMTP

from tests.sink import LoopThread, Sink



@pytest.fixture
def server_tls(tmp_path) -> ssl.SSLContext:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test certificate")
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=tls-sink.test"], check=True, capture_output=True,
                   timeout=60)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


@dataclass
class Got:
    rcpts: list
    tls: bool  # aiosmtpd's session.ssl was set: the message came over TLS
    cipher: tuple | None


@dataclass
class TlsReceiver(LoopThread):
    """An aiosmtpd server in a thread; records each message and whether it used TLS."""

    host: str
    tls_context: ssl.SSLContext
    port: int = 0
    got: list = field(default_factory=list)
    ehlos: int = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.ehlos += 1
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server, session, envelope):
        self.got.append(Got(list(envelope.rcpt_tos), session.ssl is not None,
                            (session.ssl or {}).get("cipher")))
        return "250 ok"

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(self, hostname="tls-sink.test", tls_context=self.tls_context),
            self.host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        await server.wait_closed()


def test_starttls_used_when_offered_and_plain_servers_still_get_mail(inst, server_tls):
    with TlsReceiver("127.0.1.61", server_tls) as tls, Sink("127.0.1.62") as plain:
        inst.control("smtproutes", f"tls.test:127.0.1.61:{tls.port}\n"
                                   f"plain.test:127.0.1.62:{plain.port}\n")
        inst.start()
        rcpts = [f"u{i}@tls.test" for i in range(5)] + [f"v{i}@plain.test" for i in range(5)]
        assert inst.inject("list-@mx.test-@[]", rcpts) == 0
        plain.wait_for(5, 30)
        inst.wait_empty(30)
        assert sorted(r for g in tls.got for r in g.rcpts) == sorted(rcpts[:5])
        assert all(g.tls for g in tls.got), [g for g in tls.got if not g.tls]
        assert all(g.cipher for g in tls.got)
        assert sorted(r for m in plain.messages for r in m.rcpts) == sorted(rcpts[5:])


def test_failed_tls_handshake_falls_back_to_plaintext(inst):
    # the server offers STARTTLS but has no certificate: every handshake fails
    broken = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with TlsReceiver("127.0.1.63", broken) as rx:
        inst.control("smtproutes", f"old.test:127.0.1.63:{rx.port}\n")
        inst.start()
        assert inst.inject("a@mx.test", ["w@old.test"]) == 0
        inst.wait_empty(30)
        [got] = rx.got
        assert got.rcpts == ["w@old.test"] and not got.tls
        # one session tried TLS and was dropped, the second delivered in plaintext
        assert rx.ehlos == 2
        # the worker remembers: the next message's session does not try TLS again
        assert inst.inject("a@mx.test", ["x@old.test"]) == 0
        inst.wait_empty(30)
        assert [g.rcpts for g in rx.got] == [["w@old.test"], ["x@old.test"]]
        assert not rx.got[1].tls and rx.ehlos == 3
