"""RFC 8058 one-click unsubscribe: the web side's answers to good and bad requests."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from ezlist import fanout
from ezlist.listdir import ListOptions, make_list, read_key
from ezlist.oneclick import parse_query, post_key
from ezlist.oneclick_web import handle_request, serve_cgi
from ezlist.subscribers import SubscriberDB
from mta.queue import open_queue
from mta.rcpt_token import fill_for

ONE_CLICK = b"List-Unsubscribe=One-Click"
T0 = 1_800_000_000


@pytest.fixture
def news(root: Path):
    from mta.instance import init_instance
    init_instance(root, me="lists.local.test")
    cfg = make_list(root, "news@lists.local.test",
                    ListOptions(unsubscribe_url="https://lists.local.test/u"))
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        db.add_many(["Jo@ex.org", "ann@ex.org"], now=T0)
    (cfg.path / fanout.SENDS).mkdir()
    fanout.write_send_record(cfg.path, {"number": 5, "msg_id": 1, "queued": T0 + 10,
                                        "recipients": 2, "subject": "s", "bytes": 1})
    return cfg


def _query(cfg, number: int, address: str) -> str:
    fill = fill_for(post_key(read_key(cfg.path), number), [address]).decode()
    return f"l={cfg.address}&n={number}&{fill}"


def _members(cfg) -> list[str]:
    with SubscriberDB(cfg.path / "subscribers.db") as db:
        return list(db.iter_addresses())


def _queued(root: Path) -> list[tuple]:
    conn = open_queue(root)
    try:
        return conn.execute("SELECT addr FROM recipients").fetchall()
    finally:
        conn.close()


def test_post_unsubscribes_and_mails_goodbye_get_does_not(root, news):
    q = _query(news, 5, "Jo@ex.org")
    assert parse_query(q).address == "Jo@ex.org"
    got = handle_request(root, "GET", q, b"", now=T0 + 20)
    assert got.status == 200 and got.form and _members(news) == ["Jo@ex.org", "ann@ex.org"]
    assert handle_request(root, "HEAD", q, b"", now=T0 + 20).status == 200
    done = handle_request(root, "POST", q, ONE_CLICK, now=T0 + 20)
    assert done.status == 200 and "has been unsubscribed" in done.text
    assert _members(news) == ["ann@ex.org"]
    assert _queued(root) == [("Jo@ex.org",)]  # the goodbye
    again = handle_request(root, "POST", q, ONE_CLICK, now=T0 + 30)
    assert again.status == 200 and "not subscribed" in again.text
    assert len(_queued(root)) == 1  # idempotent: no second mail


@pytest.mark.parametrize("mutate, status", [
    (lambda q: q.rsplit("&t=", 1)[0], 400),                       # token missing
    (lambda q: q.replace("n=5", "n=x"), 400),                     # bad number
    (lambda q: q.replace("a=Jo@ex.org", "a=not-an-address"), 400),
    (lambda q: q.replace("a=Jo@ex.org", "a=ann@ex.org"), 403),    # Jo's token for ann
    (lambda q: q.replace("n=5", "n=6"), 403),                     # another post
    (lambda q: q[:-1] + ("a" if q[-1] != "a" else "b"), 403),     # altered token
    (lambda q: q.replace("l=news@", "l=other@"), 404),
    (lambda q: q.replace("l=news@", "l=../news@"), 404),
])
def test_bad_requests_change_nothing(root, news, mutate, status):
    q = mutate(_query(news, 5, "Jo@ex.org"))
    assert handle_request(root, "POST", q, ONE_CLICK, now=T0 + 20).status == status
    assert _members(news) == ["Jo@ex.org", "ann@ex.org"] and _queued(root) == []


def test_post_must_say_one_click_and_other_methods_are_refused(root, news):
    q = _query(news, 5, "Jo@ex.org")
    assert handle_request(root, "POST", q, b"x=1", now=T0 + 20).status == 400
    assert handle_request(root, "DELETE", q, ONE_CLICK, now=T0 + 20).status == 405
    assert _members(news) == ["Jo@ex.org", "ann@ex.org"]


def test_token_of_a_post_older_than_a_new_subscription_is_stale(root, news):
    with SubscriberDB(news.path / "subscribers.db") as db:
        db.remove_many(["Jo@ex.org"], now=T0 + 100)
        db.add_many(["Jo@ex.org"], now=T0 + 200)  # subscribed again after post 5
    got = handle_request(root, "POST", _query(news, 5, "Jo@ex.org"), ONE_CLICK, now=T0 + 300)
    assert got.status == 403 and "news-unsubscribe@lists.local.test" in got.text
    assert "Jo@ex.org" in _members(news)


def test_cgi_response_and_html_escaping(root, news):
    out = io.BytesIO()
    env = {"REQUEST_METHOD": "GET", "QUERY_STRING": _query(news, 5, "Jo@ex.org") + "&x=<b>"}
    assert serve_cgi(root, env, io.BytesIO(), out) == 0
    head, _, page = out.getvalue().partition(b"\r\n\r\n")
    assert head.startswith(b"Status: 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n")
    assert b"Content-Length: %d" % len(page) in head
    assert b'name="List-Unsubscribe" value="One-Click"' in page and b"<b>" not in page
    post = io.BytesIO()
    env = {"REQUEST_METHOD": "POST", "QUERY_STRING": _query(news, 5, "Jo@ex.org"),
           "CONTENT_LENGTH": str(len(ONE_CLICK))}
    serve_cgi(root, env, io.BytesIO(ONE_CLICK + b"trailing junk"), post)
    assert post.getvalue().startswith(b"Status: 200 OK") and _members(news) == ["ann@ex.org"]


def test_archive_copy_has_no_post_key_the_queued_post_has(root, news):
    from ezlist.archive import read_archived
    from ezlist.listdir import edit_list
    cfg = edit_list(root, "news", archived=True)
    result = fanout.post_message(cfg, b"Subject: hi\n\nbody\n", root, now=T0 + 50)
    stored = read_archived(cfg.path, result.number)
    assert b"X-Mta-Rcpt-Token" not in stored and b"List-Unsubscribe-Post" in stored
    mess = (root / "queue" / "mess" / str(result.msg_id)).read_bytes()
    key = post_key(read_key(cfg.path), result.number).hex().encode()
    assert b"X-Mta-Rcpt-Token: " + key in mess


def test_damaged_send_record_is_a_temporary_503_and_changes_nothing(root, news):
    (news.path / fanout.SENDS / "5").write_text("{not json")
    got = handle_request(root, "POST", _query(news, 5, "Jo@ex.org"), ONE_CLICK, now=T0 + 20)
    assert got.status == 503 and "try again" in got.text
    assert _members(news) == ["Jo@ex.org", "ann@ex.org"] and _queued(root) == []
