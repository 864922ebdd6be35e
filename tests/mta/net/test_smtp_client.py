"""The asyncio SMTP client against real servers on 127.0.0.1.

Peers: aiosmtpd (an independent implementation, run in the test's own event loop),
a scriptable sink written here (a chosen reply at a chosen command, hangs and
drops), and Postfix's smtp-sink for pipelining plus connection reuse.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest
import uvloop
from aiosmtpd.smtp import SMTP as AioSMTP

from mta.interfaces import Delivered, PermFail, TempFail
from mta.net.smtp_client import ConnectionFailed, open_smtp_connection
from mta.remote.body import prepare_body
from mta.status import Stage
from mta.verp import verp_sender

BODY = prepare_body(b"Subject: test\n\nhello\n")


def run(coro):
    return uvloop.run(asyncio.wait_for(coro, 20))


async def connect(port, **kw):
    kw.setdefault("timeout_connect", 5)
    kw.setdefault("timeout_reply", 5)
    return await open_smtp_connection("127.0.0.1", port, helo="client.test", **kw)


# ------------------------------------------------------------------ aiosmtpd
class Recorder:
    def __init__(self):
        self.got = []

    async def handle_DATA(self, server, session, envelope):
        self.got.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK queued"


async def start_aiosmtpd(recorder, **kw):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: AioSMTP(recorder, hostname="sink.test", **kw), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_verp_fanout_and_dot_stuffing_against_aiosmtpd():
    rec = Recorder()
    raw = b"Subject: x\n\n.leading dot\n..two\nend"

    async def main():
        server, port = await start_aiosmtpd(rec)
        body = prepare_body(raw)
        async with await connect(port) as conn:
            assert not conn.extensions.pipelining  # aiosmtpd: the lock-step path
            sock = conn._transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            results = []
            for rcpt in ("a@other.example", "b@other.example", "c@other.example"):
                sender = verp_sender("list-return-7-@lists.local.test-@[]", rcpt)
                results.append(await conn.send_transaction(sender, [rcpt], body))
            assert conn.transactions_done == 3
        server.close()
        return results

    results = run(main())
    assert all(isinstance(r[0], Delivered) and "250 OK queued" in r[0].text for r in results)
    assert [(m, r) for m, r, _ in rec.got] == [
        ("list-return-7-a=other.example@lists.local.test", ["a@other.example"]),
        ("list-return-7-b=other.example@lists.local.test", ["b@other.example"]),
        ("list-return-7-c=other.example@lists.local.test", ["c@other.example"])]
    # aiosmtpd removed our dot-stuffing: the content is the original, CRLF-normalized
    assert rec.got[0][2] == b"Subject: x\r\n\r\n.leading dot\r\n..two\r\nend\r\n"


def test_starttls_against_aiosmtpd(tmp_path):
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test certificate")
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=sink.test"], check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE  # opportunistic, as MTAs do
    rec = Recorder()

    async def main():
        server, port = await start_aiosmtpd(rec, tls_context=server_ctx)
        async with await connect(port, tls_context=client_ctx) as conn:
            assert conn.tls_active
            out = await conn.send_transaction("s@x.test", ["r@y.test"], BODY)
        server.close()
        return out

    assert isinstance(run(main())[0], Delivered)
    assert len(rec.got) == 1


# ------------------------------------------------------------------ scripted sink
@dataclass
class Script:
    greeting: bytes = b"220 sink ESMTP\r\n"
    ehlo: tuple = ("PIPELINING", "8BITMIME", "SIZE 100000000")
    replies: dict = field(default_factory=dict)  # "MAIL", "RCPT2", "DATA", "DOT" -> reply
    hang_after_354: bool = False
    close_after_body_bytes: int | None = None
    transactions: list = field(default_factory=list)  # (mail line, rcpt lines, raw data)
    commands: list = field(default_factory=list)


async def serve_script(script: Script, reader, writer):
    writer.write(script.greeting)
    if not script.greeting.startswith(b"220"):
        await writer.drain()
        writer.close()
        return
    mail, rcpts = None, []
    while line := await reader.readline():
        cmd = line.rstrip(b"\r\n").decode()
        script.commands.append(cmd)
        verb = cmd.split(":")[0].split(" ")[0].upper()
        if verb == "EHLO":
            lines = ["sink"] + list(script.ehlo)
            writer.write("".join(f"250{' ' if i == len(lines) - 1 else '-'}{t}\r\n"
                                 for i, t in enumerate(lines)).encode())
        elif verb == "MAIL":
            mail, rcpts = cmd, []
            writer.write(script.replies.get("MAIL", b"250 ok\r\n"))
        elif verb == "RCPT":
            rcpts.append(cmd)
            writer.write(script.replies.get(f"RCPT{len(rcpts)}", b"250 ok\r\n"))
        elif verb == "DATA":
            reply = script.replies.get("DATA", b"354 go\r\n")
            writer.write(reply)
            if reply.startswith(b"354"):
                await writer.drain()
                if script.hang_after_354:
                    await asyncio.sleep(3600)
                data = await read_data(reader, script.close_after_body_bytes)
                if data is None:
                    writer.transport.abort()
                    return
                script.transactions.append((mail, rcpts, data))
                writer.write(script.replies.get("DOT", b"250 accepted\r\n"))
        elif verb == "QUIT":
            writer.write(b"221 bye\r\n")
            await writer.drain()
            writer.close()
            return
        else:
            writer.write(b"250 ok\r\n")
        await writer.drain()


async def read_data(reader, limit):
    data = b""
    while not data.endswith(b"\r\n.\r\n") and data != b".\r\n":
        chunk = await reader.read(65536)
        if not chunk:
            return None
        data += chunk
        if limit is not None and len(data) >= limit:
            return None
    return data


async def start_script(script):
    server = await asyncio.start_server(lambda r, w: serve_script(script, r, w), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_sm7_stray_cr_never_reaches_the_wire():
    script = Script()

    async def main():
        server, port = await start_script(script)
        async with await connect(port) as conn:
            out = await conn.send_transaction("s@x.test", ["x@other.example"],
                                              prepare_body(b"a\r.\nMAIL FROM:<x@y>\n"))
        server.close()
        return out

    assert isinstance(run(main())[0], Delivered)
    assert len(script.transactions) == 1
    data = script.transactions[0][2]
    assert data == b"a\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n"
    assert data.count(b"\r") == data.count(b"\r\n") == data.count(b"\n")
    assert not any(c.startswith("MAIL FROM:<x@y>") for c in script.commands)


def test_rd4_partial_rcpt_failure_pipelined():
    script = Script(replies={"RCPT2": b"550 5.1.1 no such user\r\n"})

    async def main():
        server, port = await start_script(script)
        async with await connect(port) as conn:
            assert conn.extensions.pipelining
            out = await conn.send_transaction("s@x.test", ["1@y", "2@y", "3@y"], BODY)
        server.close()
        return out

    out = run(main())
    assert isinstance(out[0], Delivered) and isinstance(out[2], Delivered)
    assert isinstance(out[1], PermFail) and out[1].dsn == "5.1.1"
    assert "127.0.0.1 does not like recipient." in out[1].reason
    assert len(script.transactions) == 1


@pytest.mark.parametrize("greeting,kind", [(b"421 busy\r\n", TempFail),
                                           (b"554 go away\r\n", PermFail)])
def test_rd1_rd5_greeting_refused_is_connection_level(greeting, kind):
    async def main():
        server, port = await start_script(Script(greeting=greeting))
        with pytest.raises(ConnectionFailed) as info:
            await connect(port)
        server.close()
        return info.value

    failed = run(main())
    assert failed.stage == Stage.GREETING and isinstance(failed.outcome, kind)


def test_rd5_451_to_mail_defers_and_connection_stays_usable():
    script = Script(replies={"MAIL": b"451 4.3.0 try later\r\n", "RCPT1": b"503 no\r\n",
                             "DATA": b"503 no\r\n"})

    async def main():
        server, port = await start_script(script)
        async with await connect(port) as conn:
            out = await conn.send_transaction("s@x.test", ["1@y"], BODY)
            script.replies.clear()
            again = await conn.send_transaction("s@x.test", ["1@y"], BODY)
        server.close()
        return out, again

    out, again = run(main())
    assert isinstance(out[0], TempFail) and out[0].dsn == "4.3.0"
    assert isinstance(again[0], Delivered)
    assert "RSET" in script.commands  # the aborted transaction was reset first


def test_rd2_hang_after_354_times_out():
    script = Script(hang_after_354=True)

    async def main():
        server, port = await start_script(script)
        conn = await connect(port, timeout_reply=1)
        started = time.monotonic()
        out = await conn.send_transaction("s@x.test", ["1@y"], BODY)
        elapsed = time.monotonic() - started
        conn.close()
        server.close()
        return out, elapsed, conn

    out, elapsed, conn = run(main())
    assert isinstance(out[0], TempFail) and "timed out" in out[0].reason
    assert out[0].reason.startswith("Possible duplicate!")
    assert 0.9 <= elapsed < 4, elapsed
    assert conn.failure is not None and not conn.usable


def test_rd3_drop_mid_data_is_connection_died():
    script = Script(close_after_body_bytes=100_000)
    body = prepare_body(b"".join(b"line %d of a long body\n" % i for i in range(20000)))

    async def main():
        server, port = await start_script(script)
        conn = await connect(port)
        out = await conn.send_transaction("s@x.test", ["1@y"], body)
        conn.close()
        server.close()
        return out, conn

    out, conn = run(main())
    assert isinstance(out[0], TempFail) and "connection died" in out[0].reason
    assert conn.failure is not None
    with pytest.raises(ConnectionFailed):
        run(conn.send_transaction("s@x.test", ["1@y"], BODY))


def test_connect_refused_is_connection_level():
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        failed = None
        try:
            run(connect(port))
        except ConnectionFailed as exc:
            failed = exc
    assert failed is not None and failed.stage == Stage.CONNECT
    assert isinstance(failed.outcome, TempFail) and failed.outcome.dsn == "4.4.1"


# ------------------------------------------------------------------ Postfix smtp-sink
@pytest.fixture
def smtp_sink():
    if not os.path.exists("/usr/sbin/smtp-sink"):
        pytest.fail("/usr/sbin/smtp-sink (Debian postfix) is required")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen(["/usr/sbin/smtp-sink", *user, "-c", f"127.0.0.1:{port}", "100"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"smtp-sink did not start: {proc.stderr.read()!r}")
            time.sleep(0.02)
    yield port
    proc.kill()
    proc.wait()


def test_pipelining_and_reuse_against_postfix_smtp_sink(smtp_sink):
    async def main():
        async with await connect(smtp_sink) as conn:
            assert conn.extensions.pipelining
            outs = []
            for i in range(200):
                rcpt = f"user{i}@example.test"
                outs.append(await conn.send_transaction(
                    verp_sender("list-@lists.test-@[]", rcpt), [rcpt], BODY))
            assert conn.transactions_done == 200
            return outs

    outs = run(main())
    assert all(len(o) == 1 and isinstance(o[0], Delivered) for o in outs)


CRASH_CHILD = """
import asyncio, sys, uvloop
from mta.net.smtp_client import open_smtp_connection
from mta.remote.body import prepare_body
async def main():
    conn = await open_smtp_connection("127.0.0.1", int(sys.argv[1]), helo="c.test",
                                      timeout_connect=5, timeout_reply=5)
    print("connected", flush=True)
    await conn.send_transaction("s@x.test", ["r@y.test"], prepare_body(b"hi"))
    print("survived", flush=True)
uvloop.run(main())
"""


def test_crash_point_after_final_dot(smtp_sink):
    env = dict(os.environ, MTA_CRASH_AT="remote_after_dot")
    child = subprocess.run([sys.executable, "-c", CRASH_CHILD, str(smtp_sink)], env=env,
                           capture_output=True, timeout=30, text=True)
    assert child.returncode == -9, (child.returncode, child.stdout, child.stderr)
    assert child.stdout == "connected\n"
