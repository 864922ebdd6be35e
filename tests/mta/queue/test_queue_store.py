"""Schema, pragmas, layout and index use of the queue database."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mta.queue import HomeError, QueueDirError, message_path, open_queue


def test_layout_and_pragmas(root: Path) -> None:
    q = root / "queue"
    for sub in ("mess", "tmp", "lock"):
        assert (q / sub).is_dir()
    mode = os.stat(q / "lock" / "trigger").st_mode
    assert stat.S_ISFIFO(mode) and stat.S_IMODE(mode) == 0o622
    conn = open_queue(root)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 60000
    finally:
        conn.close()
    assert message_path(root, 7) == q / "mess" / "7"


def test_schema_columns_are_the_agreed_ones(root: Path) -> None:
    conn = open_queue(root)
    try:
        cols = {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")]
                for t in ("messages", "recipients")}
    finally:
        conn.close()
    assert cols["messages"] == ["id", "sender", "bytes", "created", "qp", "uid", "nrcpt", "seen"]
    assert cols["recipients"] == ["id", "msg", "addr", "domain", "state", "next_try",
                                  "attempts", "text"]


def test_open_twice_is_idempotent(root: Path) -> None:
    open_queue(root).close()
    open_queue(root, create=False).close()


def test_scheduler_queries_use_the_indexes(root: Path) -> None:
    conn = open_queue(root)
    try:
        due = " ".join(r[3] for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT id, msg, addr FROM recipients"
            " WHERE state < 2 AND next_try <= ? ORDER BY next_try LIMIT 1000", (1.0,)))
        counts = " ".join(r[3] for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT state, count(*) FROM recipients WHERE msg = ?"
            " GROUP BY state", (1,)))
    finally:
        conn.close()
    assert "recipients_due" in due and "TEMP B-TREE" not in due, due
    assert "COVERING INDEX recipients_msg" in counts, counts


def test_missing_root_and_missing_queue(tmp_path: Path) -> None:
    with pytest.raises(HomeError) as exc:
        open_queue(tmp_path / "nope")
    assert exc.value.exit_code == 61
    with pytest.raises(QueueDirError) as exc:
        open_queue(tmp_path, create=False)
    assert exc.value.exit_code == 62 and not exc.value.permanent
