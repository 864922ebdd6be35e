"""The ezlist command through click's runner, against a real instance folder."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.ezlist_cmd import main
from ezlist import deliver, fanout, returns, status
from ezlist.listdir import ListOptions, load_list
from mta.instance import init_instance
from mta.queue import open_queue


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "inst"
    init_instance(r, "mx.test")
    return r


def run(root, *args, input=None, code=0):
    result = CliRunner().invoke(main, ["--root", str(root), *args], input=input)
    assert result.exit_code == code, (result.output, result.exception)
    return result.output


def test_make_sub_list_count_unsub_edit(root):
    out = run(root, "make", "news@lists.test", "--archived", "--prefix", "[n #]",
              "--moderator", "m@x.test", "--owner", "boss@x.test")
    assert "made news@lists.test" in out
    assert (root / "alias" / ".qmail-news").read_text().startswith("|")
    assert (root / "alias" / ".qmail-news-owner").read_text() == "&boss@x.test\n"
    assert "added 2, unchanged 0, invalid 1" in run(root, "sub", "news", input="a@x.test\nb@Y.TEST\nbad\n")
    assert "added 0, unchanged 1" in run(root, "sub", "news", "a@x.test")
    assert run(root, "count", "news") == "2\n"
    assert run(root, "list", "news") == "a@x.test\nb@y.test\n"
    assert "removed 1" in run(root, "unsub", "news", "a@x.test")
    assert run(root, "list", "news") == "b@y.test\n"
    run(root, "edit", "news", "--not-archived", "--private", "--max-size", "1000")
    cfg = load_list(root, "news")
    assert not cfg.options.archived and not cfg.options.public
    assert cfg.options.max_message_size == 1000 and cfg.options.prefix == "[n #]"
    assert run(root, "moderators", "news", "list") == "m@x.test\n"
    assert run(root, "moderators", "news", "add", "n@x.test") == "m@x.test\nn@x.test\n"
    assert run(root, "moderators", "news", "remove", "m@x.test") == "n@x.test\n"


def test_errors_exit_100(root):
    assert "no such list" in run(root, "count", "nolist", code=100)
    run(root, "make", "news@lists.test")
    assert "already exists" in run(root, "make", "news@lists.test", code=100)
    assert "https" in run(root, "edit", "news", "--unsubscribe-url", "http://x", code=100)
    assert "not an address" in run(root, "moderators", "news", "add", "junk", code=100)


def test_send_no_wait_and_status_from_queue_then_log(root, tmp_path):
    run(root, "make", "news@lists.test")
    run(root, "sub", "news", "a@x.test", "b@y.test", "c@y.test")
    eml = tmp_path / "p.eml"
    eml.write_bytes(b"Subject: letter\n\nhi\n")
    out = run(root, "send", "news", str(eml), "--no-wait")
    assert "post 1 queued as msg" in out and "for 3 subscribers" in out
    shown = run(root, "status", "news")
    assert "post 1" in shown and "running" in shown and "pending 3" in shown
    cfg = load_list(root, "news")
    msg_id = fanout.read_send_record(cfg.path, 1)["msg_id"]
    # the scheduler's results: one delivered, two failed at y.test, then the message leaves
    conn = open_queue(root)
    with conn:
        conn.execute("UPDATE recipients SET state = 2 WHERE msg = ? AND addr = 'a@x.test'",
                     (msg_id,))
        conn.execute("UPDATE recipients SET state = 4, text = '550 no such user' "
                     "WHERE msg = ? AND domain = 'y.test'", (msg_id,))
    shown = run(root, "status", "news", "1")
    assert "delivered 1" in shown and "failed 2" in shown
    assert "2  y.test  550 no such user" in shown
    with conn:
        conn.execute("DELETE FROM recipients WHERE msg = ?", (msg_id,))
        conn.execute("DELETE FROM messages WHERE id = ?", (msg_id,))
    conn.close()
    (root / "log" / "send").write_text(
        f"@1.0 starting delivery 1: msg {msg_id} to remote a@x.test\n"
        "@1.1 delivery 1: success: 127.0.0.1_accepted_message./\n"
        f"@1.2 starting delivery 2: msg {msg_id} to remote b@y.test\n"
        f"@1.3 starting delivery 3: msg {msg_id + 1} to remote z@z.test\n"
        "@1.4 delivery 2: failure: 550_no_such_user/\n"
        "@1.5 delivery 3: failure: not_ours/\n"
        f"@1.6 starting delivery 1: msg {msg_id} to remote c@y.test\n"
        "@1.7 delivery 1: failure: 550_no_such_user/\n")
    final = status.send_status(cfg, root, 1)
    assert not final.in_queue
    assert (final.progress.delivered, final.progress.failed) == (1, 2)
    assert final.failures == ((("y.test", "550_no_such_user"), 2),)
    assert "finished" in run(root, "status", "news")
    (root / "log" / "send").unlink()  # the summary was saved in the record
    assert status.send_status(cfg, root, 1).failures == final.failures


def test_send_refuses_a_looping_file(root, tmp_path):
    run(root, "make", "news@lists.test")
    eml = tmp_path / "p.eml"
    eml.write_bytes(b"Delivered-To: mailing list news@lists.test\nSubject: x\n\nhi\n")
    assert "looping" in run(root, "send", "news", str(eml), code=100)


def test_bounces_and_moderate_expire(root):
    run(root, "make", "news@lists.test", "--bounce-timeout", "0", "--bounce-threshold", "1")
    run(root, "sub", "news", "a@x.test")
    from ezlist import deliver
    cfg = load_list(root, "news")
    reply = deliver.run(cfg.path, {"MTA_ROOT": str(root), "SENDER": "",
                                   "LOCAL": "news-return-1-a=x.test"}, b"Subject: f\n\nx\n")
    assert reply.code == 99
    assert "a@x.test bouncing bounces=1" in run(root, "bounces", "news")
    assert "sent 1 bounce notices" in run(root, "moderate-expire", "news")
    assert "a@x.test warned" in run(root, "bounces", "news")


# ezlist make option -> (file in lists/NAME/, its contents; None = an empty flag file)
MAKE_OPTIONS = [
    (["--moderated"], "modpost", None),
    (["--subscribers-only"], "subonly", None),
    (["--moderate-subscriptions"], "modsub", None),
    (["--trailer", "-- \nnews, weekly\n"], "text/trailer", "-- \nnews, weekly\n"),
    (["--unsubscribe-url", "https://lists.test/u"], "unsuburl", "https://lists.test/u\n"),
    (["--prefix", "[news #]"], "prefix", "[news #]\n"),
    (["--max-size", "5000"], "msgsize", "5000:0\n"),
]


@pytest.mark.parametrize("args, name, text", MAKE_OPTIONS, ids=[a[0] for a, _, _ in MAKE_OPTIONS])
def test_make_option_writes_its_list_file(root, args, name, text):
    run(root, "make", "plain@lists.test")
    run(root, "make", "news@lists.test", *args)
    plain, news = root / "lists" / "plain", root / "lists" / "news"
    if text is None:
        assert (news / name).read_bytes() == b"" and not (plain / name).exists()
    else:
        assert (news / name).read_text() == text
        assert not (plain / name).exists() or (plain / name).read_text() != text


def test_make_private_removes_the_public_flag(root):
    run(root, "make", "plain@lists.test")
    run(root, "make", "news@lists.test", "--private")
    assert (root / "lists" / "plain" / "public").exists()
    assert not (root / "lists" / "news" / "public").exists()
    assert not load_list(root, "news").options.public


def test_make_all_options_then_edit_them_back(root):
    run(root, "make", "news@lists.test", "--private",
        *[word for args, _, _ in MAKE_OPTIONS for word in args])
    assert load_list(root, "news").options == ListOptions(
        moderated=True, subscribers_only=True, moderate_subscriptions=True, public=False,
        trailer="-- \nnews, weekly\n", unsubscribe_url="https://lists.test/u",
        prefix="[news #]", max_message_size=5000)
    assert "edited news@lists.test" in run(
        root, "edit", "news", "--not-moderated", "--anyone-may-post", "--open-subscriptions",
        "--public", "--trailer", "", "--unsubscribe-url", "", "--prefix", "", "--max-size", "0")
    news = root / "lists" / "news"
    for flag in ("modpost", "subonly", "modsub", "text/trailer"):
        assert not (news / flag).exists(), flag
    assert (news / "public").exists()
    assert [(news / f).read_text() for f in ("unsuburl", "prefix", "msgsize")] == \
        ["\n", "\n", "0:0\n"]
    assert load_list(root, "news").options == ListOptions()
    run(root, "edit", "news", "--moderated", "--prefix", "[n]")  # edit sets them, too
    news_opts = load_list(root, "news").options
    assert news_opts.moderated and news_opts.prefix == "[n]" and news_opts.public


def test_unsub_reads_addresses_from_stdin(root):
    run(root, "make", "news@lists.test")
    run(root, "sub", "news", "a@x.test", "b@y.test", "c@z.test", "d@z.test")
    out = run(root, "unsub", "news", input="a@x.test\n\n  b@Y.TEST  \nnobody@x.test\nbad\nd@z.test")
    assert "removed 3, unchanged 1, invalid 1" in out
    assert run(root, "list", "news") == "c@z.test\n"


def _bounce(cfg, root, local, now):
    env = {"MTA_ROOT": str(root), "SENDER": "", "LOCAL": local}
    reply = deliver.run(cfg.path, env, b"Subject: failure notice\n\n550 no\n", now)
    assert reply.code == 99, reply.text
    return reply


def _notice_sender(root, since):
    conn = open_queue(root)
    try:
        row = conn.execute("SELECT sender FROM messages WHERE id > ? ORDER BY id DESC",
                           (since,)).fetchone()
        return row[0].rpartition("@")[0], conn.execute("SELECT max(id) FROM messages").fetchone()[0]
    finally:
        conn.close()


def test_bounces_shows_a_removed_address_with_its_reason(root):
    run(root, "make", "news@lists.test", "--bounce-timeout", "100", "--bounce-threshold", "1")
    run(root, "sub", "news", "dora@d.test", "stay@d.test")
    cfg = load_list(root, "news")
    t = 1_700_000_000
    _bounce(cfg, root, "news-return-3-dora=d.test", t)
    assert returns.send_due_notices(cfg, root, t + 150, force=True) == 1
    warn, last = _notice_sender(root, 0)
    assert warn.startswith("news-return-warn-")
    _bounce(cfg, root, warn, t + 151)
    assert returns.send_due_notices(cfg, root, t + 300, force=True) == 1
    probe, _ = _notice_sender(root, last)
    assert probe.startswith("news-return-probe-")
    assert "removed" in _bounce(cfg, root, probe, t + 301).text
    shown = run(root, "bounces", "news").splitlines()
    assert shown == [f"dora@d.test removed at={t + 301} reason=bounce probe bounced"]
    assert run(root, "list", "news") == "stay@d.test\n"
