"""ezlist.deliver + ezlist.manage in-process against a real queue: email commands.

Covers the "List manager" rows LS1, LS2, LS3, LS5, LS6 of security-matrix.md,
double opt-in, welcome/goodbye texts, idempotent answers, loops, private lists.
"""

from __future__ import annotations

import time

import pytest

from ezlist import cookies
from ezlist.addresses import confirm_address
from ezlist.listdir import read_key

from tests.ezlist.listenv import ListEnv, reply_local

NOW = int(time.time())


@pytest.fixture
def env(tmp_path):
    return ListEnv(tmp_path)


def _subscribe(env: ListEnv, address: str) -> None:
    box, dom = address.split("@")
    assert env.deliver(f"news-subscribe-{box}={dom}", address).code == 0
    [confirm] = env.take()
    assert env.deliver(reply_local(confirm), address).code == 0
    [welcome] = env.take()
    assert welcome.header("Subject") == "WELCOME to news@lists.local.test"


def test_subscribe_confirm_welcome_and_reply_sender(env):
    reply = env.deliver("news-subscribe", "Alice@Example.ORG")
    assert reply.code == 0
    [confirm] = env.take()
    assert confirm.rcpts == ["Alice@example.org"]
    assert confirm.sender == "news-return-@lists.local.test"
    assert reply_local(confirm).startswith("news-sc.")
    assert reply_local(confirm) in confirm.text  # also named in the body
    assert env.subscribers() == []  # nothing before the confirmation
    assert env.deliver(reply_local(confirm), "whoever@else.test").code == 0
    assert env.subscribers() == ["Alice@example.org"]
    [welcome] = env.take()
    assert welcome.rcpts == ["Alice@example.org"]
    assert "now receives the news@lists.local.test mailing list" in welcome.text


def test_subscribe_twice_is_friendly_and_replay_is_refused(env):
    _subscribe(env, "bob@b.test")
    assert env.deliver("news-subscribe", "bob@b.test").code == 0
    [confirm] = env.take()
    assert env.deliver(reply_local(confirm), "bob@b.test").code == 0
    [nop] = env.take()
    assert "was already on the news@lists.local.test list" in nop.text
    # the same cookie again: consumed, so refused and a fresh confirmation is sent
    assert env.deliver(reply_local(confirm), "bob@b.test").code == 0
    [fresh] = env.take()
    assert "not valid, had expired or had been used" in fresh.text
    assert reply_local(fresh) != reply_local(confirm)


def test_unsubscribe_confirm_goodbye_and_nonmember(env):
    _subscribe(env, "carol@c.test")
    assert env.deliver("news-unsubscribe", "carol@c.test").code == 0
    [confirm] = env.take()
    assert reply_local(confirm).startswith("news-uc.")
    assert env.subscribers() == ["carol@c.test"]
    env.deliver(reply_local(confirm), "carol@c.test")
    assert env.subscribers() == []
    [goodbye] = env.take()
    assert goodbye.header("Subject") == "GOODBYE from news@lists.local.test"
    env.deliver("news-unsubscribe", "nobody@c.test")
    [confirm] = env.take()
    env.deliver(reply_local(confirm), "nobody@c.test")
    [nop] = env.take()
    assert "was not on the news@lists.local.test list" in nop.text


def test_ls1_forged_subscribe_confirmation_goes_to_victim_only(env):
    reply = env.deliver("news-subscribe-victim=other.example", "attacker@t.example")
    assert reply.code == 0
    msgs = env.take()
    assert [m.rcpts for m in msgs] == [["victim@other.example"]]
    assert all("attacker" not in r for m in msgs for r in m.rcpts)
    assert env.subscribers() == []


def test_ls5_unsubscribe_someone_else(env):
    _subscribe(env, "alice@local.test")
    env.deliver("news-unsubscribe-alice=local.test", "attacker@t.example")
    [confirm] = env.take()
    assert confirm.rcpts == ["alice@local.test"]
    assert reply_local(confirm).startswith("news-uc.")
    assert env.subscribers() == ["alice@local.test"]


def _token(env, kind, address, when):
    return cookies.make_cookie(read_key(env.cfg.path), env.cfg.address, kind, address, when)


def _confirm_local(env, kind, token, address):
    return confirm_address("news", "lists.local.test", kind, token, address).rpartition("@")[0]


