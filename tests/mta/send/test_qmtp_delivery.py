"""Remote delivery with QMTP for destinations in control/qmtproutes, SMTP otherwise."""

import asyncio
import threading
import time

from mta.control import load_control
from mta.net.qmtp_server import open_qmtp_server
from tests.harness import Instance
from tests.sink import Sink


class QmtpPeer:
    """A real QMTP server (ours) in a thread, recording each message handed to it."""

    def __init__(self, host):
        self.host, self.got = host, []

    def __enter__(self):
        ready = threading.Event()

        async def main():
            async def submit(sender, rcpts, data):
                self.got.append((sender, list(rcpts), data))
                return len(self.got)

            self.stop = asyncio.Event()
            server = await open_qmtp_server(self.host, 0, submit=submit,
                                            rcpt_allowed=lambda ip, a: True)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            await self.stop.wait()
            server.close()

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),),
                                       daemon=True)
        self.thread.start()
        assert ready.wait(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


def test_qmtproutes_default_port_is_209(tmp_path):
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "me").write_text("mx.test\n")
    (tmp_path / "control" / "qmtproutes").write_text("# c\na.test:10.0.0.1\nb.test:[10.0.0.2]\n"
                                                     "c.test:10.0.0.3:2209\n:10.0.0.4\n")
    ctl = load_control(tmp_path)
    assert [(r.domain, r.host, r.port) for r in ctl.qmtproutes] == [
        ("a.test", "10.0.0.1", 209), ("b.test", "10.0.0.2", 209),
        ("c.test", "10.0.0.3", 2209), ("", "10.0.0.4", 209)]


def test_qmtp_route_used_smtp_for_the_rest(tmp_path):
    inst = Instance(tmp_path)
    try:
        with QmtpPeer("127.0.1.21") as q, Sink("127.0.1.22") as s:
            inst.control("qmtproutes", f"q.test:127.0.1.21:{q.port}\n")
            inst.control("smtproutes", f":127.0.1.22:{s.port}\n")
            inst.start()
            rcpts = [f"u{i}@q.test" for i in range(30)] + ["v@smtp.test"]
            assert inst.inject("l-return-1-@mx.test-@[]", rcpts) == 0
            deadline = time.monotonic() + 30
            while sum(len(r) for _, r, _ in q.got) < 30:
                assert time.monotonic() < deadline, f"QMTP peer got {len(q.got)} messages"
                time.sleep(0.05)
            s.wait_for(1)
            assert sorted(r for _, rs, _ in q.got for r in rs) == sorted(rcpts[:30])
            assert all(snd == f"l-return-1-{r[0].split('@')[0]}=q.test@mx.test"
                       for snd, r, _ in q.got)
            assert q.got[0][2].endswith(b"\nSubject: t\n\nhello\n")  # LF line ends kept
            inst.wait_empty(30)
    finally:
        inst.stop()
