"""clean_queue never touches a live injection and removes every leftover; the trigger."""

from __future__ import annotations

import os
import select
import threading
from pathlib import Path

from mta.queue import (
    clean_queue, commit_body, drain_trigger, enqueue, message_path, open_queue, open_trigger,
    poke_trigger, write_body,
)
from queue_shim import files, messages, recipients


def test_live_tmp_file_is_kept_and_dead_one_removed(root: Path) -> None:
    live = write_body(root, b"live body\n")  # holds its flock, like a running injector
    dead = root / "queue" / "tmp" / "12345.1.0"  # nobody holds a lock on it
    dead.write_bytes(b"half a message")
    assert clean_queue(root) == 1
    assert files(root, "tmp") == [live.path.name]
    msg_id = commit_body(root, live, "a@b", ["c@d"])
    assert message_path(root, msg_id).read_bytes() == b"live body\n"
    assert files(root, "tmp") == []


def test_orphan_body_removed_committed_one_kept(root: Path) -> None:
    kept = enqueue(root, "a@b", ["c@d"], b"kept\n")
    orphan = message_path(root, kept + 5)
    orphan.write_bytes(b"no row for me")
    (root / "queue" / "mess" / "README").write_text("not ours, never deleted")
    assert clean_queue(root) == 1
    assert files(root, "mess") == sorted([str(kept), "README"])
    assert clean_queue(root) == 0


def test_orphan_with_a_reused_id_is_replaced_by_the_next_injection(root: Path) -> None:
    """A rolled-back injection frees its id; the next injector renames over the orphan."""
    message_path(root, 1).write_bytes(b"orphan of a dead injector")
    msg_id = enqueue(root, "a@b", ["c@d"], b"new\n")
    assert msg_id == 1 and message_path(root, 1).read_bytes() == b"new\n"
    assert clean_queue(root) == 0
    assert recipients(root, 1) == ["c@d"]


def test_cleaner_waits_for_an_injector_inside_its_transaction(root: Path) -> None:
    """Between its rename and its commit an injector's mess/N has no committed row;
    the cleaner must wait for the write lock, not delete the file."""
    body = write_body(root, b"slow\n")
    done = threading.Event()
    removed: list[int] = []
    in_mess: list[list[str]] = []

    def clean() -> None:
        removed.append(clean_queue(root))
        done.set()

    def rcpts():  # consumed inside the injector's transaction, after the rename
        yield "c@d"
        in_mess.append(files(root, "mess"))
        threading.Thread(target=clean, daemon=True).start()
        # A negative check, not synchronization: the cleaner must still be blocked.
        assert not done.wait(0.3), "cleaner ran inside the injector's transaction"
        yield "e@f"

    msg_id = commit_body(root, body, "a@b", rcpts())
    assert done.wait(30), "cleaner never finished after the commit"
    assert in_mess == [[str(msg_id)]] and removed == [0]
    assert message_path(root, msg_id).exists() and recipients(root, msg_id) == ["c@d", "e@f"]


def test_trigger_reader_sees_a_byte_after_commit(root: Path) -> None:
    fd = open_trigger(root)
    try:
        assert drain_trigger(fd) == 0
        enqueue(root, "a@b", ["c@d"], b"x\n")
        readable, _, _ = select.select([fd], [], [], 10)
        assert readable == [fd], "no wake-up byte on the trigger"
        assert drain_trigger(fd) == 1
    finally:
        os.close(fd)


def test_poke_without_reader_or_without_fifo_is_harmless(root: Path, tmp_path: Path) -> None:
    poke_trigger(root)  # ENXIO: nobody listening
    poke_trigger(tmp_path / "nowhere")  # ENOENT
    assert len(messages(root)) == 0
