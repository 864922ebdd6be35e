"""Micro-benchmarks of the queue's injection path (pytest-benchmark, not tests).

    .venv/bin/python -m pytest -q benchmarks/bench_inject.py --benchmark-only

- enqueue of a 4 KB message to 1 recipient (in-process API, reused connection):
  the floor under every injection, three fsyncs (body, mess/, WAL).
- enqueue of one message to 100,000 recipients, with and without the scheduler's
  indexes, to show what the indexes cost per inserted row.
- envelope parsing alone (100,000 records), to separate parsing from SQLite.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mta.queue import enqueue, open_queue, read_envelope

MESSAGE = b"Subject: bench\n\n" + b"0123456789abcdef" * 256
N = 100_000


def _addresses(n: int):
    return (f"subscriber{i}@host{i % 5000}.example" for i in range(n))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "var"
    r.mkdir()
    open_queue(r).close()
    return r


def test_enqueue_one_recipient(benchmark, root: Path) -> None:
    conn = open_queue(root)
    try:
        benchmark(lambda: enqueue(root, "s@x.example", ["r@y.example"], MESSAGE, conn=conn))
    finally:
        conn.close()


@pytest.mark.parametrize("indexes", [True, False], ids=["indexes", "no-indexes"])
def test_enqueue_100k_recipients(benchmark, root: Path, indexes: bool) -> None:
    conn = open_queue(root)
    try:
        if not indexes:
            conn.execute("DROP INDEX recipients_due")
            conn.execute("DROP INDEX recipients_msg")
            conn.commit()
        benchmark.pedantic(
            lambda: enqueue(root, "list-return-@l.example-@[]", _addresses(N), MESSAGE,
                            conn=conn), rounds=5, iterations=1)
    finally:
        conn.close()


def test_parse_envelope_100k(benchmark) -> None:
    data = (b"Fs@x.example\0" + b"".join(b"T" + a.encode() + b"\0" for a in _addresses(N))
            + b"\0")

    def parse() -> int:
        sender, rcpts = read_envelope(io.BytesIO(data).read)
        return sum(1 for _ in rcpts)

    assert benchmark(parse) == N
