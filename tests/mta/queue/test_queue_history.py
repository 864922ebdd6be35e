"""remove_message keeps a record: final counts in `finished`, failed rows in `failures`."""

from mta.queue import enqueue, open_queue, remove_message
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


def test_schema_upgrade_adds_history_tables(tmp_path):
    init_instance(tmp_path, "mx.test")
    conn = open_queue(tmp_path)
    conn.execute("DROP TABLE finished")
    conn.execute("PRAGMA user_version=1")
    conn.close()
    conn = open_queue(tmp_path)
    assert conn.execute("SELECT count(*) FROM finished").fetchone() == (0,)
