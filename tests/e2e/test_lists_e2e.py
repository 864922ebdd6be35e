"""Mailing lists end to end through ``mta start`` and real SMTP (issue 5's acceptance).

smtplib -> our SMTP listener -> queue owner -> scheduler -> local delivery runs
``python -m ezlist.deliver`` (the .qmail files ``ezlist make`` wrote) -> replies and
posts through the queue -> remote delivery to receiving sinks on 127.0.1.x. The
one-click unsubscribe URL a subscriber received is then used through the
``ezlist oneclick`` CGI program, as a web server would run it.
"""

from __future__ import annotations

import re
import smtplib
import subprocess
import time

import pytest

from ezlist.cookies import WINDOW, make_cookie
from ezlist.listdir import ListOptions, make_list, read_key
from ezlist.returns import open_book
from ezlist.subscribers import SubscriberDB
from tests.e2e.conftest import BIN
from tests.sink import Sink

HOST = "lists.test"
EZLIST = str(BIN / "ezlist")


@pytest.fixture
def lists(system):
    system.control("locals", f"local.test\n{HOST}\n")
    return system


def _smtp(system, sender: str, rcpts: list[str], body: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", system.port, timeout=30) as s:
        s.sendmail(sender, rcpts, body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


def _route(system, pairs) -> None:
    system.control("smtproutes", "".join(f"{d}:{h}:{p}\n" for d, h, p in pairs))


def _subscribers(cfg) -> list[str]:
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        return list(db.iter_addresses())


def _reply_to(data: bytes) -> str:
    m = re.search(rb"^Reply-To: (\S+)\r?$", data, re.M)
    assert m, data.decode(errors="replace")
    return m.group(1).decode()


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").replace("\r\n", "\n")


def _forge(address: str) -> str:
    """The same confirmation address with one character of its MAC changed."""
    kind, t, mac, rest = re.fullmatch(r"news-(sc|uc)\.(\d+)\.([a-z2-7]{16})-(.*)", address).groups()
    return f"news-{kind}.{t}.{'a' if mac[0] != 'a' else 'b'}{mac[1:]}-{rest}"


def _expired(cfg, kind: str, target: str) -> str:
    """A confirmation address with a genuine MAC made just beyond the window."""
    t = int(time.time()) - WINDOW - 1
    token = make_cookie(read_key(cfg.path), cfg.address, kind, target, t)
    box, dom = target.split("@")
    return f"news-{kind}.{token}-{box}={dom}@{HOST}"


def _confirm_cycle(lists, cfg, box, kind: str, start: int) -> str:
    """Forged and expired cookies change nothing and bring fresh requests; returns a good one."""
    good = _reply_to(box.messages[start].data)
    assert good.startswith(f"news-{kind}.")
    before = _subscribers(cfg)
    for n, bad in enumerate([_forge(good), _expired(cfg, kind, "box@example.org")], start + 1):
        _smtp(lists, "box@example.org", [bad], b"Subject: Re: confirm\n\nyes\n")
        box.wait_for(n + 1, 60)
        again = box.messages[n]
        assert again.rcpts == ["box@example.org"]
        assert "not valid, had expired" in _text(again.data)
        assert _reply_to(again.data).startswith(f"news-{kind}.")
        assert _subscribers(cfg) == before
    return good


def test_subscribe_and_unsubscribe_by_mail_through_smtp(lists):
    cfg = make_list(lists.root, f"news@{HOST}", ListOptions())
    with Sink("127.0.1.31") as box, Sink("127.0.1.32") as attacker:
        _route(lists, [("example.org", "127.0.1.31", box.port),
                       ("evil.test", "127.0.1.32", attacker.port)])
        lists.start()
        # a stranger asks for box@example.org: only box gets the cookie (LS1)
        _smtp(lists, "someone@evil.test", [f"news-subscribe-box=example.org@{HOST}"],
              b"Subject: sub\n\nplease\n")
        box.wait_for(1, 60)
        confirm = box.messages[0]
        assert confirm.rcpts == ["box@example.org"] and confirm.sender == f"news-return-@{HOST}"
        sc = _confirm_cycle(lists, cfg, box, "sc", 0)
        _smtp(lists, "box@example.org", [sc], b"Subject: Re: confirm\n\nyes\n")
        box.wait_for(4, 60)
        assert "WELCOME" in _text(box.messages[3].data)
        assert _subscribers(cfg) == ["box@example.org"]
        _smtp(lists, "box@example.org", [f"news-unsubscribe@{HOST}"], b"Subject: bye\n\n.\n")
        box.wait_for(5, 60)
        uc = _confirm_cycle(lists, cfg, box, "uc", 4)
        assert _subscribers(cfg) == ["box@example.org"]
        _smtp(lists, "box@example.org", [uc], b"Subject: Re: confirm\n\nyes\n")
        box.wait_for(8, 60)
        assert "GOODBYE" in _text(box.messages[7].data)
        assert _subscribers(cfg) == []
        lists.wait_empty(60)
        assert attacker.messages == []


def _list_fields(data: bytes) -> dict[str, str]:
    head = _text(data).split("\n\n", 1)[0]
    return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head.split("\n"))
            if not k.startswith((" ", "\t"))}


