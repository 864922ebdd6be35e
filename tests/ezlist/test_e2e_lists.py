"""End to end: qmail-queue shim -> `mta send` -> local delivery runs
`python -m ezlist.deliver` -> replies and posts through the queue -> sinks on 127.0.1.x.

The list's domain is in control/locals, so NAME@ and NAME-...@ reach the
alias user's .qmail-NAME / .qmail-NAME-default written by ezlist make.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from ezlist.listdir import ListOptions, make_list
from ezlist.returns import open_book
from ezlist.subscribers import SubscriberDB

from tests.harness import BIN, Instance
from tests.sink import Sink

HOST = "lists.test"


@pytest.fixture
def inst(tmp_path):
    i = Instance(tmp_path)
    i.control("locals", f"{HOST}\n")
    yield i
    i.stop()


def _route(inst, pairs):
    inst.control("smtproutes", "".join(f"{d}:{h}:{p}\n" for d, h, p in pairs))


def _subscribers(cfg) -> list[str]:
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        return list(db.iter_addresses())


def _reply_to(data: bytes) -> str:
    m = re.search(rb"^Reply-To: (\S+)\r?$", data, re.M)
    assert m, data.decode(errors="replace")
    return m.group(1).decode()


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").replace("\r\n", "\n")


def test_subscribe_and_unsubscribe_by_mail(inst):
    cfg = make_list(inst.root, f"news@{HOST}", ListOptions())
    with Sink("127.0.1.21") as box:
        _route(inst, [("example.org", "127.0.1.21", box.port)])
        inst.start()
        assert inst.inject("box@example.org", [f"news-subscribe-box=example.org@{HOST}"]) == 0
        box.wait_for(1, 60)
        confirm = box.messages[0]
        assert confirm.rcpts == ["box@example.org"] and confirm.sender == f"news-return-@{HOST}"
        sc = _reply_to(confirm.data)
        assert sc.startswith("news-sc.")
        # a forged cookie changes nothing and brings a fresh confirmation
        t, mac, rest = re.fullmatch(r"news-sc\.(\d+)\.([a-z2-7]{16})-(.*)", sc).groups()
        forged = f"news-sc.{t}.{'a' if mac[0] != 'a' else 'b'}{mac[1:]}-{rest}"
        assert inst.inject("box@example.org", [forged]) == 0
        box.wait_for(2, 60)
        assert "not valid, had expired" in _text(box.messages[1].data)
        assert _subscribers(cfg) == []
        assert inst.inject("box@example.org", [sc], b"Subject: Re: confirm\n\nyes\n") == 0
        box.wait_for(3, 60)
        assert "WELCOME" in _text(box.messages[2].data)
        assert _subscribers(cfg) == ["box@example.org"]
        assert inst.inject("box@example.org", [f"news-unsubscribe@{HOST}"]) == 0
        box.wait_for(4, 60)
        uc = _reply_to(box.messages[3].data)
        assert uc.startswith("news-uc.")
        assert inst.inject("box@example.org", [uc]) == 0
        box.wait_for(5, 60)
        assert "GOODBYE" in _text(box.messages[4].data)
        assert _subscribers(cfg) == []
        inst.wait_empty(60)


def test_post_reaches_each_subscriber_once_and_a_5xx_comes_back_as_a_bounce(inst):
    cfg = make_list(inst.root, f"news@{HOST}", ListOptions(
        subscribers_only=True, unsubscribe_url="https://lists.example/unsub",
        bounce_threshold=1, bounce_timeout=0))
    rcpts = [f"u{i}@one.test" for i in range(20)] + [f"v{i}@two.test" for i in range(20)]
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        db.add_many(rcpts + ["bad@one.test"])
    with Sink("127.0.1.22", rcpt_reply={"bad@one.test": "550 no such user"}) as one, \
            Sink("127.0.1.23") as two, Sink("127.0.1.24") as home:
        _route(inst, [("one.test", "127.0.1.22", one.port), ("two.test", "127.0.1.23", two.port),
                      ("home.test", "127.0.1.24", home.port)])
        inst.start()
        post = b"From: u1@one.test\nSubject: news\nMessage-ID: <p1@one.test>\n\nhello all\n"
        assert inst.inject("u1@one.test", [f"news@{HOST}"], post) == 0
        one.wait_for(20, 60)
        two.wait_for(20, 60)
        got = [(m.sender, r, m.data) for s in (one, two) for m in s.messages for r in m.rcpts]
        assert sorted(r for _, r, _ in got) == sorted(rcpts)  # once each; bad refused
        for sender, r, data in got:
            box, dom = r.split("@")
            assert sender == f"news-return-1-{box}={dom}@{HOST}"
            text = _text(data)
            for field in ("List-Id: <news.lists.test>", "List-Help: <mailto:news-help@lists.test>",
                          "List-Post: <mailto:news@lists.test>",
                          "List-Subscribe: <mailto:news-subscribe@lists.test>",
                          "List-Unsubscribe: <https://lists.example/unsub>, "
                          "<mailto:news-unsubscribe@lists.test>", "Precedence: list"):
                assert field in text, field
        # the mta bounces bad@one.test to news-return-1-bad=one.test@ and ezlist records it
        inst.wait_until(lambda: _bouncing(cfg) == ["bad@one.test"], 60, "the bounce record")
        # a non-subscriber's post and a looping post are refused: bounced to their senders
        assert inst.inject("stranger@home.test", [f"news@{HOST}"], post) == 0
        looped = b"Delivered-To: mailing list news@lists.test\n" + post
        assert inst.inject("u2@home.test", [f"news@{HOST}"], looped) == 0
        home.wait_for(2, 60)
        texts = {m.rcpts[0]: _text(m.data) for m in home.messages}
        assert "only subscribers may post" in texts["stranger@home.test"]
        assert "already has my Delivered-To line" in texts["u2@home.test"]
        assert len(one.messages) + len(two.messages) == 40  # nothing more went out
        # warning (bounces at the 550 too) -> probe (bounces) -> removed
        for _ in range(2):
            subprocess.run([str(BIN / "ezlist"), "--root", str(inst.root), "moderate-expire",
                            "news"], check=True, capture_output=True, timeout=60)
            inst.wait_empty(60)
        inst.wait_until(lambda: "bad@one.test" not in _subscribers(cfg), 60, "the removal")
        assert len(_subscribers(cfg)) == 40
        with SubscriberDB(cfg.path / "subscribers.db") as db:
            [removal] = open_book(cfg, db).removed()
        assert removal.address == "bad@one.test"


def _bouncing(cfg) -> list[str]:
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        return [b.address for b in open_book(cfg, db).bouncing()]


def test_ezlist_send_shows_progress_until_done_then_status(inst, tmp_path):
    make_list(inst.root, f"letter@{HOST}", ListOptions())
    with Sink("127.0.1.25", rcpt_reply={"gone@three.test": "550 gone"}) as three:
        _route(inst, [("three.test", "127.0.1.25", three.port)])
        ezlist = [str(BIN / "ezlist"), "--root", str(inst.root)]
        subs = "".join(f"r{i}@three.test\n" for i in range(30)) + "gone@three.test\n"
        subprocess.run(ezlist + ["sub", "letter"], input=subs.encode(), check=True, timeout=60)
        eml = tmp_path / "letter.eml"
        eml.write_bytes(b"From: editor@three.test\nSubject: issue 1\n\nnews\n")
        inst.start()
        out = subprocess.run(ezlist + ["send", "letter", str(eml)], capture_output=True,
                             text=True, check=True, timeout=120).stdout
        assert "post 1 queued as msg" in out and "for 31 subscribers" in out
        assert "delivered 30" in out and "failed 1" in out, out
        three.wait_for(30, 60)
        inst.wait_empty(60)
        shown = subprocess.run(ezlist + ["status", "letter", "1"], capture_output=True,
                               text=True, check=True, timeout=60).stdout
        assert "finished" in shown and "delivered 30" in shown and "failed 1" in shown, shown
        assert "three.test" in shown and "550" in shown, shown
