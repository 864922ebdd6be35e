"""ezlist.deliver in-process against a real queue: posts, moderation, bounces.

Covers LS7, LS9, LS11 of security-matrix.md, the subscribers-only and loop
refusals, moderation (accept, reject, time out) and the bounce state machine
through the list's own return addresses.
"""

from __future__ import annotations

import json

import pytest

from ezlist import moderate, returns
from ezlist.archive import current_number

from tests.ezlist.listenv import ListEnv

POST = b"From: alice@a.test\nSubject: hello\nTo: news@lists.local.test\n\nbody text\n"


def test_post_is_one_queued_message_with_verp_and_list_headers(tmp_path):
    env = ListEnv(tmp_path, archived=True, prefix="[news #]")
    env.subscribe("alice@a.test", "bob@b.test", "carol@a.test")
    reply = env.deliver("news", "alice@a.test", POST)
    assert reply.code == 0, reply.text
    [msg] = env.take()
    assert msg.sender == "news-return-1-@lists.local.test-@[]"
    assert sorted(msg.rcpts) == ["alice@a.test", "bob@b.test", "carol@a.test"]
    assert msg.header("List-Id") == "<news.lists.local.test>"
    assert msg.header("List-Unsubscribe") == "<mailto:news-unsubscribe@lists.local.test>"
    assert msg.header("List-Post") == "<mailto:news@lists.local.test>"
    assert msg.header("Subject") == "[news 1] hello"
    assert msg.body.endswith(b"\n\nbody text\n")
    assert (env.cfg.path / "archive" / "0" / "01").exists()
    record = json.loads((env.cfg.path / "sends" / "1").read_text())
    assert record["msg_id"] == msg.id and record["recipients"] == 3


def test_post_without_subscribers_queues_nothing(tmp_path):
    env = ListEnv(tmp_path)
    assert env.deliver("news", "alice@a.test", POST).code == 0
    assert env.take() == []


def test_ls11_bounce_posted_to_the_list_is_not_distributed(tmp_path):
    env = ListEnv(tmp_path)
    env.subscribe("alice@a.test")
    for sender in ("", "#@[]"):
        reply = env.deliver("news", sender, POST)
        assert reply.code == 100 and "bounce" in reply.text
    assert env.take() == []


def test_post_with_our_delivered_to_is_refused(tmp_path):
    env = ListEnv(tmp_path)
    env.subscribe("alice@a.test")
    looped = b"Delivered-To: mailing list news@lists.local.test\n" + POST
    reply = env.deliver("news", "alice@a.test", looped)
    assert reply.code == 100 and "(#5.4.6)" in reply.text
    assert env.take() == []


@pytest.mark.parametrize("field", [
    b"Mailing-List: contact news-help@lists.local.test; run by ezlist",
    b"mailing-list: contact NEWS-help@Lists.Local.Test",  # any case, any wording around it
    b"Mailing-List:\n contact news-help@lists.local.test; run by ezlist",  # folded
])
def test_lp4_post_with_our_mailing_list_field_is_refused(tmp_path, field):
    env = ListEnv(tmp_path, archived=True)
    env.subscribe("alice@a.test", "bob@b.test")
    reply = env.deliver("news", "alice@a.test", field + b"\n" + POST)
    assert reply.code == 100, reply.text
    assert "my Mailing-List line (#5.4.6)" in reply.text
    assert env.take() == []  # nothing queued: no fan-out, no notice
    assert current_number(env.cfg.path) == 0  # not numbered, archived or recorded
    assert list((env.cfg.path / "archive").iterdir()) == []
    assert not (env.cfg.path / "sends").exists()
    # another list's Mailing-List field is no loop: that post goes out
    other = b"Mailing-List: contact other-help@else.test\n" + POST
    assert env.deliver("news", "alice@a.test", other).code == 0
    [post] = env.take()
    assert sorted(post.rcpts) == ["alice@a.test", "bob@b.test"]


def test_subscribers_only_refuses_non_subscribers(tmp_path):
    env = ListEnv(tmp_path, subscribers_only=True)
    env.subscribe("alice@a.test")
    reply = env.deliver("news", "mallory@m.test", POST)
    assert reply.code == 100 and "only subscribers" in reply.text
    assert env.take() == []
    assert env.deliver("news", "alice@A.TEST", POST).code == 0
    assert len(env.take()) == 1


def test_size_limit(tmp_path):
    env = ListEnv(tmp_path, max_message_size=50)
    env.subscribe("alice@a.test")
    reply = env.deliver("news", "alice@a.test", POST + b"x" * 100)
    assert reply.code == 100 and "(#5.2.3)" in reply.text


def _held(env, sender="poster@p.test"):
    moderate.change_moderators(env.cfg.path, add=["mod1@m.test", "mod2@m.test"])
    env.subscribe("alice@a.test")
    reply = env.deliver("news", sender, POST)
    assert reply.code == 0 and "held" in reply.text
    [request] = env.take()
    assert sorted(request.rcpts) == ["mod1@m.test", "mod2@m.test"]
    accept = request.header("Reply-To").rpartition("@")[0]
    assert accept.startswith("news-accept-")
    reject = "news-reject-" + accept[len("news-accept-"):]
    assert reject + "@lists.local.test" in request.text
    return accept, reject