def _oneclick(lists, method: str, url: str, body: bytes = b"") -> str:
    query = url.split("?", 1)[1]
    env = dict(lists.env, REQUEST_METHOD=method, QUERY_STRING=query,
               CONTENT_LENGTH=str(len(body)), GATEWAY_INTERFACE="CGI/1.1")
    p = subprocess.run([EZLIST, "oneclick"], input=body, env=env, capture_output=True,
                       timeout=60, check=True)
    return p.stdout.decode()


def test_post_verp_headers_one_click_and_bounce_cycle_through_smtp(lists):
    cfg = make_list(lists.root, f"news@{HOST}", ListOptions(
        subscribers_only=True, unsubscribe_url="https://lists.example/unsub",
        bounce_threshold=1, bounce_timeout=0))
    rcpts = [f"u{i}@one.test" for i in range(20)] + [f"V{i}@two.test" for i in range(20)]
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        db.add_many(rcpts + ["bad@one.test"])
    with Sink("127.0.1.33", rcpt_reply={"bad@one.test": "550 no such user"}) as one, \
            Sink("127.0.1.34") as two, Sink("127.0.1.35") as home:
        _route(lists, [("one.test", "127.0.1.33", one.port), ("two.test", "127.0.1.34", two.port),
                       ("home.test", "127.0.1.35", home.port)])
        lists.start()
        post = b"From: u1@one.test\nSubject: news\nMessage-ID: <p1@one.test>\n\nhello all\n"
        _smtp(lists, "u1@one.test", [f"news@{HOST}"], post)
        one.wait_for(20, 60)
        two.wait_for(20, 60)
        got = [(m.sender, r, m.data) for s in (one, two) for m in s.messages for r in m.rcpts]
        assert sorted(r for _, r, _ in got) == sorted(rcpts)  # once each; bad refused
        urls = {}
        for sender, r, data in got:
            box, dom = r.split("@")
            assert sender == f"news-return-1-{box}={dom}@{HOST}"
            fields = _list_fields(data)
            assert fields["list-id"] == "<news.lists.test>"
            assert fields["list-help"] == "<mailto:news-help@lists.test>"
            assert fields["list-post"] == "<mailto:news@lists.test>"
            assert fields["list-subscribe"] == "<mailto:news-subscribe@lists.test>"
            assert fields["list-unsubscribe-post"] == "List-Unsubscribe=One-Click"
            assert fields["precedence"] == "list" and "x-mta-rcpt-token" not in fields
            web, mailto = fields["list-unsubscribe"].split(", ")
            assert mailto == "<mailto:news-unsubscribe@lists.test>"
            assert web.startswith("<https://lists.example/unsub?l=news@lists.test&n=1&a=")
            assert f"&a={r}&t=" in web, web  # the recipient's own address, its case kept
            urls[r] = web.strip("<>")
        assert len(set(urls.values())) == 40
        # one-click: a GET only shows the button; the POST unsubscribes V3 and says goodbye
        url = urls["V3@two.test"]
        page = _oneclick(lists, "GET", url)
        assert page.startswith("Status: 200") and 'value="One-Click"' in page
        assert "V3@two.test" in _subscribers(cfg)
        forged = url[:-1] + ("a" if url[-1] != "a" else "b")
        assert _oneclick(lists, "POST", forged, b"List-Unsubscribe=One-Click").startswith(
            "Status: 403")
        other = url.replace("a=V3@two.test", "a=V4@two.test")  # V3's token for V4
        assert _oneclick(lists, "POST", other, b"List-Unsubscribe=One-Click").startswith(
            "Status: 403")
        assert "V4@two.test" in _subscribers(cfg) and "V3@two.test" in _subscribers(cfg)
        done = _oneclick(lists, "POST", url, b"List-Unsubscribe=One-Click")
        assert done.startswith("Status: 200") and "has been unsubscribed" in done
        assert "V3@two.test" not in _subscribers(cfg) and len(_subscribers(cfg)) == 40
        two.wait_for(21, 60)
        goodbye = two.messages[-1]
        assert goodbye.rcpts == ["V3@two.test"] and "GOODBYE" in _text(goodbye.data)
        # the mta bounces bad@one.test to news-return-1-bad=one.test@ and ezlist records it
        lists.wait_until(lambda: _bouncing(cfg) == ["bad@one.test"], 60, "the bounce record")
        # a non-subscriber's post and a looping post are refused: bounced to their senders
        _smtp(lists, "stranger@home.test", [f"news@{HOST}"], post)
        looped = b"Delivered-To: mailing list news@lists.test\n" + post
        _smtp(lists, "u2@home.test", [f"news@{HOST}"], looped)
        home.wait_for(2, 60)
        texts = {m.rcpts[0]: _text(m.data) for m in home.messages}
        assert "only subscribers may post" in texts["stranger@home.test"]
        assert "already has my Delivered-To line" in texts["u2@home.test"]
        assert len(one.messages) + len(two.messages) == 41  # 40 copies and the goodbye
        # warning (bounces at the 550 too) -> probe (bounces) -> removed
        for _ in range(2):
            subprocess.run([EZLIST, "--root", str(lists.root), "moderate-expire", "news"],
                           check=True, capture_output=True, timeout=60)
            lists.wait_empty(60)
        lists.wait_until(lambda: "bad@one.test" not in _subscribers(cfg), 60, "the removal")
        with SubscriberDB(cfg.path / "subscribers.db") as db:
            [removal] = open_book(cfg, db).removed()
        assert removal.address == "bad@one.test"
        shown = subprocess.run([EZLIST, "--root", str(lists.root), "bounces", "news"],
                               capture_output=True, text=True, check=True, timeout=60).stdout
        assert "bad@one.test" in shown and "removed" in shown, shown


