"""remove_message(s) keeps a record: final counts in `finished`, failed rows in `failures`;
remove_messages ends a whole group in one commit."""

from mta.queue import enqueue, open_queue, remove_message, remove_messages
from mta.instance import init_instance


def test_finished_message_leaves_counts_and_failures(tmp_path):
    init_instance(tmp_path, "mx.test")
    msg = enqueue(tmp_path, "s@mx.test", ["a@x.test", "b@y.test", "c@y.test"], b"\nhi\n")
    conn = open_queue(tmp_path)
    with conn:
        conn.execute("UPDATE recipients SET state = 2 WHERE addr = 'a@x.test'")
        conn.execute("UPDATE recipients SET state = 4, text = '550 no' WHERE addr = 'b@y.test'")
        conn.execute("UPDATE recipients SET state = 3, text = '554 gone' WHERE addr = 'c@y.test'")
    remove_message(tmp_path, conn, msg)
    row = conn.execute("SELECT sender, nrcpt, delivered, failed FROM finished WHERE id = ?",
                       (msg,)).fetchone()
    assert row == ("s@mx.test", 3, 1, 2)
    fails = conn.execute("SELECT addr, domain, text FROM failures WHERE msg = ? ORDER BY addr",
                         (msg,)).fetchall()
    assert fails == [("b@y.test", "y.test", "550 no"), ("c@y.test", "y.test", "554 gone")]
    assert conn.execute("SELECT count(*) FROM recipients").fetchone()[0] == 0
    assert not (tmp_path / "queue" / "mess" / str(msg)).exists()


def test_a_group_of_finished_messages_is_removed_in_one_commit(tmp_path):
    init_instance(tmp_path, "mx.test")
    ids = [enqueue(tmp_path, "s@mx.test", [f"r{i}@x.test"], b"\nhi\n") for i in range(40)]
    keep = enqueue(tmp_path, "s@mx.test", ["k@x.test"], b"\nstays\n")
    conn = open_queue(tmp_path)
    with conn:
        conn.execute("UPDATE recipients SET state = 2")
        conn.execute("UPDATE recipients SET state = 3, text = '554 gone' WHERE addr = 'r7@x.test'")
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    remove_messages(tmp_path, conn, ids)
    conn.set_trace_callback(None)
    assert [s for s in statements if s.upper().startswith(("COMMIT", "BEGIN"))] == [
        "BEGIN IMMEDIATE", "COMMIT"]
    assert conn.execute("SELECT id FROM messages").fetchall() == [(keep,)]
    assert conn.execute("SELECT count(*), sum(delivered), sum(failed) FROM finished"
                        ).fetchone() == (40, 39, 1)
    assert conn.execute("SELECT addr FROM failures").fetchall() == [("r7@x.test",)]
    mess = tmp_path / "queue" / "mess"
    assert sorted(p.name for p in mess.iterdir()) == [str(keep)]
    remove_messages(tmp_path, conn, ids)  # again (a retry after a crash): nothing changes
    assert conn.execute("SELECT count(*) FROM finished").fetchone() == (40,)


def test_schema_upgrade_adds_history_tables(tmp_path):
    init_instance(tmp_path, "mx.test")
    conn = open_queue(tmp_path)
    conn.execute("DROP TABLE finished")
    conn.execute("PRAGMA user_version=1")
    conn.close()
    conn = open_queue(tmp_path)
    assert conn.execute("SELECT count(*) FROM finished").fetchone() == (0,)