@pytest.mark.parametrize("case", ["other_address", "wrong_kind", "altered", "expired", "future"])
def test_ls2_ls3_bad_cookies_change_nothing_and_reconfirm(env, case):
    now = NOW
    if case == "other_address":  # alice's cookie at bob's address
        local = _confirm_local(env, "sc", _token(env, "sc", "alice@local.test", now - 5),
                               "bob@local.test")
    elif case == "wrong_kind":  # a uc cookie used at an sc address
        token = _token(env, "uc", "bob@local.test", now - 5)
        local = _confirm_local(env, "sc", token, "bob@local.test")
    elif case == "altered":
        token = _token(env, "sc", "bob@local.test", now - 5)
        t, mac = token.split(".")
        local = _confirm_local(env, "sc", f"{t}.{'a' if mac[0] != 'a' else 'b'}{mac[1:]}",
                               "bob@local.test")
    elif case == "expired":
        local = _confirm_local(env, "sc", _token(env, "sc", "bob@local.test", now - 1_000_001),
                               "bob@local.test")
    else:
        local = _confirm_local(env, "sc", _token(env, "sc", "bob@local.test", now + 60),
                               "bob@local.test")
    reply = env.deliver(local, "bob@local.test", now=now)
    assert reply.code == 0
    assert env.subscribers() == []
    [fresh] = env.take()
    assert fresh.rcpts == ["bob@local.test"]
    assert "not valid, had expired or had been used" in fresh.text
    good = reply_local(fresh)
    assert good.startswith("news-sc.") and good != local
    env.deliver(good, "bob@local.test", now=now)  # the fresh one works
    assert env.subscribers() == ["bob@local.test"]


@pytest.mark.parametrize("sender", ["", "#@[]", "no-at-sign"])
@pytest.mark.parametrize("local", ["news-subscribe", "news-help", "news-unsubscribe-a=b.test"])
def test_ls6_bounce_or_anonymous_requester(env, sender, local):
    reply = env.deliver(local, sender)
    assert reply.code == 100 and "(#5.7.2)" in reply.text
    assert env.take() == []
    assert env.subscribers() == []


def test_confirmation_from_bounce_sender_is_refused(env):
    env.deliver("news-subscribe", "dan@d.test")
    [confirm] = env.take()
    assert env.deliver(reply_local(confirm), "").code == 100
    assert env.subscribers() == []


def test_help_and_unknown_commands_answer_with_help(env):
    for local in ("news-help", "news-frobnicate", "news-subscribe-=bad"):
        assert env.deliver(local, "eve@e.test").code == 0
        [msg] = env.take()
        assert msg.rcpts == ["eve@e.test"]
        assert "news-subscribe@lists.local.test" in msg.text
    assert env.subscribers() == []


def test_replies_loop_back_refused(env):
    env.deliver("news-help", "eve@e.test")
    [msg] = env.take()
    reply = env.deliver("news-help", "eve@e.test", raw=msg.body)
    assert reply.code == 100 and "(#5.4.6)" in reply.text
    listmail = b"Mailing-List: contact other-help@x.test\nSubject: s\n\nb\n"
    assert env.deliver("news-subscribe", "eve@e.test", raw=listmail).code == 100
    assert env.take() == []


def test_private_list_serves_only_help(tmp_path):
    env = ListEnv(tmp_path, public=False)
    assert env.deliver("news-subscribe", "f@f.test").code == 100
    assert env.deliver("news-help", "f@f.test").code == 0
    assert len(env.take()) == 1


def test_moderated_subscription_needs_moderator_approval(tmp_path):
    env = ListEnv(tmp_path, moderate_subscriptions=True)
    from ezlist.moderate import change_moderators
    change_moderators(env.cfg.path, add=["mod@m.test"])
    env.deliver("news-subscribe", "gus@g.test")
    [confirm] = env.take()
    env.deliver(reply_local(confirm), "gus@g.test")
    [request] = env.take()
    assert request.rcpts == ["mod@m.test"]
    assert reply_local(request).startswith("news-tc.")
    assert env.subscribers() == []
    env.deliver(reply_local(request), "mod@m.test")
    assert env.subscribers() == ["gus@g.test"]
    [welcome] = env.take()
    assert welcome.rcpts == ["gus@g.test"]


def test_not_this_list_and_owner_without_alias(env):
    assert env.deliver("other", "a@b.test").code == 100
    reply = env.deliver("news-owner", "a@b.test")
    assert reply.code == 100 and "owner" in reply.text


def test_main_reads_stdin_and_exits_with_reply_code(env, monkeypatch, capsys):
    import io
    import sys

    from ezlist import deliver
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Subject: h\n\nx\n")))
    for k, v in {"MTA_ROOT": str(env.root), "SENDER": "", "LOCAL": "news-help"}.items():
        monkeypatch.setenv(k, v)
    assert deliver.main([str(env.cfg.path)]) == 100
    assert "bounce" in capsys.readouterr().out
