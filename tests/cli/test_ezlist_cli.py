"""The ezlist command through click's runner, against a real instance folder."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.ezlist_cmd import main
from ezlist import fanout, status
from ezlist.listdir import load_list
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