def test_moderated_post_accept_distributes_once(tmp_path):
    env = ListEnv(tmp_path, moderated=True)
    accept, _ = _held(env)
    assert moderate.pending(env.cfg.path)
    reply = env.deliver(accept, "mod1@m.test")
    assert reply.code == 0 and "post 1" in reply.text
    [post] = env.take()
    assert post.sender == "news-return-1-@lists.local.test-@[]" and post.rcpts == ["alice@a.test"]
    again = env.deliver(accept, "mod2@m.test")
    assert again.code == 0 and "already handled" in again.text
    assert env.take() == []


def test_moderated_post_reject_notifies_poster(tmp_path):
    env = ListEnv(tmp_path, moderated=True)
    _, reject = _held(env)
    assert env.deliver(reject, "mod1@m.test").code == 0
    [notice] = env.take()
    assert notice.rcpts == ["poster@p.test"]
    assert "not accepted by the moderator" in notice.text
    assert moderate.pending(env.cfg.path) == []


def test_forged_accept_is_refused(tmp_path):
    env = ListEnv(tmp_path, moderated=True)
    accept, _ = _held(env)
    forged = accept[:-1] + ("a" if accept[-1] != "a" else "b")
    assert env.deliver(forged, "mod1@m.test").code == 100
    assert env.deliver(accept, "").code == 100  # a bounce never accepts
    assert env.take() == [] and moderate.pending(env.cfg.path)


def test_held_post_times_out_to_poster(tmp_path):
    env = ListEnv(tmp_path, moderated=True)
    _held(env)
    later = env.clock + 121 * 3600
    assert moderate.expire(env.cfg, env.root, later) == 1
    [notice] = env.take()
    assert notice.rcpts == ["poster@p.test"] and "not handled by a moderator" in notice.text
    assert moderate.pending(env.cfg.path) == []


def test_subscribers_only_moderated_list_holds_non_subscriber_posts(tmp_path):
    env = ListEnv(tmp_path, moderated=True, subscribers_only=True)
    _held(env, sender="stranger@s.test")


def test_ls7_forged_distribution_bounces_never_remove(tmp_path):
    env = ListEnv(tmp_path, bounce_timeout=100)
    env.subscribe("alice@local.test")
    for _ in range(50):
        assert env.deliver("news-return-12-alice=local.test", "anyone@x.test").code == 99
    assert env.subscribers() == ["alice@local.test"]
    # after the timeout, at most a warning goes to alice herself
    n = returns.send_due_notices(env.cfg, env.root, env.clock + 200, force=True)
    assert n == 1
    [warning] = env.take()
    assert warning.rcpts == ["alice@local.test"]
    assert warning.sender.startswith("news-return-warn-")
    assert env.subscribers() == ["alice@local.test"]


def test_ls9_bounce_for_non_subscriber_is_ignored(tmp_path):
    env = ListEnv(tmp_path)
    reply = env.deliver("news-return-12-nobody=other.example", "")
    assert reply.code == 99 and "not a subscriber" in reply.text
    with env.db() as db:
        assert returns.open_book(env.cfg, db).bouncing() == []
        assert db.conn.execute("SELECT count(*) FROM bounce_log").fetchone()[0] == 0


def test_warn_then_probe_bounce_removes(tmp_path):
    env = ListEnv(tmp_path, bounce_timeout=100, bounce_threshold=2)
    env.subscribe("dora@d.test", "stay@d.test")
    for _ in range(2):
        env.deliver("news-return-3-dora=d.test", "")
    t = env.clock + 150
    assert returns.send_due_notices(env.cfg, env.root, t, force=True) == 1
    [warning] = env.take()
    warn_local = warning.sender.rpartition("@")[0]
    assert env.deliver(warn_local, "", b"Subject: failure notice\n\nbounced\n", now=t + 1).code == 99
    assert returns.send_due_notices(env.cfg, env.root, t + 200, force=True) == 1
    [probe] = env.take()
    assert probe.sender.startswith("news-return-probe-") and probe.rcpts == ["dora@d.test"]
    reply = env.deliver(probe.sender.rpartition("@")[0], "", b"Subject: x\n\nbounced\n",
                        now=t + 201)
    assert "removed" in reply.text
    assert env.subscribers() == ["stay@d.test"]
    with env.db() as db:
        [removal] = returns.open_book(env.cfg, db).removed()
    assert removal.address == "dora@d.test"


QSBMF = (b"Subject: failure notice\n\nHi. This is the qmail-send program at mx.test.\n"
         b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
         b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
         b"<erin@e.test>:\n550 no such user\n\n--- Below this line is a copy of the message.\n\n"
         b"Subject: hi\n\nx\n")


@pytest.mark.parametrize("local", ["news-return-4-", "news-return-"])
def test_non_verp_bounce_is_parsed(tmp_path, local):
    env = ListEnv(tmp_path)
    env.subscribe("erin@e.test")
    reply = env.deliver(local, "", QSBMF)
    assert reply.code == 99 and "1 of 1" in reply.text
    with env.db() as db:
        [status] = returns.open_book(env.cfg, db).bouncing()
    assert status.address == "erin@e.test"


def test_delay_notice_is_weeded(tmp_path):
    env = ListEnv(tmp_path)
    env.subscribe("erin@e.test")
    reply = env.deliver("news-return-4-erin=e.test", "", b"Subject: deferral notice\n\nlater\n")
    assert reply.code == 99 and "ignored" in reply.text
