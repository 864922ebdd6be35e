import multiprocessing
from pathlib import Path

import pytest

from ezlist.archive import (archive_path, archive_post, current_number, next_number,
                            read_archived)


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
