"""SM7 end to end: a stray CR in a stored message never reaches the wire as a line end.

qmail-queue shim -> `mta send` -> a strict-CRLF receiver written here (tests/sink.py
reads lines leniently and does not keep the raw bytes). The receiver records every
byte the client sends, takes only CRLF as a line end, and keeps each command and
each DATA line apart, so a lone CR or LF, an unstuffed leading dot or a smuggled
``MAIL FROM`` shows up as such.
"""

from __future__ import annotations

import asyncio
import re
import threading



SM7_BODY = b"a\r.\nMAIL FROM:<x@y>\n"  # security matrix SM7
BODY = SM7_BODY + b".dot line\n..two dots\nlast\n"


class RawReceiver:
    """A strict-CRLF SMTP receiver in a thread; ``wire``, ``commands``, ``transactions``."""

    def __init__(self, host: str):
        self.host, self.port = host, 0
        self.wire = bytearray()
        self.commands: list[bytes] = []
        self.transactions: list[list[bytes]] = []  # DATA lines, as sent (still stuffed)
        self.done = threading.Event()  # set when a session ends with QUIT

    def __enter__(self) -> "RawReceiver":
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"raw receiver on {self.host} did not start")
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)

    def _run(self, ready: threading.Event) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._serve(ready))
        finally:
            self.loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self.stop = asyncio.Event()
        server = await asyncio.start_server(self._session, self.host, 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        await self.stop.wait()
        server.close()
        await server.wait_closed()

    async def _lines(self, reader):
        buf = b""
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            self.wire += chunk
            buf += chunk
            while (i := buf.find(b"\r\n")) >= 0:  # CRLF is the only line end
                line, buf = buf[:i], buf[i + 2:]
                yield line

    async def _session(self, reader, writer) -> None:
        writer.write(b"220 raw ESMTP\r\n")
        data: list[bytes] | None = None
        try:
            async for line in self._lines(reader):
                if data is not None:
                    if line == b".":
                        self.transactions.append(data)
                        data = None
                        writer.write(b"250 ok\r\n")
                    else:
                        data.append(line)
                    continue
                self.commands.append(line)
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-raw\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    data = []
                    writer.write(b"354 go ahead\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    self.done.set()
                    break
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        finally:
            writer.close()



def test_stray_cr_is_normalized_and_dots_stuffed_on_the_wire(inst):
    with RawReceiver("127.0.3.5") as rx:
        inst.control("smtproutes", f"other.example:127.0.3.5:{rx.port}\n")
        inst.start()
        assert inst.inject("a@mx.test", ["x@other.example"], BODY) == 0
        inst.wait_empty(30)
        quit_seen = rx.done.wait(10)  # bounded; asserted last, after what matters more
        wire = bytes(rx.wire)
        assert len(rx.transactions) == 1, rx.transactions
        mails = [c for c in rx.commands if c[:5].upper() == b"MAIL "]
        assert len(mails) == 1 and mails[0].split(b" ")[:2] == [b"MAIL", b"FROM:<a@mx.test>"]
        assert not any(b"<x@y>" in c for c in rx.commands), rx.commands
        assert not re.search(rb"\r(?!\n)|(?<!\r)\n", wire), "lone CR or LF on the wire"
        [lines] = rx.transactions
        assert all(ln.startswith(b"..") for ln in lines if ln.startswith(b"."))
        received, *body = lines
        assert received.startswith(b"Received: (qmail ")
        assert body == [b"a", b"..", b"MAIL FROM:<x@y>", b"..dot line", b"...two dots", b"last"]
        assert quit_seen, "the client never sent QUIT"
