"""The Python injection API: enqueue, write_body/commit_body, remove_message."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from mta.queue import (
    AddressTooLong, EnvelopeFormatError, ReadError, enqueue, message_path, open_queue,
    qmail_received, remove_message,
)
from queue_shim import assert_queue_empty, files, messages, recipients


def test_enqueue_bytes_streams_recipients_and_stores_them_as_given(root: Path) -> None:
    consumed = []

    def rcpts():  # a generator: enqueue must not need a list
        for addr in ("Alice@Example.ORG", "bob@example.org", "postmaster"):
            consumed.append(addr)
            yield addr

    msg_id = enqueue(root, "list-return-@lists.test-@[]", rcpts(), b"Subject: x\n\nhi\n",
                     received=b"Received: test\n")
    assert consumed == ["Alice@Example.ORG", "bob@example.org", "postmaster"]
    assert message_path(root, msg_id).read_bytes() == b"Received: test\nSubject: x\n\nhi\n"
    assert messages(root) == [(msg_id, "list-return-@lists.test-@[]", 30, 3)]
    conn = open_queue(root)
    try:
        rows = conn.execute("SELECT addr, domain, state, next_try, attempts FROM recipients"
                            " ORDER BY id").fetchall()
        qp, uid = conn.execute("SELECT qp, uid FROM messages").fetchone()
    finally:
        conn.close()
    assert rows == [("Alice@Example.ORG", "example.org", 0, 0.0, 0),
                    ("bob@example.org", "example.org", 0, 0.0, 0), ("postmaster", "", 0, 0.0, 0)]
    assert (qp, uid) == (os.getpid(), os.getuid())
    assert files(root, "tmp") == []


def test_enqueue_binary_file_and_reused_connection(root: Path, tmp_path: Path) -> None:
    big = (b"x" * 1000 + b"\n") * 300  # larger than one copy chunk
    conn = open_queue(root)
    try:
        first = enqueue(root, "", ["a@b.test"], io.BytesIO(big), conn=conn)
        with open(tmp_path / "m", "wb") as f:
            f.write(b"second\n")
        with open(tmp_path / "m", "rb") as f:
            second = enqueue(root, "s@x.test", iter(["c@d.test"]), f, conn=conn)
    finally:
        conn.close()
    assert second > first
    assert message_path(root, first).read_bytes() == big
    assert message_path(root, second).read_bytes() == b"second\n"
    assert [m[1] for m in messages(root)] == ["", "s@x.test"]


@pytest.mark.parametrize("sender, rcpts, error, code", [
    ("a@b", ["ok@x", ""], EnvelopeFormatError, 91),
    ("a@b", ["ok@x", "bad\0nul@x"], EnvelopeFormatError, 91),
    ("a@b", ["ok@x", "x" * 1003], AddressTooLong, 11),
    ("a@b", ["ok@x", "\u00e9" * 502], AddressTooLong, 11),  # 1004 UTF-8 bytes
    ("x" * 1003, ["ok@x"], AddressTooLong, 11),
    ("a@b", ["ok@x", "bad\udcff@x"], EnvelopeFormatError, 91),  # not encodable
])
def test_bad_addresses_leave_nothing(root: Path, sender, rcpts, error, code) -> None:
    with pytest.raises(error) as exc:
        enqueue(root, sender, iter(rcpts), b"body\n")
    assert exc.value.exit_code == code
    assert exc.value.permanent == (code == 11)
    assert_queue_empty(root)
    assert files(root, "tmp") == []


def test_longest_address_is_accepted(root: Path) -> None:
    addr = "a" * 990 + "@example.org"  # 1002 bytes: qmail's limit
    msg_id = enqueue(root, addr, [addr], b"m\n")
    assert recipients(root, msg_id) == [addr]


def test_unreadable_message_is_a_read_error(root: Path, tmp_path: Path) -> None:
    # A file object over a write-only descriptor: the kernel refuses read() (EBADF).
    fd = os.open(tmp_path / "wo", os.O_WRONLY | os.O_CREAT, 0o600)
    with io.FileIO(fd, "r") as unreadable:
        with pytest.raises(ReadError) as exc:
            enqueue(root, "a@b", ["c@d"], unreadable)
    assert exc.value.exit_code == 54
    assert_queue_empty(root)
    assert files(root, "tmp") == []


def test_remove_message_deletes_rows_then_file_and_ids_are_not_reused(root: Path) -> None:
    first = enqueue(root, "a@b", ["c@d", "e@f"], b"1\n")
    conn = open_queue(root)
    try:
        remove_message(root, conn, first)
        remove_message(root, conn, first)  # idempotent
    finally:
        conn.close()
    assert_queue_empty(root)
    second = enqueue(root, "a@b", ["c@d"], b"2\n")
    assert second > first


def test_qmail_received_line_format() -> None:
    line = qmail_received(1234, 1000, 812090814.0)  # 1995-09-26 04:46:54 UTC
    assert line == b"Received: (qmail 1234 invoked by uid 1000); 26 Sep 1995 04:46:54 -0000\n"
