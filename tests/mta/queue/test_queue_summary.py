"""queue_summary / message_counts / top_domains / queue_totals."""

from __future__ import annotations

from pathlib import Path

from mta.queue import (
    BOUNCED, DEFERRED, DELIVERED, FAILED, MessageSummary, enqueue, message_counts,
    open_queue, queue_summary, queue_totals, top_domains,
)


def test_counts_by_state_and_top_domains(root: Path) -> None:
    rcpts = [f"u{i}@{d}" for i, d in enumerate(["a.test"] * 5 + ["b.test"] * 3 + ["c.test"] * 2
                                                 + ["d.test"])]
    first = enqueue(root, "s@x", rcpts, b"m\n")
    second = enqueue(root, "", ["x@e.test"], b"bounce\n")
    conn = open_queue(root)
    try:
        with conn:
            for rid, state in ((1, DEFERRED), (2, DELIVERED), (3, DELIVERED), (6, FAILED),
                               (7, BOUNCED)):
                conn.execute("UPDATE recipients SET state = ? WHERE id = ?", (state, rid))
        assert message_counts(conn, first) == {
            "pending": 6, "deferred": 1, "delivered": 2, "failed": 2}
        # Still to do: a.test 3 (u0 deferred, u3, u4), c.test 2, b.test 1, d.test 1.
        assert top_domains(conn, first, 3) == (("a.test", 3), ("c.test", 2), ("b.test", 1))
        summary = queue_summary(conn, top=1)
        totals = queue_totals(conn)
    finally:
        conn.close()
    assert [type(s) for s in summary] == [MessageSummary, MessageSummary]
    assert (summary[0].id, summary[0].sender, summary[0].nrcpt) == (first, "s@x", 11)
    assert summary[0].top_domains == (("a.test", 3),)
    assert summary[1].id == second and summary[1].counts["pending"] == 1
    assert totals == {"messages": 2, "pending": 7, "deferred": 1, "delivered": 2, "failed": 2}


def test_empty_queue(root: Path) -> None:
    conn = open_queue(root)
    try:
        assert queue_summary(conn) == []
        assert queue_totals(conn) == {"messages": 0, "pending": 0, "deferred": 0,
                                      "delivered": 0, "failed": 0}
        assert message_counts(conn, 99) == {"pending": 0, "deferred": 0, "delivered": 0,
                                            "failed": 0}
    finally:
        conn.close()