def _bouncing(cfg) -> list[str]:
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        return [b.address for b in open_book(cfg, db).bouncing()]


PROGRESS = re.compile(r"\rdelivered \d+ deferred \d+ failed \d+ of 32  \d+/s  ETA (\d+s|\?)  \[\d+s\]")


def test_ezlist_send_shows_live_progress_then_status(lists, tmp_path):
    make_list(lists.root, f"letter@{HOST}", ListOptions())
    later = {"gone@three.test": "550 gone", "busy@three.test": "451 try later"}
    with Sink("127.0.1.36", rcpt_reply=later) as three:
        _route(lists, [("three.test", "127.0.1.36", three.port)])
        ezlist = [EZLIST, "--root", str(lists.root)]
        subs = "".join(f"r{i}@three.test\n" for i in range(30)) + "gone@three.test\nbusy@three.test\n"
        subprocess.run(ezlist + ["sub", "letter"], input=subs.encode(), check=True, timeout=60)
        eml = tmp_path / "letter.eml"
        eml.write_bytes(b"From: editor@three.test\nSubject: issue 1\n\nnews\n")
        lists.start()
        out = subprocess.run(ezlist + ["send", "letter", str(eml)], capture_output=True,
                             check=True, timeout=120).stdout.decode()  # bytes: keep the \r
        assert "post 1 queued as msg" in out and "for 32 subscribers" in out
        lines = PROGRESS.findall(out)
        assert lines, out  # at least one live line with counts, rate and ETA
        assert "delivered 30 deferred 1 failed 1 of 32" in out, out
        assert "every recipient tried; 1 deferred will be retried by the mta" in out, out
        three.wait_for(30, 60)
        shown = subprocess.run(ezlist + ["status", "letter", "1"], capture_output=True,
                               text=True, check=True, timeout=60).stdout
        assert "running" in shown and "delivered 30, deferred 1, failed 1" in shown, shown
        assert "three.test" in shown and "550" in shown, shown
