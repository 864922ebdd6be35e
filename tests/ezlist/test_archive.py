import multiprocessing
from pathlib import Path

import pytest

from ezlist.archive import (archive_path, archive_post, current_number, next_number,
                            read_archived)
from tests.ezlist.listenv import ListEnv


def _take_numbers(list_dir: str, count: int, out) -> None:
    out.put([next_number(Path(list_dir), 10) for _ in range(count)])


def test_numbering_and_cumulative_size(cfg):
    assert current_number(cfg.path) == 0
    assert next_number(cfg.path, 100) == 1
    assert next_number(cfg.path, 50) == 2
    assert (cfg.path / "num").read_text() == "2:150\n"


def test_numbers_are_unique_across_processes(cfg):
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_take_numbers, args=(str(cfg.path), 20, out)) for _ in range(3)]
    for p in procs:
        p.start()
    got = sorted(n for _ in procs for n in out.get(timeout=60))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0, "a numbering process failed"
    assert got == list(range(1, 61))
    assert (cfg.path / "num").read_text() == "60:600\n"


def test_archive_layout(cfg):
    assert archive_path(cfg.path, 123) == cfg.path / "archive" / "1" / "23"
    assert archive_path(cfg.path, 5) == cfg.path / "archive" / "0" / "05"
    archive_post(cfg.path, 123, b"raw\r\nbytes")
    assert read_archived(cfg.path, 123) == b"raw\r\nbytes"
    with pytest.raises(ValueError):
        archive_path(cfg.path, 0)


def test_corrupt_num_is_reported(cfg):
    (cfg.path / "num").write_text("x:y\n")
    with pytest.raises(ValueError, match="num"):
        next_number(cfg.path, 1)


# A post as a DKIM-signing MUA sends it: CRLF, a folded signature, 8-bit body, a
# body line that looks like a header, and fields the list replaces.
SIGNED = (b"From: alice@a.test\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nMessage-ID: <m1@a.test>\r\n"
          b"DKIM-Signature: v=1; a=rsa-sha256; d=a.test;\r\n\tb=abc\r\n"
          b"Precedence: bulk\r\nList-Id: <other.x.test>\r\n"
          b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
          b"caf\xc3\xa9 line one\r\n\r\n--\r\nFrom the body, not a header\r\n")


def test_archive_copy_is_the_distributed_post_without_the_private_field(tmp_path):
    env = ListEnv(tmp_path, archived=True, prefix="[news #]",
                  unsubscribe_url="https://lists.test/u")
    env.subscribe("bob@b.test")
    assert env.deliver("news", "alice@a.test", SIGNED).code == 0
    [queued] = env.take()
    copy = read_archived(env.cfg.path, 1)
    head, _, body = copy.partition(b"\r\n\r\n")
    assert body == SIGNED.partition(b"\r\n\r\n")[2]  # body byte for byte
    fields = head.split(b"\r\n")
    for added in (b"Mailing-List: contact news-help@lists.local.test; run by ezlist",
                  b"List-Id: <news.lists.local.test>", b"Precedence: list",
                  b"Delivered-To: mailing list news@lists.local.test",
                  b"List-Post: <mailto:news@lists.local.test>",
                  b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
                  b"Subject: [news 1] =?utf-8?q?caf=C3=A9?="):
        assert added in fields, added
    assert b"DKIM-Signature: v=1; a=rsa-sha256; d=a.test;\r\n\tb=abc\r\n" in copy
    assert b"From: alice@a.test" in fields and b"Message-ID: <m1@a.test>" in fields
    assert b"Precedence: bulk" not in copy and b"other.x.test" not in copy
    # the subscribers' copy differs only by the per-recipient token field (no post key kept)
    private = [f for f in queued.body.split(b"\r\n") if f.startswith(b"X-Mta-Rcpt-Token:")]
    assert len(private) == 1 and b"X-Mta-Rcpt-Token" not in copy
    assert queued.body.replace(private[0] + b"\r\n", b"", 1) == copy


def test_unarchived_list_keeps_no_copy(tmp_path):
    env = ListEnv(tmp_path)
    env.subscribe("bob@b.test")
    assert env.deliver("news", "alice@a.test", SIGNED).code == 0
    assert len(env.take()) == 1 and current_number(env.cfg.path) == 1
    assert not (env.cfg.path / "archive").exists()
